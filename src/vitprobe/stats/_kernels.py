"""Compiled CPU kernels of the neuron accumulators (see :mod:`vitprobe._jit`).

:func:`joint_update` fuses what :meth:`JointCounts._update_group_numpy` does in numpy
passes: the bin id of every activation (``#{k : e_k <= x}``, the rule of
:func:`vitprobe.stats.binning.digitize`, so NaN falls in bin 0 on both paths) and the
increments of the main, null and cross-pair counts. Loop orders are chosen for the
caches: edges are read in blocks of neurons that stay in L2 while every image of the
batch is binned against them, and counts are incremented channel by channel so the
``B x H`` rows of one channel, (P, B_y) each, are reused by all images of the batch.
:func:`histogram_update` and :func:`moments_update` are the one-pass versions of
:class:`~vitprobe.stats.NeuronHistograms` and :class:`~vitprobe.stats.NeuronMoments`'
numpy updates. :func:`miller_madow_rows` is :func:`vitprobe.stats.mi.mi_from_counts`'
Miller-Madow MI of many joint tables, of each table and of its 2 x 2 coarsening in one
read of the counts (the MI results of a study are 10^8 table cells);
:func:`miller_madow_halves` does it for split-half counts and their sum at once, reading
the accumulator's strided layout in place.
"""

from __future__ import annotations

import numpy as np

from vitprobe._jit import njit
from vitprobe.stats._pebay import combine_moments

#: the accumulators' own Pebay combination, compiled for scalars
_combine_moments = njit(combine_moments)

__all__ = ["bowtie_update", "digitize_rows", "histogram_update", "joint_update",
           "miller_madow_halves", "miller_madow_rows", "moments_update"]

#: neurons per block of the binning loop: block edges (B-1 x 2048 float32, 120 kB at
#: B = 16) stay in L2 while every image of the batch is binned against them
_BLOCK = 2048


@njit
def digitize_rows(x: np.ndarray, edges: np.ndarray, ids: np.ndarray) -> None:
    """``ids[i, v] = #{k : edges[k, v] <= x[i, v]}`` for x (N, V), edges (B-1, V), ids uint8.

    ``x`` may be a strided view (rows of a larger recorded batch), edges and ids must be
    C-contiguous.
    """
    n, v = x.shape
    nb1 = edges.shape[0]
    m = min(v, _BLOCK)
    # comparisons are summed in a local int32 block, and each image's values copied into
    # a local contiguous block first: the compiler then knows the arrays are contiguous
    # and do not alias, and vectorises the k-j loop (about 8x faster than without)
    acc = np.zeros(m, np.int32)
    xb = np.zeros(m, np.float32)
    for s in range(0, v, _BLOCK):
        w = min(v, s + _BLOCK) - s
        a = acc[:w]
        xw = xb[:w]
        for i in range(n):
            xw[:] = x[i, s : s + w]
            a[:] = 0
            k = 0
            while k + 4 <= nb1:  # four edges per pass: a quarter of the loads and stores
                e0 = edges[k, s : s + w]
                e1 = edges[k + 1, s : s + w]
                e2 = edges[k + 2, s : s + w]
                e3 = edges[k + 3, s : s + w]
                for j in range(w):
                    xv = xw[j]
                    a[j] += (np.int32(xv >= e0[j]) + np.int32(xv >= e1[j])
                             + np.int32(xv >= e2[j]) + np.int32(xv >= e3[j]))
                k += 4
            while k < nb1:
                ek = edges[k, s : s + w]
                for j in range(w):
                    a[j] += np.int32(xw[j] >= ek[j])
                k += 1
            ids[i, s : s + w] = a


@njit
def joint_update(x: np.ndarray, edges: np.ndarray, half: np.ndarray, centre: int,
                 counts: np.ndarray, null_idx: np.ndarray, null: np.ndarray,
                 cross: np.ndarray, cross_counts: np.ndarray, ids: np.ndarray) -> None:
    """Bin one group's batch and add its pairs to the counts, in place.

    Args:
        x: (b, P * C) float32 activations (position-major, channel fastest).
        edges: (B - 1, P * C) float32 calibrated edges.
        half: (b,) int64 split half of each image (0 without split halves).
        centre: index of the central position.
        counts: (H, C, B_x, P, B_y) int16 or int32 main counts.
        null_idx: (C_null,) int64 channels with shuffled-pair counts.
        null: (C_null, B_x, P, B_y) int32; image i's centre against image i+1's
            positions (the last image pairs with the first); skipped when b < 2.
        cross: (K, 3) int64 rows (channel_x, channel_y, position).
        cross_counts: (H, K, B_x, B_y) int32.
        ids: (b, P * C) uint8 scratch for the bin ids.
    """
    digitize_rows(x, edges, ids)
    b = x.shape[0]
    n_chan = counts.shape[1]
    n_pos = counts.shape[3]
    c0 = centre * n_chan
    for c in range(n_chan):
        for i in range(b):
            row = counts[half[i], c, ids[i, c0 + c]]
            idi = ids[i]
            for p in range(n_pos):
                row[p, idi[p * n_chan + c]] += 1
    if b >= 2:
        for n in range(null_idx.shape[0]):
            c = null_idx[n]
            for i in range(b):
                row = null[n, ids[i, c0 + c]]
                nxt = ids[(i + 1) % b]
                for p in range(n_pos):
                    row[p, nxt[p * n_chan + c]] += 1
    for k in range(cross.shape[0]):
        cx, cy, p = cross[k, 0], cross[k, 1], cross[k, 2]
        for i in range(b):
            cross_counts[half[i], k, ids[i, c0 + cx], ids[i, p * n_chan + cy]] += 1


@njit
def histogram_update(x: np.ndarray, scale: np.ndarray, offset: np.ndarray, n_chan: int,
                     centre: int, hist: np.ndarray, hist_centre: np.ndarray) -> None:
    """Add one group's batch to the standardised histograms, in place.

    Args:
        x: (b, P * C) float32 activations (position-major, channel fastest).
        scale, offset: (P * C,) float32; ``z = x * scale + offset`` is the bin
            coordinate (underflow bin 0 at z < 1), truncated after clipping to
            ``[0, K - 1]``; NaN counts as underflow.
        n_chan: channels C.
        centre: index of the central position.
        hist, hist_centre: (C, K) int64 counts of all positions / the centre.

    Per image and position, the bins of its C channels are formed in one loop that
    vectorises (comparisons as selects, no branches), then counted: mixed in one loop,
    the count's scattered increments kept the bins from vectorising (2.3x slower).
    """
    b, v = x.shape
    top = np.float32(hist.shape[1] - 1)
    zero = np.float32(0.0)
    n_pos = v // n_chan
    ks = np.zeros(n_chan, np.int32)
    for i in range(b):
        xi = x[i]
        for p in range(n_pos):
            base = p * n_chan
            for c in range(n_chan):
                j = base + c
                z = xi[j] * scale[j] + offset[j]
                z = z if z >= zero else zero  # NaN fails the test: underflow
                ks[c] = np.int32(min(z, top))
            for c in range(n_chan):
                hist[c, ks[c]] += 1
            if p == centre:
                for c in range(n_chan):
                    hist_centre[c, ks[c]] += 1


@njit
def moments_update(x: np.ndarray, n_prev: float, mean: np.ndarray, m2: np.ndarray,
                   m3: np.ndarray, m4: np.ndarray, vmin: np.ndarray, vmax: np.ndarray) -> None:
    """Fold one batch into running per-neuron moments, in place.

    Two passes over the batch in float64 (its mean, then centred power sums), then
    Pebay's pairwise combination with the running state (the accumulators' own
    :func:`~vitprobe.stats.moments.combine_moments`, compiled). NaN propagates into min / max
    as with ``numpy.minimum``.

    Args:
        x: (b, V) float32 or float64 batch.
        n_prev: images already in the state.
        mean, m2, m3, m4, vmin, vmax: (V,) float64 state.
    """
    b, v = x.shape
    m = min(v, _BLOCK)
    # each block is first copied into a contiguous float64 buffer: x is usually a
    # strided view (patch rows of a recorded batch), and loops over contiguous local
    # arrays are the ones the compiler vectorises
    xb = np.zeros((b, m))
    s1 = np.zeros(m)
    s2 = np.zeros(m)
    s3 = np.zeros(m)
    s4 = np.zeros(m)
    lo = np.zeros(m)
    hi = np.zeros(m)
    nb = float(b)
    na = n_prev
    for s in range(0, v, _BLOCK):
        w = min(v, s + _BLOCK) - s
        for i in range(b):
            xb[i, :w] = x[i, s : s + w]
        s1[:w] = 0.0
        lo[:w] = np.inf
        hi[:w] = -np.inf
        for i in range(b):
            xi = xb[i, :w]
            for j in range(w):
                val = xi[j]
                s1[j] += val
                lo[j] = min(lo[j], val)
                hi[j] = max(hi[j], val)
        for j in range(w):
            s1[j] /= nb
            if s1[j] != s1[j]:  # rare: NaN input (or +inf and -inf) in this column
                for i in range(b):
                    if xb[i, j] != xb[i, j]:
                        lo[j] = hi[j] = np.nan
        s2[:w] = 0.0
        s3[:w] = 0.0
        s4[:w] = 0.0
        for i in range(b):
            xi = xb[i, :w]
            for j in range(w):
                d = xi[j] - s1[j]
                d2 = d * d
                s2[j] += d2
                s3[j] += d2 * d
                s4[j] += d2 * d2
        for j in range(w):
            q = s + j
            if lo[j] < vmin[q] or lo[j] != lo[j]:
                vmin[q] = lo[j]
            if hi[j] > vmax[q] or hi[j] != hi[j]:
                vmax[q] = hi[j]
            _, mean[q], m2[q], m3[q], m4[q] = _combine_moments(
                (na, mean[q], m2[q], m3[q], m4[q]), (nb, s1[j], s2[j], s3[j], s4[j]))


@njit
def bowtie_update(ids: np.ndarray, fold: np.ndarray, same: np.ndarray,
                  offsets_full: np.ndarray, offsets_half: np.ndarray, n_cols: int,
                  central_q: np.ndarray, central_off: np.ndarray, centre: int, n_bins: int,
                  counts: np.ndarray) -> None:
    """Add one group's batch to the bowtie counts, in place.

    Translation-pooled pairs are enumerated by their offset: for an offset
    ``(dr, dc)`` every position ``p = (r, c)`` whose partner ``q = (r + dr, c + dc)`` lies
    on the grid, rows then columns, so both bin ids are read sequentially and no
    position table is needed. Central pairs: ``p`` = the centre, ``q`` every position.

    Args:
        ids: (b, 2K, P) uint8 linear bin ids (positions row-major, ``n_cols`` per row);
            row ``2k`` holds pair ``k``'s x channel, row ``2k + 1`` its y channel.
        fold: (b,) int64 fold of each image.
        same: (K,) bool; pairs of one channel use ``offsets_half`` (one offset of each
            ``+-`` pair: every unordered pair of positions once; the readout adds the
            transpose), the others ``offsets_full``.
        offsets_full, offsets_half: (n, 3) int64 rows ``(dr, dc, slot * B * B)``.
        n_cols: grid columns.
        central_q, central_off: (P,) int64 positions and slot offsets of the central
            pairs.
        centre: flat index of the central position.
        n_bins: B.
        counts: (F, K, S * B * B) int32 counts (flattened (S, B_x, B_y) per fold and pair).
    """
    b = ids.shape[0]
    n_pairs = counts.shape[1]
    n_pos = ids.shape[2]
    n_rows = n_pos // n_cols
    for i in range(b):
        f = fold[i]
        for k in range(n_pairs):
            xi = ids[i, 2 * k]
            yi = ids[i, 2 * k + 1]
            c = counts[f, k]
            offs = offsets_half if same[k] else offsets_full
            for o in range(offs.shape[0]):
                dr = offs[o, 0]
                dc = offs[o, 1]
                so = offs[o, 2]
                delta = dr * n_cols + dc
                c_lo = max(0, -dc)
                c_hi = min(n_cols, n_cols - dc)
                for r in range(max(0, -dr), min(n_rows, n_rows - dr)):
                    p0 = r * n_cols
                    for p in range(p0 + c_lo, p0 + c_hi):
                        c[so + np.int64(xi[p]) * n_bins + np.int64(yi[p + delta])] += 1
            base = np.int64(xi[centre]) * n_bins
            for t in range(central_q.shape[0]):
                c[central_off[t] + base + np.int64(yi[central_q[t]])] += 1


@njit
def miller_madow_rows(c: np.ndarray, nlogn: np.ndarray, fine: np.ndarray,
                      coarse: np.ndarray) -> None:
    """Miller-Madow MI (nats) of every joint table of ``c``, and of its 2 x 2 coarsening.

    ``I = log n + (sum c log c - sum c_x log c_x - sum c_y log c_y) / n
    - (m_xy - m_x - m_y + 1) / (2 n)``, ``m`` the numbers of non-empty cells (NaN for an
    empty table), as :func:`vitprobe.stats.mi.mi_from_counts` (``miller-madow``).

    Args:
        c: (M, B_x, B_y) non-negative integer counts, C-contiguous, B_x and B_y even.
        nlogn: ``k log k`` for ``k < len(nlogn)`` (0 for 0); larger counts are computed.
        fine: (M,) float64 out: MI of each table.
        coarse: (M,) float64 out: MI of each table with bins merged in pairs along both
            axes.
    """
    m, bx, by = c.shape
    cx = np.zeros(bx, np.int64)
    cy = np.zeros(by, np.int64)
    cc = np.zeros((bx // 2, by // 2), np.int64)
    for r in range(m):
        cx[:] = 0
        cy[:] = 0
        cc[:] = 0
        sxy = 0.0
        nz = 0
        for i in range(bx):
            for j in range(by):
                v = np.int64(c[r, i, j])
                cx[i] += v
                cy[j] += v
                cc[i >> 1, j >> 1] += v
                if v > 0:
                    nz += 1
                    sxy += _klogk(v, nlogn)
        fine[r], coarse[r] = _fine_coarse(cx, cy, cc, sxy, nz, nlogn)


@njit
def miller_madow_halves(c: np.ndarray, nlogn: np.ndarray, fine: np.ndarray,
                        coarse: np.ndarray, fine_h: np.ndarray, coarse_h: np.ndarray
                        ) -> None:
    """:func:`miller_madow_rows` of the tables of ``H`` disjoint halves and of their sum,
    read once, in place (any strides: the counts' own layout, no copy).

    Args:
        c: (H, P, C, B_x, B_y) non-negative integer counts, B_x and B_y even.
        nlogn: as :func:`miller_madow_rows`.
        fine, coarse: (P, C) float64 out: MI of the summed table and of its coarsening.
        fine_h, coarse_h: (H, P, C) float64 out: the same of each half's table.
    """
    nh, n_p, n_c, bx, by = c.shape
    slots = nh + 1 if nh > 1 else 1  # slot 0: the sum over halves; 1..H: each half
    cx = np.zeros((slots, bx), np.int64)
    cy = np.zeros((slots, by), np.int64)
    cc = np.zeros((slots, bx // 2, by // 2), np.int64)
    sxy = np.zeros(slots)
    nz = np.zeros(slots, np.int64)
    n_tab = nlogn.shape[0]
    for p in range(n_p):
        for k in range(n_c):
            cx[:] = 0
            cy[:] = 0
            cc[:] = 0
            sxy[:] = 0.0
            nz[:] = 0
            # many cells are empty (a few hundred images over B^2 cells): no branch on
            # v > 0 (0 log 0 is the table's 0), none to mispredict; 20 % faster
            for i in range(bx):
                i2 = i >> 1
                for j in range(by):
                    tot = np.int64(0)
                    for h in range(nh):
                        v = np.int64(c[h, p, k, i, j])
                        tot += v
                        if slots > 1:
                            s = h + 1
                            cx[s, i] += v
                            cy[s, j] += v
                            cc[s, i2, j >> 1] += v
                            nz[s] += v > 0
                            sxy[s] += nlogn[v] if v < n_tab else _klogk(v, nlogn)
                    cx[0, i] += tot
                    cy[0, j] += tot
                    cc[0, i2, j >> 1] += tot
                    nz[0] += tot > 0
                    sxy[0] += nlogn[tot] if tot < n_tab else _klogk(tot, nlogn)
            for s in range(slots):
                f, g = _fine_coarse(cx[s], cy[s], cc[s], sxy[s], nz[s], nlogn)
                if s == 0:
                    fine[p, k] = f
                    coarse[p, k] = g
                    if slots == 1:
                        fine_h[0, p, k] = f
                        coarse_h[0, p, k] = g
                else:
                    fine_h[s - 1, p, k] = f
                    coarse_h[s - 1, p, k] = g


@njit
def _fine_coarse(cx: np.ndarray, cy: np.ndarray, cc: np.ndarray, sxy: float, nz: int,
                 nlogn: np.ndarray) -> tuple[float, float]:
    """Miller-Madow MI of a table from its sums (marginals ``cx``, ``cy``, sum of
    ``c log c``, non-empty cells) and of its 2 x 2 coarsening ``cc`` (B_x/2, B_y/2)."""
    fine = _mm_from_sums(cx, cy, sxy, nz, nlogn)
    cs = 0.0
    cnz = 0
    for i in range(cc.shape[0]):
        for j in range(cc.shape[1]):
            v = cc[i, j]
            if v > 0:
                cnz += 1
                cs += _klogk(v, nlogn)
    coarse = _mm_from_sums(cx.reshape(cc.shape[0], 2).sum(1),
                           cy.reshape(cc.shape[1], 2).sum(1), cs, cnz, nlogn)
    return fine, coarse


@njit
def _klogk(v: int, nlogn: np.ndarray) -> float:
    """``v log v`` of a count ``v > 0``: from the table where it reaches."""
    return nlogn[v] if v < nlogn.shape[0] else v * np.log(np.float64(v))


@njit
def _mm_from_sums(cx: np.ndarray, cy: np.ndarray, sxy: float, nz: int,
                  nlogn: np.ndarray) -> float:
    """Miller-Madow MI from a table's marginals, its sum of c log c and non-empty cells."""
    n = 0
    sx = 0.0
    mx = 0
    for v in cx:
        n += v
        if v > 0:
            mx += 1
            sx += _klogk(v, nlogn)
    if n == 0:
        return np.nan
    sy = 0.0
    my = 0
    for v in cy:
        if v > 0:
            my += 1
            sy += _klogk(v, nlogn)
    nf = np.float64(n)
    return np.log(nf) + (sxy - sx - sy) / nf - (nz - mx - my + 1) / (2.0 * nf)
