"""Conditional statistics against planted pairs with known answers.

* A Gaussian scale mixture ``x = s g1, y = s g2`` with ``s^2`` inverse-gamma is a
  zero-correlation bivariate Student-t (``nu`` degrees of freedom), whose conditional
  variance is exactly ``var(y | x) = (nu + x^2) / (nu - 1)``: ``w = 1 / (nu - 1)``.
  What the binned estimator should return (the bins clip the tails into the outer
  bins) is computed to high precision from the exact cell probabilities.
* Independent pairs: correlation, bowtie index and ``w`` all 0.
* A linear Gaussian pair: the known correlation.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.integrate import quad_vec

from vitprobe.stats.conditional import (
    bowtie_index,
    conditional_moments,
    conditional_statistics,
    correlation,
    divisive_normalization_fit,
    jackknife_interval,
    normalized_mi,
)

B = 41
NU = 5


def linear_hist(x: np.ndarray, y: np.ndarray, rx: float, ry: float, b: int = B
                ) -> np.ndarray:
    ix = np.clip(np.floor((x + rx) / (2 * rx) * b), 0, b - 1).astype(np.int64)
    iy = np.clip(np.floor((y + ry) / (2 * ry) * b), 0, b - 1).astype(np.int64)
    return np.bincount(ix * b + iy, minlength=b * b).reshape(b, b)


def centres(r: float, b: int = B) -> np.ndarray:
    return -r + (np.arange(b) + 0.5) * 2 * r / b


def folds_and_total(x: np.ndarray, y: np.ndarray, rx: float, ry: float, folds: int = 8):
    parts = np.stack([linear_hist(a, c, rx, ry) for a, c in
                      zip(np.array_split(x, folds), np.array_split(y, folds), strict=True)])
    return parts.sum(0), parts


def with_interval(total: np.ndarray, parts: np.ndarray, xc: np.ndarray, yc: np.ndarray):
    est = conditional_statistics(total, xc, yc)
    reps = [conditional_statistics(total - p, xc, yc, with_mi=False) for p in parts]
    out = {}
    for name in ("correlation", "bowtie_index", "w", "sigma2"):
        _, lo, hi = jackknife_interval(est[name], np.stack([r[name] for r in reps]))
        out[name] = (float(est[name]), float(lo), float(hi))
    return est, out


def t_cell_counts(r: float, nu: float = NU, scale: float = 1e12) -> np.ndarray:
    """Exact cell probabilities (times ``scale``, rounded) of the zero-correlation
    bivariate t binned like :func:`linear_hist` (outer bins open to infinity)."""
    e = -r + np.arange(B + 1) * 2 * r / B
    ex = np.concatenate([[-np.inf], e[1:-1], [np.inf]])
    inner = e[1:-1]

    def column(x: float) -> np.ndarray:
        sc = np.sqrt((nu + x * x) / (nu + 1))  # y | x is t_{nu + 1} with this scale
        cdf = np.concatenate([[0.0], stats.t.cdf(inner / sc, nu + 1), [1.0]])
        return stats.t.pdf(x, nu) * np.diff(cdf)

    p = np.stack([quad_vec(column, ex[i], ex[i + 1], epsabs=1e-14, epsrel=1e-11)[0]
                  for i in range(B)])
    return np.rint(p * scale).astype(np.int64)


def test_scale_mixture_gives_a_bowtie_and_the_known_weight() -> None:
    rng = np.random.default_rng(11)
    n = 400_000
    s = np.sqrt(NU / rng.chisquare(NU, n))  # s^2 inverse-gamma: x, y bivariate t_5
    x, y = s * rng.standard_normal(n), s * rng.standard_normal(n)
    r = float(stats.t.ppf(0.9975, NU))  # about 0.5 % of |x| beyond the range
    total, parts = folds_and_total(x, y, r, r)
    xc = centres(r)
    est, ci = with_interval(total, parts, xc, xc)
    # what the estimator returns on the exact (binned, clipped) distribution
    exact_counts = t_cell_counts(r)
    exact = conditional_statistics(exact_counts, xc, xc)
    w_target = float(exact["w"])
    # the clipping of the tails into the outer bins costs the analytic 1 / (nu - 1) a bit
    assert abs(w_target - 1 / (NU - 1)) < 0.04
    w, lo, hi = ci["w"]
    assert lo <= w_target <= hi and abs(w - w_target) < 0.03
    corr, lo, hi = ci["correlation"]
    assert lo <= 0.0 <= hi and abs(corr) < 0.01
    _, lo, hi = ci["bowtie_index"]
    assert lo > 0.15 and lo <= float(exact["bowtie_index"]) <= hi
    # dividing y by its predicted SD removes the dependence (y / SD is independent of x
    # for the bivariate t): almost nothing remains
    assert float(est["mi_before"]) > 0.005
    assert float(est["mi_after"]) < 0.15 * float(est["mi_before"])
    # the conditional SD grows with |x| as sqrt((nu + x^2) / (nu - 1)) (near the centre;
    # further out the clipped tails of y pull it down, as the exact binned SD shows)
    m = conditional_moments(total, xc, xc)
    target = conditional_moments(exact_counts, xc, xc).sd
    core = np.abs(xc) < 2.5
    np.testing.assert_allclose(m.sd[core], target[core], rtol=0.03)
    near = np.abs(xc) < 1.0
    np.testing.assert_allclose(target[near], np.sqrt((NU + xc[near] ** 2) / (NU - 1)),
                               rtol=0.02)


def test_independent_pair_has_no_bowtie() -> None:
    rng = np.random.default_rng(2)
    n = 400_000
    total, parts = folds_and_total(rng.standard_normal(n), rng.standard_t(4, n), 4.0, 6.0)
    est, ci = with_interval(total, parts, centres(4.0), centres(6.0))
    for name in ("correlation", "bowtie_index", "w"):
        value, lo, hi = ci[name]
        assert lo <= 0.0 <= hi, (name, value, lo, hi)
        assert abs(value) < 0.02, (name, value)
    assert abs(float(est["mi_before"])) < 0.002
    assert abs(ci["sigma2"][0] - 1) < 0.03


def test_linear_pair_has_the_known_correlation() -> None:
    rng = np.random.default_rng(3)
    n, rho = 400_000, 0.6
    x = rng.standard_normal(n)
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    total, parts = folds_and_total(x, y, 4.5, 4.5)
    xc = centres(4.5)
    est, ci = with_interval(total, parts, xc, xc)
    corr, lo, hi = ci["correlation"]
    assert lo <= rho <= hi and abs(corr - rho) < 0.005
    # Gaussian: constant conditional spread (no bowtie); E[y | x] = rho x
    _, lo, hi = ci["bowtie_index"]
    assert lo <= 0.0 <= hi
    m = conditional_moments(total, xc, xc)
    core = np.abs(xc) < 2
    # within four standard errors of the column means
    tol = 4 * np.sqrt(1 - rho**2) / np.sqrt(m.n[core])
    assert np.all(np.abs(m.mean[core] - rho * xc[core]) < tol)
    np.testing.assert_allclose(m.sd[core], np.sqrt(1 - rho**2), rtol=0.02)
    assert float(correlation(total, xc, xc)) == pytest.approx(float(est["correlation"]))


def test_column_moments_equal_a_direct_computation() -> None:
    rng = np.random.default_rng(4)
    c = rng.integers(0, 6, size=(3, 7, 5))
    c[1, 2] = 0  # an empty column
    c[2, 3] = 0
    c[2, 3, 1] = 1  # a column of one sample
    x, y = np.linspace(-3, 3, 7), np.linspace(-1, 3, 5)
    m = conditional_moments(c, x, y)
    h = y[1] - y[0]
    for k in range(3):
        for i in range(7):
            vals = np.repeat(y, c[k, i])
            assert m.n[k, i] == vals.size
            if vals.size == 0:
                assert np.isnan(m.mean[k, i]) and np.isnan(m.sd[k, i])
                continue
            assert m.mean[k, i] == pytest.approx(vals.mean())
            if vals.size < 2:
                assert np.isnan(m.sd[k, i])
                continue
            n = vals.size
            var = max(vals.var(ddof=1) - h * h / 12, 0.0)
            c4 = 1 - 1 / (4 * n) - 7 / (32 * n * n)
            assert m.sd[k, i] == pytest.approx(np.sqrt(var) / c4)


def test_functions_agree_with_conditional_statistics_and_validate() -> None:
    rng = np.random.default_rng(5)
    s = np.exp(rng.standard_normal(50_000))
    c = linear_hist(s * rng.standard_normal(50_000), s * rng.standard_normal(50_000), 5, 5)
    xc = centres(5.0)
    st = conditional_statistics(c, xc, xc)
    assert float(bowtie_index(c, xc, xc)) == pytest.approx(float(st["bowtie_index"]))
    s2, w = divisive_normalization_fit(c, xc, xc)
    assert float(w) == pytest.approx(float(st["w"]))
    before, after = normalized_mi(c, xc, xc, s2, w)
    assert float(before) == pytest.approx(float(st["mi_before"]))
    assert float(after) == pytest.approx(float(st["mi_after"]))
    with pytest.raises(TypeError, match="integers"):
        conditional_moments(c.astype(float), xc, xc)
    with pytest.raises(ValueError, match="bin centres"):
        conditional_moments(c, xc[:-1], xc)
    with pytest.raises(ValueError, match="equally"):
        conditional_moments(c, xc**3, xc)
    with pytest.raises(ValueError, match="non-negative"):
        conditional_moments(-c, xc, xc)


def test_jackknife_of_a_mean_is_the_standard_error() -> None:
    rng = np.random.default_rng(6)
    v = rng.standard_normal(20)
    loo = (v.sum() - v) / (v.size - 1)
    se, lo, hi = jackknife_interval(np.asarray(v.mean()), loo)
    assert float(se) == pytest.approx(v.std(ddof=1) / np.sqrt(v.size))
    t = stats.t.ppf(0.975, v.size - 1)
    assert float(hi - lo) == pytest.approx(2 * t * float(se))
    se, _, _ = jackknife_interval(np.asarray(1.0), np.array([np.nan, 1.0]))
    assert np.isnan(se)


def test_rebinned_mi_of_point_masses_bins_the_points():
    """Cells whose z interval has zero width (a degenerate y axis) put all their mass in
    the z bin holding the point: the re-binned table is the points' table."""
    from vitprobe.stats.conditional import _mi_fractional, _rebinned_mi, _weighted_quantiles

    rng = np.random.default_rng(3)
    c = rng.poisson(4.0, size=(3, 8, 6)).astype(np.float64)
    lo = rng.normal(size=(3, 8, 6))
    q = 4
    got = _rebinned_mi(c, lo, lo.copy(), q)
    edges = _weighted_quantiles(lo.reshape(3, -1), c.reshape(3, -1), np.arange(1, q) / q)
    col = c.sum(-1)
    mid = (np.cumsum(col, -1) - col / 2) / col.sum(-1, keepdims=True)
    grp = np.minimum((mid * q).astype(int), q - 1)
    table = np.zeros((3, q, q))
    for li in range(3):
        z = np.searchsorted(edges[li], lo[li], side="left")  # edges below the point
        for x in range(8):
            for y in range(6):
                table[li, grp[li, x], z[x, y]] += c[li, x, y]
    np.testing.assert_allclose(got, _mi_fractional(table), rtol=1e-12)
