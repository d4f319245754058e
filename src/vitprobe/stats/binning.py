"""Quantile bin edges and fast bin assignment (the "calibrated edges" design).

A neuron's activations are discretised into ``B`` equal-frequency bins whose ``B - 1``
edges are order statistics of a calibration sample. Bin ids are then

.. math::  b(x) = \\#\\{k : e_k \\le x\\} \\in \\{0, \\dots, B-1\\},

i.e. ``searchsorted(edges, x, side="right")``. Because the edges are sample values
and the rule only compares, bins (and every MI estimate built on them) are exactly
invariant under strictly increasing transforms of the data.

On CPU the assignment is a sum of ``B - 1`` vectorised comparisons evaluated in
cache-sized chunks with numpy (about 2-4 ns per value for ``B = 16..32`` on one core,
ten times faster than a binary search per value); on CUDA it is
:func:`torch.searchsorted`. Both give identical ids.
"""

from __future__ import annotations

import numpy as np
import torch

from vitprobe.errors import ConfigurationError, InputShapeError, InsufficientDataError

__all__ = ["choose_bins", "digitize", "edge_ranks", "quantile_edges"]

#: values per chunk in the CPU comparison kernel (fits L2 with its buffers)
_CHUNK = 1 << 16


def choose_bins(n_samples: int, *, min_per_cell: float = 16.0, lo: int = 4, hi: int = 256) -> int:
    """Largest power of two ``B`` with ``n_samples / B**2 >= min_per_cell``.

    Keeping at least 16 samples per joint cell bounds the finite-sample bias that the
    Miller-Madow term must remove (Panzeri et al. 2007): ``B = 16`` at 4k-16k samples,
    32 at 16k-65k, 64 above. (At 12 per cell, ``B = 64`` with ``N = 50k`` left +0.005
    nats of uncorrected bias at ``rho = 0.6``; ``B = 32`` leaves about 0.002.) Clipped
    to ``[lo, hi]``.
    """
    b = lo
    while b * 2 <= hi and n_samples / (2 * b) ** 2 >= min_per_cell:
        b *= 2
    return b


def edge_ranks(n_sorted: int, bins: int) -> np.ndarray:
    """0-based ranks of the ``bins - 1`` order statistics used as edges: ``floor(k n / B)``.

    With these edges the calibration sample itself falls exactly ``n / B`` per bin.
    """
    return (np.arange(1, bins, dtype=np.int64) * n_sorted) // bins


def quantile_edges(samples: np.ndarray | torch.Tensor, bins: int) -> np.ndarray | torch.Tensor:
    """Equal-frequency edges from calibration samples along the last axis.

    Parameters
    ----------
    samples : (..., R) array or tensor
        Calibration values per variable (R >= bins).
    bins : int
        Number of bins ``B``.

    Returns
    -------
    (..., B - 1) edges of the same type, non-decreasing along the last axis: the order
    statistics of rank ``floor(k R / B)``, ``k = 1..B-1`` (no interpolation, so
    monotone transforms commute with the edges).
    """
    r = samples.shape[-1]
    if r < bins:
        raise InsufficientDataError(f"need at least bins={bins} calibration samples, got {r}")
    ranks = edge_ranks(r, bins)
    if isinstance(samples, torch.Tensor):
        s = torch.sort(samples, dim=-1).values
        return s[..., torch.as_tensor(ranks, device=s.device)].contiguous()
    s = np.sort(samples, axis=-1)
    return np.ascontiguousarray(s[..., ranks])


def digitize(values: np.ndarray | torch.Tensor, edges: np.ndarray | torch.Tensor,
             *, layout: str = "row", out: np.ndarray | None = None) -> np.ndarray | torch.Tensor:
    """Bin ids ``#{k : e_k <= x}`` for many variables at once.

    Parameters
    ----------
    values : array or tensor
        ``layout="row"``: shape (V, N), variable ``v``'s samples in row ``v``; a tensor
        may have leading batch axes, (..., V, N) with edges (..., V, B - 1).
        ``layout="col"``: shape (N, V), one sample of every variable per row (the
        natural layout of a recorded batch: images x neurons).
    edges : (V, B - 1) for ``"row"``, (B - 1, V) for ``"col"``
        Sorted edges per variable, same dtype family as ``values``.

    out : uint8 array shaped like ``values``, optional (numpy only)
        Where to write the ids (reused buffers avoid a fresh allocation per call).

    Returns
    -------
    uint8 ids (numpy input; requires ``B <= 256``) or int64 ids (tensor input), same
    shape as ``values``.
    """
    if isinstance(values, torch.Tensor):
        return _digitize_torch(values, torch.as_tensor(edges, device=values.device), layout)
    return _digitize_numpy(np.asarray(values), np.asarray(edges), layout, out)


def _digitize_numpy(x: np.ndarray, e: np.ndarray, layout: str,
                    out: np.ndarray | None = None) -> np.ndarray:
    if out is None:
        out = np.zeros(x.shape, dtype=np.uint8)
    else:
        if out.shape != x.shape or out.dtype != np.uint8:
            raise InputShapeError("out must be a uint8 array shaped like values")
        out[...] = 0
    if layout == "row":
        v, n = x.shape
        nb = e.shape[1]
        if nb >= 256:
            raise ConfigurationError("numpy digitize supports at most 256 bins")
        rows = max(1, _CHUNK // max(n, 1))
        buf = np.empty((rows, n), dtype=np.bool_)
        for s in range(0, v, rows):
            xs, o = x[s : s + rows], out[s : s + rows]
            bb = buf[: xs.shape[0]]
            for k in range(nb):
                np.greater_equal(xs, e[s : s + rows, k : k + 1], out=bb)
                o += bb.view(np.uint8)
        return out
    if layout == "col":
        n, v = x.shape
        nb = e.shape[0]
        if nb >= 256:
            raise ConfigurationError("numpy digitize supports at most 256 bins")
        cols = min(v, max(1024, _CHUNK // max(n, 1)))
        rows = max(1, _CHUNK // cols)
        buf = np.empty((min(rows, n), cols), dtype=np.bool_)
        for s in range(0, v, cols):
            es = e[:, s : s + cols]
            for r in range(0, n, rows):
                xs, o = x[r : r + rows, s : s + cols], out[r : r + rows, s : s + cols]
                bb = buf[: xs.shape[0], : xs.shape[1]]
                for k in range(nb):
                    np.greater_equal(xs, es[k : k + 1], out=bb)
                    o += bb.view(np.uint8)
        return out
    raise ConfigurationError(f"layout must be 'row' or 'col', got {layout!r}")


def _digitize_torch(x: torch.Tensor, e: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "col":
        return _digitize_torch(x.T.contiguous(), e.T.contiguous(), "row").T
    if layout != "row":
        raise ConfigurationError(f"layout must be 'row' or 'col', got {layout!r}")
    return torch.searchsorted(e.to(x.dtype).contiguous(), x.contiguous(), right=True)
