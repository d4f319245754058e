"""One merge path: states of ranks (or shards) combined with the accumulators' own
:meth:`~vitprobe.record.Accumulator.merge`, which every accumulator tests for exactness."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from vitprobe.record import Accumulator

States = dict[str, dict[str, np.ndarray]]


def merge_states(build: Callable[[], Mapping[str, Accumulator]],
                 parts: Sequence[Mapping[str, Mapping[str, np.ndarray]]]) -> States:
    """Merge several sets of accumulator states with the same keys into one.

    Args:
        build: returns fresh accumulators (same configuration) for every key.
        parts: one ``{key: state_dict}`` per rank or shard, disjoint images each.

    Returns:
        ``{key: state_dict}`` of the merged accumulators (the single part as is).
    """
    if len(parts) == 1:
        return {k: dict(v) for k, v in parts[0].items()}
    merged = build()
    for key, acc in merged.items():
        acc.load_state_dict(parts[0][key])
    for part in parts[1:]:
        other = build()
        for key, acc in merged.items():
            other[key].load_state_dict(part[key])
            acc.merge(other[key])
    return {key: acc.state_dict() for key, acc in merged.items()}
