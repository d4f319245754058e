"""Side-by-side timing helpers: alternate the variants so machine noise hits all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(variants: dict[str, Callable[[], object]], repeats: int = 5,
                warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, measured in alternation (A B A B ...)."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
