"""Conditional statistics of a pair of neurons from their joint histogram ("bowties").

A bowtie plot (Schwartz & Simoncelli 2001) is the histogram of ``y`` given ``x``: each
``x`` column of the joint histogram normalised. Two kinds of dependence show in it:

* **linear** dependence moves the column's centre: ``E[y | x]`` has a slope, measured
  by the correlation;
* **variance** dependence widens the column with ``|x|``: ``SD[y | x]`` grows with
  ``|x|`` even at zero correlation. This is the dependence that divisive
  normalization removes, and the one a Gaussian scale mixture (``x = s g1``,
  ``y = s g2`` with a shared scale ``s``) produces.

Every function here takes integer counts of **linear** (equal-width) bins, shape
``(..., B_x, B_y)``, with the bin centres ``x`` (``(..., B_x)``) and ``y``
(``(..., B_y)``) in the neurons' own units, and works on any number of leading
dimensions at once. Values a histogram clipped into its outer bins are counted at
those bins' centres: the tails beyond the binned range are shrunk to its edge, which
lowers variances at large ``|x|`` a little (the accumulator,
:class:`~vitprobe.stats.bowtie.BowtieCounts`, bins ``+-`` a high quantile of ``|x|``
so that about 0.5 % of values are affected).

Estimators (``n_i`` = count of column ``i``, ``h`` = bin width)
------------------------------------------------------------------
* Conditional mean ``m_i = sum_j n_ij y_j / n_i``; conditional variance
  ``v_i = sum_j n_ij (y_j - m_i)^2 / (n_i - 1) - h_y^2 / 12``: unbiased within the
  column, minus Sheppard's correction for the grouping into bins of width ``h_y``
  (Sheppard 1898; Kendall & Stuart, vol. 1, 3.18), clipped at 0. ``SD[y | x]`` is
  ``sqrt(v_i) / c4(n_i)`` with ``c4(n) = 1 - 1/(4n) - 7/(32 n^2)`` (the Gaussian
  bias factor of a sample SD), so that columns of few samples are not biased low.
* Correlation: ``cov / sqrt(var_x var_y)`` with both marginal variances
  Sheppard-corrected (the covariance needs no correction).
* **Bowtie index**: in standardised units (``x~ = (x - mean_x) / sd_x``,
  ``y~`` likewise, marginal moments from the same counts), the weighted least-squares
  slope of ``SD[y~ | x~]`` against ``|x~|`` over the columns with at least
  ``min_count`` samples, weights ``n_i``. 0 under independence; positive when the
  spread of ``y`` grows with ``|x|`` (a bowtie). Dimensionless.
* **Divisive normalization fit** (Schwartz & Simoncelli 2001, their eq. 1 with one
  neighbour): ``var(y~ | x~) = sigma^2 + w x~^2``, weighted least squares of
  ``v_i / var_y`` on ``x~_i^2`` over the same columns, weights ``n_i``. This is the
  ordinary least-squares fit of every sample's squared deviation from its column
  mean on ``x~^2``. For a bivariate Student-t with ``nu`` degrees of freedom and zero
  correlation (a Gaussian scale mixture with inverse-gamma ``s^2``),
  ``var(y | x) = (nu + x^2) / (nu - 1)`` exactly, so ``w = 1 / (nu - 1)``. ``w`` is
  dimensionless in standardised units (``w_raw = w var_y / var_x``).
* **MI before and after normalization**: each cell's ``y~`` interval is divided by
  its column's predicted SD ``sqrt(sigma^2 + w x~^2)``; the cell's count is spread
  uniformly over the new interval (the histogram read as a piecewise-constant
  density, so the rescaled cells do not alias against the new bins) and split over
  ``n_bins`` (default 8) new ``y`` bins cut at the weighted quantiles of the cell
  midpoints, while the ``x`` columns are merged into ``n_bins`` contiguous groups of
  about equal mass. The plug-in MI of these ``8 x 8`` (fractional) counts with the
  Miller-Madow correction (``m`` = cells holding any mass) is the estimate. "Before"
  applies the same procedure to ``y~`` itself (``sigma^2 = 1, w = 0``), so the two
  numbers share one discretisation; ``after / before`` is the share of the pair's
  dependence that a divisive normalization by ``x`` would leave. Coarse
  equal-frequency bins lose some MI (a lower bound, like every binned estimate) but
  are stable for heavy-tailed neurons and small samples.
* Confidence intervals: :func:`jackknife_interval`, the delete-one-group jackknife over
  disjoint groups of images (the accumulator keeps ``folds`` of them). Position pairs
  of one image are strongly dependent, so resampling cells or samples (a multinomial
  bootstrap of the counts) would give intervals far too narrow; whole images are the
  independent units.

References
----------
Schwartz, O. & Simoncelli, E. P. (2001). Natural signal statistics and sensory gain
control. Nature Neuroscience 4:819-825.
Wainwright, M. J. & Simoncelli, E. P. (2000). Scale mixtures of Gaussians and the
statistics of natural images. NIPS 12.
Efron, B. & Stein, C. (1981). The jackknife estimate of variance. Ann. Stat. 9:586.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from vitprobe.errors import ConfigurationError, InputShapeError

__all__ = [
    "ConditionalMoments",
    "bowtie_index",
    "conditional_moments",
    "conditional_statistics",
    "correlation",
    "divisive_normalization_fit",
    "jackknife_interval",
    "marginal_moments",
    "normalized_mi",
]

#: columns with fewer samples are left out of the bowtie index and the fit
MIN_COUNT = 10


class ConditionalMoments(NamedTuple):
    """Per-column statistics of ``y`` given ``x``; arrays ``(..., B_x)``."""

    #: samples per column (int64)
    n: np.ndarray
    #: E[y | x] (NaN for empty columns)
    mean: np.ndarray
    #: SD[y | x], Sheppard- and c4-corrected (NaN for columns of fewer than 2 samples)
    sd: np.ndarray


class Marginals(NamedTuple):
    n: np.ndarray
    mean_x: np.ndarray
    sd_x: np.ndarray
    mean_y: np.ndarray
    sd_y: np.ndarray


def _check(counts: np.ndarray, x: np.ndarray, y: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.asarray(counts)
    if c.ndim < 2:
        raise InputShapeError(f"counts must have shape (..., B_x, B_y), got {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        raise TypeError(f"counts must be integers, got {c.dtype}")
    if c.size and c.min() < 0:
        raise ConfigurationError("counts must be non-negative")
    bx, by = c.shape[-2:]
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.shape[-1] != bx or ya.shape[-1] != by:
        raise InputShapeError(f"bin centres have {xa.shape[-1]} and {ya.shape[-1]} values for "
                         f"{bx} x {by} counts")
    if bx < 2 or by < 2:
        raise InputShapeError("need at least 2 bins per axis")
    for name, a in (("x", xa), ("y", ya)):
        d = np.diff(a, axis=-1)
        if not np.all(np.isfinite(a)) or np.any(d <= 0) or not np.allclose(
                d, d[..., :1], rtol=1e-4, atol=0):
            raise ConfigurationError(f"{name} bin centres must be finite, increasing and equally "
                             "spaced (linear bins)")
    return c.astype(np.float64), xa, ya


def _width(a: np.ndarray) -> np.ndarray:
    return a[..., 1] - a[..., 0]


def marginal_moments(counts: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                     sheppard: bool = True) -> Marginals:
    """Sample size, means and SDs of ``x`` and ``y`` from joint counts (``(...)`` each).

    SDs use the sample variance minus Sheppard's ``h^2 / 12`` (``sheppard=True``).
    NaN where a histogram holds fewer than 2 samples.
    """
    c, xa, ya = _check(counts, x, y)
    return _marginals(c, xa, ya, sheppard)


def _marginals(c: np.ndarray, xa: np.ndarray, ya: np.ndarray, sheppard: bool) -> Marginals:
    nx = c.sum(-1)
    ny = c.sum(-2)
    n = nx.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (nx * xa).sum(-1) / n
        my = (ny * ya).sum(-1) / n
        vx = (nx * (xa - mx[..., None]) ** 2).sum(-1) / (n - 1)
        vy = (ny * (ya - my[..., None]) ** 2).sum(-1) / (n - 1)
        if sheppard:
            vx = vx - _width(xa) ** 2 / 12
            vy = vy - _width(ya) ** 2 / 12
        bad = n < 2
        sx = np.sqrt(np.where(bad | (vx <= 0), np.nan, vx))
        sy = np.sqrt(np.where(bad | (vy <= 0), np.nan, vy))
    return Marginals(n, mx, sx, my, sy)


def conditional_moments(counts: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                        sheppard: bool = True) -> ConditionalMoments:
    """E[y | x] and SD[y | x] per ``x`` column (estimators: module docstring).

    Parameters
    ----------
    counts : (..., B_x, B_y) non-negative integers
        Joint counts of linear bins.
    x, y : (..., B_x), (..., B_y)
        Bin centres (equally spaced), broadcastable against ``counts``.
    sheppard : bool
        Subtract Sheppard's ``h_y^2 / 12`` from the conditional variance.

    Returns
    -------
    ConditionalMoments ``(n, mean, sd)``, each ``(..., B_x)``.

    Examples
    --------
    >>> c = np.array([[0, 2, 0], [1, 0, 1], [0, 2, 0]])
    >>> m = conditional_moments(c, [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], sheppard=False)
    >>> m.n.tolist(), m.mean.tolist()
    ([2, 2, 2], [0.0, 0.0, 0.0])
    """
    c, xa, ya = _check(counts, x, y)
    return _conditional(c, xa, ya, sheppard)


def _c4(n: np.ndarray) -> np.ndarray:
    return 1.0 - 1.0 / (4.0 * n) - 7.0 / (32.0 * n * n)


def _conditional(c: np.ndarray, xa: np.ndarray, ya: np.ndarray,
                 sheppard: bool) -> ConditionalMoments:
    n = c.sum(-1)
    yb = ya[..., None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (c * yb).sum(-1) / n
        var = (c * (yb - mean[..., None]) ** 2).sum(-1) / (n - 1)
        if sheppard:
            var = var - (_width(ya) ** 2 / 12)[..., None]
        sd = np.sqrt(np.clip(var, 0.0, None)) / _c4(n)
    sd = np.where(n >= 2, sd, np.nan)
    mean = np.where(n >= 1, mean, np.nan)
    return ConditionalMoments(n.astype(np.int64), mean, sd)


def correlation(counts: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                sheppard: bool = True) -> np.ndarray:
    """Pearson correlation of the binned pair, ``(...)``; marginal variances
    Sheppard-corrected. NaN for fewer than 2 samples or a constant variable.

    Examples
    --------
    >>> c = np.diag([5, 5, 5])
    >>> float(correlation(c, [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], sheppard=False))
    1.0
    """
    c, xa, ya = _check(counts, x, y)
    return _correlation(c, xa, ya, sheppard)


def _correlation(c: np.ndarray, xa: np.ndarray, ya: np.ndarray, sheppard: bool,
                 m: Marginals | None = None) -> np.ndarray:
    m = _marginals(c, xa, ya, sheppard) if m is None else m
    dx = xa - m.mean_x[..., None]
    dy = ya - m.mean_y[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = (c * dx[..., :, None] * dy[..., None, :]).sum((-2, -1)) / (m.n - 1)
        return cov / (m.sd_x * m.sd_y)


def _standardised(c: np.ndarray, xa: np.ndarray, ya: np.ndarray, sheppard: bool
                  ) -> tuple[Marginals, ConditionalMoments, np.ndarray, np.ndarray]:
    """Marginals, conditional moments, ``x~`` per column and ``SD[y~ | x~]``."""
    m = _marginals(c, xa, ya, sheppard)
    cm = _conditional(c, xa, ya, sheppard)
    with np.errstate(invalid="ignore", divide="ignore"):
        xt = (xa - m.mean_x[..., None]) / m.sd_x[..., None]
        sdt = cm.sd / m.sd_y[..., None]
    return m, cm, xt, sdt


def _wls(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares ``b = intercept + slope a`` along the last axis."""
    with np.errstate(invalid="ignore", divide="ignore"):
        sw = w.sum(-1)
        am = (w * a).sum(-1) / sw
        bm = (w * b).sum(-1) / sw
        da = a - am[..., None]
        slope = (w * da * (b - bm[..., None])).sum(-1) / (w * da * da).sum(-1)
        return bm - slope * am, slope


def _weights(cm: ConditionalMoments, value: np.ndarray, xt: np.ndarray, min_count: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(weights, values, x~, enough) with excluded columns at weight 0."""
    ok = (cm.n >= max(int(min_count), 2)) & np.isfinite(value) & np.isfinite(xt)
    # fewer than 3 usable columns leave a slope undetermined: NaN rather than noise
    enough = ok.sum(-1) >= 3
    w = np.where(ok, cm.n, 0).astype(np.float64)
    return w, np.where(ok, value, 0.0), np.where(ok, xt, 0.0), enough


def bowtie_index(counts: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                 min_count: int = MIN_COUNT, sheppard: bool = True) -> np.ndarray:
    """Slope of ``SD[y~ | x~]`` against ``|x~|`` in standardised units, ``(...)``.

    Weighted least squares over the columns with at least ``min_count`` samples,
    weights = column counts (module docstring). NaN when fewer than 3 columns qualify.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> s = np.exp(rng.normal(size=200_000))           # a shared scale: a bowtie
    >>> xy = s * rng.normal(size=(2, 200_000))
    >>> e = np.linspace(-4, 4, 42)
    >>> c = np.histogram2d(*np.clip(xy, -3.99, 3.99), bins=[e, e])[0].astype(int)
    >>> ctr = (e[1:] + e[:-1]) / 2
    >>> bool(bowtie_index(c, ctr, ctr) > 0.2)
    True
    """
    c, xa, ya = _check(counts, x, y)
    return _bowtie_index(c, xa, ya, min_count, sheppard)


def _bowtie_index(c: np.ndarray, xa: np.ndarray, ya: np.ndarray, min_count: int,
                  sheppard: bool, parts: tuple | None = None) -> np.ndarray:
    _, cm, xt, sdt = _standardised(c, xa, ya, sheppard) if parts is None else parts
    w, v, a, enough = _weights(cm, sdt, xt, min_count)
    _, slope = _wls(np.abs(a), v, w)
    return np.where(enough, slope, np.nan)


def divisive_normalization_fit(counts: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                               min_count: int = MIN_COUNT, sheppard: bool = True
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Fit ``var(y~ | x~) = sigma^2 + w x~^2`` (standardised units); returns
    ``(sigma2, w)``, each ``(...)``.

    Weighted least squares over the columns with at least ``min_count`` samples,
    weights = column counts (module docstring). For a zero-correlation bivariate
    Student-t with ``nu`` degrees of freedom, ``w = 1 / (nu - 1)``; independent
    variables give ``w = 0``, ``sigma^2 = 1``.
    """
    c, xa, ya = _check(counts, x, y)
    return _dn_fit(c, xa, ya, min_count, sheppard)


def _dn_fit(c: np.ndarray, xa: np.ndarray, ya: np.ndarray, min_count: int, sheppard: bool,
            parts: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    _, cm, xt, sdt = _standardised(c, xa, ya, sheppard) if parts is None else parts
    # undo c4 (a bias factor of the SD, not of the variance): v_i / var_y is unbiased
    vt = (sdt * _c4(np.maximum(cm.n, 1).astype(np.float64))) ** 2
    w, v, a, enough = _weights(cm, vt, xt, min_count)
    s2, slope = _wls(a * a, v, w)
    return np.where(enough, s2, np.nan), np.where(enough, slope, np.nan)


def _weighted_quantiles(v: np.ndarray, w: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Per row of (L, M): the smallest value with at least a share ``level`` of the weight
    at or below it, for each level; returns (L, len(levels))."""
    order = np.argsort(v, axis=-1, kind="stable")
    vs = np.take_along_axis(v, order, -1)
    cw = np.cumsum(np.take_along_axis(w, order, -1), axis=-1)
    k = (cw[:, None, :] < levels[None, :, None] * cw[:, None, -1:]).sum(-1)
    return np.take_along_axis(vs, np.minimum(k, v.shape[-1] - 1), -1)


def _mi_fractional(c: np.ndarray) -> np.ndarray:
    """Miller-Madow plug-in MI (nats) of non-negative (possibly fractional) counts
    (L, Q_x, Q_y); ``m`` counts the cells holding any mass."""
    n = c.sum((-2, -1))
    cx = c.sum(-1)
    cy = c.sum(-2)

    def nlogn(a: np.ndarray) -> np.ndarray:
        return np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)

    with np.errstate(invalid="ignore", divide="ignore"):
        mi = np.log(n) + (nlogn(c).sum((-2, -1)) - nlogn(cx).sum(-1) - nlogn(cy).sum(-1)) / n
        m = ((c > 0).sum((-2, -1)) - (cx > 0).sum(-1) - (cy > 0).sum(-1) + 1)
        return np.where(n > 0, mi - m / (2.0 * n), np.nan)


def _rebinned_mi(c: np.ndarray, lo: np.ndarray, hi: np.ndarray, q: int) -> np.ndarray:
    """MI of (x, z) where cell (i, j) of counts c (L, B_x, B_y) spreads its mass uniformly
    over the z interval [lo_ij, hi_ij]: x columns merged into ``q`` contiguous groups of
    about equal mass, z cut into ``q`` bins at the weighted quantiles of the cell midpoints
    (both about equal-frequency, so neither heavy tails nor the bin scale matter)."""
    nl = c.shape[0]
    levels = np.arange(1, q) / q
    # x: contiguous groups of columns cut at the cumulative mass of each column's middle
    col = c.sum(-1)
    tot = np.maximum(col.sum(-1, keepdims=True), 1e-300)
    mid = (np.cumsum(col, -1) - col / 2) / tot
    grp = np.minimum((mid * q).astype(np.int64), q - 1)  # (L, B_x)
    # z: edges at weighted quantiles of the cell midpoints
    zm = ((lo + hi) / 2).reshape(nl, -1)
    edges = _weighted_quantiles(zm, c.reshape(nl, -1), levels)  # (L, q - 1)
    spread = hi > lo
    # share of each cell's z interval below each edge (L, B_x, B_y, q - 1), formed in
    # place: these are the largest arrays of the bowtie results
    frac = edges[:, None, None, :] - lo[..., None]
    frac /= np.where(spread, hi - lo, 1.0)[..., None]
    np.clip(frac, 0.0, 1.0, out=frac)
    point = ~spread  # a zero-width interval is wholly below an edge at or above it
    if point.any():
        frac[point] = edges[np.nonzero(point)[0]] >= lo[point][:, None]
    # each cell's mass in each z bin: differences of [0, frac, 1] along the edges
    share = np.empty((*c.shape, q))
    share[..., 0] = frac[..., 0]
    np.subtract(frac[..., 1:], frac[..., :-1], out=share[..., 1:-1])
    np.subtract(1.0, frac[..., -1], out=share[..., -1])
    mass = np.einsum("lxy,lxyz->lxz", c, share)  # (L, B_x, q)
    onehot = (grp[..., None] == np.arange(q)).astype(np.float64)  # (L, B_x, q)
    new = np.einsum("lxg,lxz->lgz", onehot, mass)
    return _mi_fractional(new)


def normalized_mi(counts: np.ndarray, x: np.ndarray, y: np.ndarray, sigma2: np.ndarray,
                  w: np.ndarray, *, n_bins: int = 8, sheppard: bool = True
                  ) -> tuple[np.ndarray, np.ndarray]:
    """MI (nats) of the pair before and after dividing ``y~`` by ``sqrt(sigma2 + w x~^2)``.

    Parameters
    ----------
    counts, x, y : as :func:`conditional_moments`.
    sigma2, w : (...) the divisive normalization (:func:`divisive_normalization_fit`).
    n_bins : bins per variable of the re-binned histogram (module docstring).

    Returns
    -------
    (mi_before, mi_after), each ``(...)``: Miller-Madow plug-in MI of the re-binned
    ``n_bins x n_bins`` counts, both through the same re-binning. NaN where the fit is
    NaN, its predicted variance is not positive, or the histogram is empty.
    """
    c, xa, ya = _check(counts, x, y)
    if n_bins < 2:
        raise ConfigurationError(f"n_bins must be at least 2, got {n_bins}")
    return _normalized_mi(c, xa, ya, np.asarray(sigma2, np.float64),
                          np.asarray(w, np.float64), int(n_bins), sheppard)


def _normalized_mi(c: np.ndarray, xa: np.ndarray, ya: np.ndarray, sigma2: np.ndarray,
                   w: np.ndarray, n_bins: int, sheppard: bool,
                   m: Marginals | None = None) -> tuple[np.ndarray, np.ndarray]:
    m = _marginals(c, xa, ya, sheppard) if m is None else m
    lead = c.shape[:-2]
    bx, by = c.shape[-2:]
    xa = np.broadcast_to(xa, (*lead, bx))
    ya = np.broadcast_to(ya, (*lead, by))
    h = (ya[..., 1] - ya[..., 0])[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        sx, sy = m.sd_x[..., None], m.sd_y[..., None]
        xt = (xa - m.mean_x[..., None]) / sx
        ylo = (ya - h / 2 - m.mean_y[..., None]) / sy
        yhi = (ya + h / 2 - m.mean_y[..., None]) / sy
        pred = np.asarray(sigma2)[..., None] + np.asarray(w)[..., None] * xt * xt
        # a fit whose predicted variance is not positive somewhere cannot normalise
        ok = np.isfinite(pred).all(-1) & (pred > 0).all(-1) & (m.n > 0)
        ok &= np.isfinite(ylo).all(-1)
        scale = 1.0 / np.sqrt(np.where(pred > 0, pred, 1.0))[..., :, None]
    good = np.isfinite(ylo).all(-1) & (m.n > 0)
    ylo = np.where(good[..., None], ylo, 0.0)
    yhi = np.where(good[..., None], yhi, 1.0)
    scale = np.where(ok[..., None, None], scale, 1.0)
    ci = c.reshape(-1, bx, by)
    lo_b = np.broadcast_to(ylo[..., None, :], (*lead, bx, by)).reshape(-1, bx, by)
    hi_b = np.broadcast_to(yhi[..., None, :], (*lead, bx, by)).reshape(-1, bx, by)
    before = _rebinned_mi(ci, lo_b, hi_b, n_bins).reshape(lead)
    sc = np.broadcast_to(scale, (*lead, bx, by)).reshape(-1, bx, by)
    after = _rebinned_mi(ci, lo_b * sc, hi_b * sc, n_bins).reshape(lead)
    return np.where(good, before, np.nan), np.where(ok, after, np.nan)


def conditional_statistics(counts: np.ndarray, x: np.ndarray, y: np.ndarray, *,
                           min_count: int = MIN_COUNT, sheppard: bool = True,
                           with_mi: bool = True, mi_bins: int = 8
                           ) -> dict[str, np.ndarray]:
    """Every statistic of this module for a stack of histograms.

    Returns
    -------
    dict of arrays: ``n`` (...), ``correlation``, ``bowtie_index``, ``sigma2``, ``w``
    (...), ``mi_before``, ``mi_after`` (with ``with_mi``), and ``column_n``,
    ``cond_mean``, ``cond_sd`` (..., B_x) in the units of ``y``.
    """
    c, xa, ya = _check(counts, x, y)
    parts = _standardised(c, xa, ya, sheppard)
    m, cm = parts[0], parts[1]
    out = {"n": m.n, "correlation": _correlation(c, xa, ya, sheppard, m),
           "bowtie_index": _bowtie_index(c, xa, ya, min_count, sheppard, parts),
           "column_n": cm.n, "cond_mean": cm.mean, "cond_sd": cm.sd}
    out["sigma2"], out["w"] = _dn_fit(c, xa, ya, min_count, sheppard, parts)
    if with_mi:
        out["mi_before"], out["mi_after"] = _normalized_mi(
            c, xa, ya, out["sigma2"], out["w"], int(mi_bins), sheppard, m)
    return out


def jackknife_interval(estimate: np.ndarray, replicates: np.ndarray, *, axis: int = 0,
                       level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Delete-one-group jackknife standard error and t interval.

    Parameters
    ----------
    estimate : (...) the statistic on all data.
    replicates : the statistic with group ``g`` left out, groups along ``axis``
        (NaN replicates, e.g. of empty groups, are ignored).
    level : coverage of the interval.

    Returns
    -------
    (se, lower, upper): ``se = sqrt((G - 1) / G * sum_g (t_g - mean t)^2)`` over the
    ``G`` finite replicates, and ``estimate -+ t_{G-1, (1 + level) / 2} se``. NaN where
    fewer than 2 replicates are finite.

    Examples
    --------
    >>> rep = np.array([1.0, 2.0, 3.0])
    >>> se, lo, hi = jackknife_interval(np.array(2.0), rep)
    >>> round(float(se), 4)
    1.1547
    """
    if not 0 < level < 1:
        raise ConfigurationError(f"level must be in (0, 1), got {level}")
    from scipy.stats import t as student_t  # 1.3 s to import: not for every plot

    r = np.moveaxis(np.asarray(replicates, np.float64), axis, 0)
    ok = np.isfinite(r)
    g = ok.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, r, 0.0).sum(0) / g
        ss = np.where(ok, (r - mean) ** 2, 0.0).sum(0)
        se = np.sqrt((g - 1) / g * ss)
        tq = student_t.ppf((1 + level) / 2, np.maximum(g - 1, 1))
    se = np.where(g >= 2, se, np.nan)
    est = np.asarray(estimate, np.float64)
    return se, est - tq * se, est + tq * se
