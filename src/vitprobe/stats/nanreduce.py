"""NaN-ignoring means and standard deviations that stay quiet on all-NaN slices.

:func:`numpy.nanmean` and :func:`numpy.nanstd` return NaN for an all-NaN slice (or too
few values for ``ddof``) but also emit a ``RuntimeWarning``. Silencing it with
:func:`warnings.catch_warnings` is not thread-safe (it swaps the process-wide filter
list: two threads that enter and leave it interleaved can leave every
``RuntimeWarning`` ignored, or let the warning through), and the study computes its
models' results on threads. These compute the same quantities (``sum / count`` of the
non-NaN values) under :func:`numpy.errstate`, which is per thread.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nanmean", "nanstd"]


def nanmean(a: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean of the non-NaN values along ``axis`` (NaN where there are none), no warning."""
    a = np.asarray(a, dtype=np.float64)
    count = np.sum(~np.isnan(a), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(a, axis=axis) / count


def nanstd(a: np.ndarray, axis: int | None = None, ddof: int = 0) -> np.ndarray | float:
    """Standard deviation of the non-NaN values along ``axis`` with ``count - ddof`` in
    the denominator (NaN where that is not positive), no warning."""
    a = np.asarray(a, dtype=np.float64)
    count = np.sum(~np.isnan(a), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(a, axis=axis) / count
        centred = a - (np.expand_dims(mean, axis) if axis is not None else mean)
        var = np.nansum(centred * centred, axis=axis) / (count - ddof)
        return np.sqrt(np.where(count - ddof > 0, var, np.nan))
