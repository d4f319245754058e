"""Memory planning: which (layer, sublayer) groups to count in each pass over the images.

The joint counts dominate memory: per group ``H * C * P * B^2`` cells (``H = 2`` with
split halves), e.g. ViT-B/16 (C = 768, P = 196) at ``B = 32`` is 154M cells per group,
0.6 GB in int32 or 1.2 GB with split halves; all 24 groups would take 29.6 GB. With a
budget, :func:`plan_passes` packs consecutive groups into passes so that the peak of a
pass stays within it; each pass streams the images once (with its own calibration).

Peak of a pass of ``g`` groups, in bytes (``V = C P`` neurons per group)::

    calibration: g * (R V 4 + (B-1) V 4) + R V 4        reservoir + edges + one sort copy
    counting:    g * (H V B^2 s + C_null P B^2 4 + H K B^2 4 + (B-1) V 4 a + 2 V 4)
                 + batch * V * 13                        per-batch temporaries

with ``s`` = 2 bytes per cell for int16 counts (CPU, at most 32767 images per half:
``max_images <= 65534`` with split halves) else 4, ``R`` the calibration reservoir,
``K`` the cross-channel pairs, ``a`` = 2 off the CPU (the accelerator path keeps the
edges' transpose beside them, searchsorted's layout) else 1. :func:`joint_memory` returns
this breakdown.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from vitprobe.errors import ConfigurationError
from vitprobe.resources import format_bytes
from vitprobe.stats.joint import null_channel_subset
from vitprobe.stats.layout import Group, NeuronLayout

__all__ = ["MemoryEstimate", "describe_plan", "joint_memory", "plan_passes"]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes needed by :class:`~vitprobe.stats.JointCounts` for ``n_groups`` groups."""

    n_groups: int
    counts: int
    null: int
    cross: int
    edges: int
    reservoir: int
    temporaries: int

    @property
    def calibration_peak(self) -> int:
        per = self.reservoir // max(self.n_groups, 1)
        return self.reservoir + self.edges + per

    @property
    def counting_peak(self) -> int:
        return self.counts + self.null + self.cross + self.edges + self.temporaries

    @property
    def peak(self) -> int:
        return max(self.calibration_peak, self.counting_peak)


def joint_memory(layout: NeuronLayout, bins: int, *, n_groups: int = 1,
                 channels: int | Sequence[int] | None = None, split_half: bool = True,
                 null_channels: int | None = 32, cross_pairs_per_distance: int = 0,
                 calibration_images: int = 1024, batch_size: int = 64,
                 max_images: int | None = None, device: str = "cpu") -> MemoryEstimate:
    """Memory of a :class:`~vitprobe.stats.JointCounts` over ``n_groups`` groups.

    ``channels``: the studied channels (indices) or their number; default all.
    ``max_images`` (the number of images the pass will see) decides whether int16
    counts suffice on CPU; unknown means int32.
    """
    c = layout.d_model if channels is None else (
        int(channels) if isinstance(channels, int | np.integer) else len(channels))
    p = layout.n_positions
    v = c * p
    h = 2 if split_half else 1
    per_half = None if max_images is None else ((max_images + 1) // 2 if split_half
                                                  else max_images)
    cell = 2 if (device == "cpu" and per_half is not None and per_half <= 32767) else 4
    cn = null_channel_subset(c, null_channels).size
    n_dist = int(layout.distance_bin.max()) + 1
    k = cross_pairs_per_distance * n_dist if c > 1 else 0
    b2 = bins * bins
    g = n_groups
    return MemoryEstimate(
        n_groups=g,
        counts=g * h * v * b2 * cell,
        null=g * cn * p * b2 * 4,
        cross=g * h * k * b2 * 4,
        edges=g * ((bins - 1) * v * 4 * (1 if device == "cpu" else 2) + 2 * v * 4),
        reservoir=g * calibration_images * v * 4,
        temporaries=batch_size * v * 13,
    )


def plan_passes(layout: NeuronLayout, bins: int, budget_bytes: int, *,
                groups: Iterable[Group] | None = None, **options: object) -> list[list[Group]]:
    """Split the groups into passes whose peak memory fits ``budget_bytes``.

    Groups keep their order (layer-major, ``attn`` before ``mlp``) and are packed
    greedily, the same number per pass (the largest that fits), so passes are balanced.
    ``options`` are those of :func:`joint_memory` (``channels``, ``split_half``,
    ``null_channels``, ``cross_pairs_per_distance``, ``calibration_images``,
    ``batch_size``, ``max_images``, ``device``).

    Raises
    ------
    ConfigurationError
        If a single group does not fit: lower ``bins``, ``calibration_images`` or the
        channel count, or raise the budget.
    """
    gs = layout.check_groups(groups)
    if not gs:
        return []
    per_pass = 0
    for g in range(len(gs), 0, -1):
        if joint_memory(layout, bins, n_groups=g, **options).peak <= budget_bytes:  # type: ignore[arg-type]
            per_pass = g
            break
    if per_pass == 0:
        need = joint_memory(layout, bins, n_groups=1, **options).peak  # type: ignore[arg-type]
        raise ConfigurationError(
            f"one (layer, sublayer) group needs {format_bytes(need)} with bins={bins}, above "
            f"the budget of {format_bytes(budget_bytes)}: lower the bins (--mi-bins) or the "
            "calibration images (--calibration-images), study fewer channels "
            "(--mi-channels), or raise the budget (--memory-budget)")
    n_pass = -(-len(gs) // per_pass)
    size = -(-len(gs) // n_pass)  # balance: same number per pass
    return [gs[i : i + size] for i in range(0, len(gs), size)]


def describe_plan(layout: NeuronLayout, bins: int, plan: Sequence[Sequence[Group]],
                  **options: object) -> str:
    """One line per pass: the groups and their estimated peak memory."""
    lines = [f"{len(plan)} pass(es) over the images, bins={bins}:"]
    for i, groups in enumerate(plan):
        est = joint_memory(layout, bins, n_groups=len(groups), **options)  # type: ignore[arg-type]
        names = ", ".join(f"{layer + 1}.{s}" for layer, s in groups)
        lines.append(f"  pass {i + 1}: {len(groups)} groups ({names}); peak "
                     f"{est.peak / 1e9:.2f} GB (counts {est.counts / 1e9:.2f} GB, "
                     f"calibration reservoir {est.reservoir / 1e9:.2f} GB)")
    return "\n".join(lines)
