"""Compiled CPU kernel of the per-layer angle/attention sums (see :mod:`vitprobe._jit`).

:func:`angle_sums` computes, in one pass over each image's (H, T, T) logits and its
(V, T, T) cosines, every sum that :func:`vitprobe.attention.geometry.layer_sums` forms
with separate torch passes (softmax, arccos, angle bins, scatter, skinny matmuls,
centring, norms). A query token's geometry row is formed once and reused from L1 by all
heads. As in the torch reference, sums over one row of keys run in float32
(reassociated, so that they use SIMD lanes) and everything across rows in float64; the
attention histograms, like the reference's per-image scatter, sum one image in float32.

The histograms are the scatter of every head's attention into its key's angle bin. Per
query row the kernel lays out each key's attention of all heads side by side, with a 1
that counts the pair, so that a key's bin takes them in one 8-lane vector addition
(:func:`vitprobe._jit.add8_f32`; two for 8 to 15 heads) instead of a scalar
read-modify-write per head and one for the count. The softmax's row maximum is taken on
integers (:func:`vitprobe._jit.ordered_bits`), which vectorise where a float maximum
with NaN ordering does not. Together they cut the kernel's time per image and layer from
2.27 to 1.22 ms at DINOv2-S/14's shapes (6 heads, 257 tokens, both variants; one thread).

The kernel takes the raw cosines of a float32 batch: per query row it clamps them to
[-1, 1], sets the diagonal to cos = theta = 0 (it is not a pair; its bin is a discard
bin), takes the angle with a float32 arccos (Cephes ``acosf``, within 2.5e-7 relative of
the exact value; torch's float32 ``acos`` is within about 1e-7) and bins it, into row
buffers that stay in L1 for the heads. Keys run from ``start``, so prefix tokens are
never read as keys; the logit terms subtract the diagonal explicitly.
"""

from __future__ import annotations

import numpy as np

from vitprobe._jit import add8_f32, bits_from_f32, f32_from_bits, njit, ordered_bits

__all__ = ["acos32", "angle_sums", "exp32"]

#: interleaved copies of each attention histogram: neighbouring keys often share an angle
#: bin, and alternating copies breaks the chain of dependent read-modify-writes
_LANES = 4


@njit
def acos32(x: np.float32) -> np.float32:
    """arccos of a float32 in [-1, 1] (Cephes ``acosf``): branch-free, so loops of it
    vectorise. ``|x| > 1/2`` uses ``acos x = 2 asin sqrt((1 - |x|) / 2)`` (mirrored for
    ``x < 0``), else ``pi / 2 - asin x``, with Cephes' ``asinf`` polynomial."""
    a = abs(x)
    big = a > np.float32(0.5)
    z = np.float32(0.5) * (np.float32(1.0) - a) if big else a * a
    s = np.sqrt(z) if big else a
    p = ((((np.float32(4.2163199048e-2) * z + np.float32(2.4181311049e-2)) * z
           + np.float32(4.5470025998e-2)) * z + np.float32(7.4953002686e-2)) * z
         + np.float32(1.6666752422e-1)) * z * s + s  # asin(s)
    if big:
        return np.float32(2.0) * p if x > 0 else np.float32(np.pi) - np.float32(2.0) * p
    return np.float32(np.pi / 2) - (p if x >= 0 else -p)


@njit
def exp32(x: np.float32) -> np.float32:
    """exp of a float32 ``x <= 0`` (softmax arguments after the row maximum), Cephes
    ``expf``: branch-free, so loops of it vectorise. ``exp x = 2^k e^r`` with
    ``k = round(x / ln 2)`` and ``r = x - k ln 2`` (ln 2 in two parts, so ``r`` is exact
    to float32), ``e^r`` by Cephes' polynomial (about 1 ulp) and ``2^k`` built from its
    exponent bits; below ``-87`` (under the float32 normal range) the result is 0."""
    xc = max(x, np.float32(-87.0))
    k = np.floor(xc * np.float32(1.4426950408889634) + np.float32(0.5))
    r = xc - k * np.float32(0.693359375) + k * np.float32(2.12194440e-4)
    p = (((((np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r
            + np.float32(8.3334519073e-3)) * r + np.float32(4.1665795894e-2)) * r
          + np.float32(1.6666665459e-1)) * r + np.float32(5.0000001201e-1)) * (r * r) \
        + r + np.float32(1.0)
    two_k = f32_from_bits(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))
    return p * two_k if x > np.float32(-87.0) else np.float32(0.0)


@njit(reassoc=True)
def angle_sums(cos: np.ndarray, scores: np.ndarray, pattern: np.ndarray, start: int,
               n_bins: int, bin_scale: float, first: int, stop: int, count: np.ndarray,
               geo: np.ndarray, attn_hist: np.ndarray, attn_theta: np.ndarray,
               logit: np.ndarray, dev_cos: np.ndarray, rowcos_r: np.ndarray) -> None:
    """Add images ``first..stop-1`` of one layer to the output sums, in place.

    Args:
        cos: (V, B, T, T) float32 cosines of the token pairs, not yet clamped (the
            Gram matrix of unit tokens, or its centred correction).
        scores: (B, H, T, T) float32 logits.
        pattern: (B, H, T, T) attention probabilities, or an empty array: then every
            row is the softmax of its logits over all T keys, formed here with
            :func:`exp32` (within 2.5e-7 relative of the exact softmax).
        start: first selected token.
        n_bins: angle bins K; a pair's bin is ``min(int(theta * bin_scale), K - 1)``
            (as :func:`~vitprobe.attention.geometry.pair_geometry`).
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
    # sums over one row of keys run in float32 (as the torch reference does: twice the
    # SIMD lanes of float64), everything across rows in float64
    zero = np.float32(0.0)
    one = np.float32(1.0)
    scale = np.float32(bin_scale)
    last = np.int32(n_bins - 1)
    rowcos = np.zeros(n_var)
    crows = np.zeros((n_var, w), np.float32)
    trows = np.zeros((n_var, w), np.float32)
    # int32 bins: with the angle converted to int64 the geometry loop stayed scalar; to
    # int32 it vectorises (half the time per key)
    bins = np.zeros((n_var, w), np.int32)
    own_softmax = pattern.size == 0
    prob = np.zeros(n_tok, np.float32)
    # per key of the query row: every head's attention, then 1 (the pair counts as one),
    # zero-padded to whole 8-lane vectors, so that a key's angle bin takes all of it in
    # one or two vector additions (per-head scalar scatters cost 6-8x more)
    width = (n_heads + 1 + 7) // 8 * 8
    keyrows = np.zeros((w, width), np.float32)
    keyrows[:, n_heads] = one
    # one image's attention mass and pair counts per angle bin, in float32 like the
    # torch reference's per-image scatter (counts are exact: < 2^24 pairs per image);
    # added to the float64 outputs after each image
    hist = np.zeros((n_var, _LANES, n_bins + 1, width), np.float32)
    for b in range(first, stop):
        for i in range(start, n_tok):
            for v in range(n_var):
                src = cos[v, b, i, start:]
                crow = crows[v]
                trow = trows[v]
                brow = bins[v]
                for j in range(w):
                    c = min(max(src[j], -one), one)
                    t = acos32(c)
                    crow[j] = c
                    trow[j] = t
                    brow[j] = min(np.int32(t * scale), last)
                crow[i - start] = zero  # the diagonal is not a pair
                trow[i - start] = zero
                brow[i - start] = np.int32(n_bins)
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
                rowcos[v] = rs
                geo[v, 0] += st
                geo[v, 1] += st2
                geo[v, 2] += rs
                geo[v, 3] += sc2
                geo[v, 4] += np.float64(rs) * np.float64(rs)
            c0, c1 = crows[0], crows[n_var - 1]  # the same row twice for one variant
            t0, t1 = trows[0], trows[n_var - 1]
            for h in range(n_heads):
                srow = scores[b, h, i, start:]
                if own_softmax:  # unnormalised exponentials; the sums scale by 1 / norm
                    full = scores[b, h, i]
                    # the row maximum through integers: a float max with NaN ordering
                    # does not vectorise
                    key = np.int32(-2147483648)
                    for j in range(n_tok):
                        key = max(key, ordered_bits(bits_from_f32(full[j])))
                    top = f32_from_bits(ordered_bits(key))
                    norm = zero
                    for j in range(n_tok):
                        prob[j] = exp32(full[j] - top)
                        norm += prob[j]
                    inv = one / norm
                    arow = prob[start:]
                else:
                    inv = one
                    arow = pattern[b, h, i, start:]
                tot = zero
                for j in range(w):
                    tot += srow[j]
                diag = scores[b, h, i, i]
                r = (np.float64(tot) - np.float64(diag)) / n_keys
                rf = np.float32(r)  # centred in float32, like the torch reference
                dd = np.float64(diag - rf)
                # one pass for every per-pair sum (the diagonal's cos and theta are 0)
                d2 = zero
                dc0 = zero
                dc1 = zero
                at0 = zero
                at1 = zero
                for j in range(w):
                    d = srow[j] - rf
                    a = arow[j]
                    d2 += d * d
                    dc0 += d * c0[j]
                    dc1 += d * c1[j]
                    at0 += a * t0[j]
                    at1 += a * t1[j]
                logit[h, 0] += r
                logit[h, 1] += r * r
                logit[h, 2] += np.float64(d2) - dd * dd  # the diagonal is not a pair
                dev_cos[0, h] += dc0
                attn_theta[0, h] += np.float64(at0) * inv
                rowcos_r[0, h] += r * rowcos[0]
                if n_var == 2:
                    dev_cos[1, h] += dc1
                    attn_theta[1, h] += np.float64(at1) * inv
                    rowcos_r[1, h] += r * rowcos[1]
                for j in range(w):
                    keyrows[j, h] = arow[j] * inv
            for v in range(n_var):
                brow = bins[v]
                for j in range(w):
                    row = ((v * _LANES + j % _LANES) * (n_bins + 1) + brow[j]) * width
                    for c in range(0, width, 8):
                        add8_f32(hist, row + c, keyrows, j * width + c)
        for v in range(n_var):
            for k in range(n_bins + 1):
                for q in range(_LANES):
                    hq = hist[v, q, k]
                    for h in range(n_heads):
                        attn_hist[v, h, k] += hq[h]
                    count[v, k] += np.int64(hq[n_heads])
        hist[:] = zero
