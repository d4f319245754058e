"""Compiled CPU kernel of the per-layer angle/attention sums (see :mod:`vitprobe._jit`).

:func:`angle_sums` computes, in one pass over each image's (H, T, T) logits and
attention and its (V, T, T) pair geometry, every sum that
:func:`vitprobe.attention.geometry.layer_sums` forms with separate torch passes (angle
bins, scatter, skinny matmuls, centring, norms). A query token's geometry row is reused
from L1 by all heads; sums run in float64 as they go (the torch reference sums each
image row in the compute dtype first), with reassociation allowed so that the
reductions vectorise.

Excluded pairs (prefix tokens, the diagonal) hold cos = theta = 0 in the geometry, so
loops run over every key from ``start``; the diagonal goes to a discard bin and the
logit terms subtract it explicitly.
"""

from __future__ import annotations

import numpy as np

from vitprobe._jit import njit

__all__ = ["angle_sums"]

#: interleaved copies of each attention histogram: neighbouring keys often share an angle
#: bin, and alternating copies breaks the chain of dependent read-modify-writes
_LANES = 4


@njit(reassoc=True)
def angle_sums(cos: np.ndarray, theta: np.ndarray, scores: np.ndarray, pattern: np.ndarray,
               start: int, n_bins: int, bin_scale: float, first: int, stop: int,
               count: np.ndarray, geo: np.ndarray, attn_hist: np.ndarray,
               attn_theta: np.ndarray, logit: np.ndarray, dev_cos: np.ndarray,
               rowcos_r: np.ndarray) -> None:
    """Add images ``first..stop-1`` of one layer to the output sums, in place.

    Args:
        cos, theta: (V, B, T, T) cosines and angles (radians) of the pairs, 0 where
            excluded.
        scores, pattern: (B, H, T, T) logits and attention probabilities.
        start: first selected token.
        n_bins: angle bins K; a pair's bin is ``min(int(theta * bin_scale), K - 1)`` in
            the dtype of ``theta`` (as :func:`~vitprobe.attention.geometry.pair_geometry`).
        bin_scale: ``K / pi``.
        first, stop: the images to add.
        count: (V, K + 1) int64 pairs per angle bin (the last column: discarded pairs).
        geo: (V, 5) float64: sum theta, sum theta^2, sum cos, sum cos^2, sum over query
            tokens of (sum over keys of cos)^2.
        attn_hist: (V, H, K + 1) float64 attention mass per angle bin.
        attn_theta: (V, H) float64 sum of A * theta (radians).
        logit: (H, 3) float64: sum over queries of r_i (the mean logit over keys), of
            r_i^2, and the sum of (s_ij - r_i)^2 over pairs.
        dev_cos: (V, H) float64 sum of (s_ij - r_i) cos_ij.
        rowcos_r: (V, H) float64 sum over queries of r_i times the sum over keys of cos.
    """
    n_var = cos.shape[0]
    n_tok = cos.shape[2]
    n_heads = scores.shape[1]
    n_keys = n_tok - start - 1
    w = n_tok - start
    # sums over one row of keys run in the compute dtype (as the torch reference does:
    # twice the SIMD lanes in float32), everything across rows in float64
    ft = theta.dtype.type
    zero = ft(0.0)
    scale = ft(bin_scale)
    last = n_bins - 1
    rowcos = np.zeros(n_var)
    bins = np.zeros((n_var, w), np.int64)
    lanes = np.zeros((n_var, n_heads, _LANES, n_bins + 1))
    for b in range(first, stop):
        for i in range(start, n_tok):
            for v in range(n_var):
                crow = cos[v, b, i, start:]
                trow = theta[v, b, i, start:]
                brow = bins[v]
                rs = zero
                st = zero
                st2 = zero
                sc2 = zero
                for j in range(w):
                    c = crow[j]
                    t = trow[j]
                    rs += c
                    sc2 += c * c
                    st += t
                    st2 += t * t
                    brow[j] = min(int(t * scale), last)
                brow[i - start] = n_bins  # the diagonal: discard bin
                rowcos[v] = rs
                geo[v, 0] += st
                geo[v, 1] += st2
                geo[v, 2] += rs
                geo[v, 3] += sc2
                geo[v, 4] += np.float64(rs) * np.float64(rs)
                cnt = count[v]
                for j in range(w):
                    cnt[brow[j]] += 1
            for h in range(n_heads):
                srow = scores[b, h, i, start:]
                arow = pattern[b, h, i, start:]
                tot = zero
                for j in range(w):
                    tot += srow[j]
                diag = scores[b, h, i, i]
                r = (np.float64(tot) - np.float64(diag)) / n_keys
                rf = ft(r)  # centred in the compute dtype, like the torch reference
                dd = np.float64(diag - rf)
                d2 = zero
                for j in range(w):
                    d = srow[j] - rf
                    d2 += d * d
                logit[h, 0] += r
                logit[h, 1] += r * r
                logit[h, 2] += np.float64(d2) - dd * dd  # the diagonal is not a pair
                for v in range(n_var):
                    crow = cos[v, b, i, start:]
                    trow = theta[v, b, i, start:]
                    dc = zero
                    at = zero
                    for j in range(w):
                        # cos_ii = theta_ii = 0: the diagonal adds nothing
                        dc += (srow[j] - rf) * crow[j]
                        at += arow[j] * trow[j]
                    dev_cos[v, h] += dc
                    attn_theta[v, h] += at
                    rowcos_r[v, h] += r * rowcos[v]
                    brow = bins[v]
                    hl = lanes[v, h]
                    for j in range(w):
                        hl[j % _LANES, brow[j]] += arow[j]
    for v in range(n_var):
        for h in range(n_heads):
            for k in range(n_bins + 1):
                for q in range(_LANES):
                    attn_hist[v, h, k] += lanes[v, h, q, k]
