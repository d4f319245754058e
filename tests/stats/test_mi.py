"""Accuracy of the binned MI estimator on samples with analytic MI (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import digamma, gammaln

from vitprobe.stats import (
    choose_bins,
    coarsen_counts,
    gaussian_copula_mi,
    mi_from_counts,
    mutual_info,
    mutual_info_ksg,
)

from .conftest import gaussian_mi


def gaussian_pairs(rho: float, n: int, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z1 = rng.standard_normal((reps, n))
    z2 = rng.standard_normal((reps, n))
    return z1, rho * z1 + np.sqrt(1 - rho**2) * z2


def student_t_mi(rho: float, nu: float) -> float:
    """Analytic MI of a bivariate Student-t (Czyz et al. 2023, via related-work.md)."""
    def h(k: int) -> float:
        return (-gammaln((nu + k) / 2) + gammaln(nu / 2) + k / 2 * np.log(nu * np.pi)
                + (nu + k) / 2 * (digamma((nu + k) / 2) - digamma(nu / 2)))

    return float(-0.5 * np.log(1 - rho**2) + 2 * h(1) - h(2))


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.6, 0.9])
def test_gaussian_bias_n20k(rho: float) -> None:
    x, y = gaussian_pairs(rho, 20_000, reps=16, seed=int(rho * 10))
    est = mutual_info(x, y)
    assert est.shape == (16,)
    assert abs(est.mean() - gaussian_mi(rho)) <= 0.02


def test_gaussian_high_mi_n50k() -> None:
    x, y = gaussian_pairs(0.99, 50_000, reps=6, seed=99)
    truth = gaussian_mi(0.99)
    est = mutual_info(x, y)
    assert abs(est.mean() - truth) <= 0.05
    # without the extrapolation the discretisation loss is larger than the tolerance
    mm = mutual_info(x, y, method="miller-madow")
    assert mm.mean() - truth < -0.04


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_student_t_df1(rho: float) -> None:
    rng = np.random.default_rng(7 + int(rho * 10))
    x, y = gaussian_pairs(rho, 20_000, reps=12, seed=3 + int(rho * 10))
    w = np.sqrt(rng.chisquare(1, x.shape))
    est = mutual_info(x / w, y / w)
    assert abs(est.mean() - student_t_mi(rho, 1.0)) <= 0.03


def test_independent_pairs_unbiased_unclipped() -> None:
    rng = np.random.default_rng(2024)
    x = rng.standard_normal((1000, 10_000), dtype=np.float32)
    y = rng.standard_normal((1000, 10_000), dtype=np.float32)
    est = mutual_info(x, y)
    assert abs(est.mean()) <= 0.002
    assert (est < 0).mean() > 0.3  # not clipped at zero
    # the raw plug-in is biased by about (B-1)^2 / 2N
    plug = mutual_info(x[:50], y[:50], method="plugin")
    b = choose_bins(10_000)
    assert plug.mean() == pytest.approx((b - 1) ** 2 / 2e4, rel=0.2)


def test_monotone_transforms_change_little() -> None:
    x, y = gaussian_pairs(0.6, 20_000, reps=4, seed=5)
    base = mutual_info(x, y)
    moved = mutual_info(np.exp(x / 2) + 3 * x, np.tanh(y / 4) * 10)  # strictly increasing
    assert np.max(np.abs(moved - base)) < 0.005
    flipped = mutual_info(-(x**3), y)  # decreasing: same MI
    assert np.max(np.abs(flipped - base)) < 0.005


def test_bowtie_dependence_above_null() -> None:
    """Zero correlation, variance dependence (Schwartz & Simoncelli 2001)."""
    rng = np.random.default_rng(11)
    n = 20_000
    x = rng.standard_normal((8, n))
    y = rng.standard_normal((8, n)) * np.sqrt(0.1 + x**2)
    assert np.abs(np.mean(x * y, axis=1)).max() < 0.05  # uncorrelated
    est = mutual_info(x, y)
    null = mutual_info(x, np.roll(y, 1, axis=1))  # x from image i, y from image i+1
    assert est.min() > 0.1
    assert np.abs(null).max() < 0.01
    assert est.min() > null.max() + 10 * null.std()
    # the Gaussian copula misses it
    assert gaussian_copula_mi(x, y).max() < 0.01


def test_ksg_reference_agrees() -> None:
    x, y = gaussian_pairs(0.6, 2000, reps=3, seed=8)
    truth = gaussian_mi(0.6)
    ksg = mutual_info_ksg(x, y)
    assert abs(ksg.mean() - truth) < 0.03
    assert abs(mutual_info(x, y).mean() - truth) < 0.03
    ind = mutual_info_ksg(x, gaussian_pairs(0.0, 2000, 3, 9)[1])
    assert ind.min() < 0.02  # unclipped: can be negative


def test_ksg_matches_sklearn_when_positive() -> None:
    from sklearn.feature_selection import mutual_info_regression

    x, y = gaussian_pairs(0.8, 1000, reps=1, seed=4)
    ref = mutual_info_regression(x[0][:, None], y[0], n_neighbors=3, random_state=0)[0]
    assert mutual_info_ksg(x[0], y[0]) == pytest.approx(ref, abs=0.01)


def test_shapes_and_backends() -> None:
    x, y = gaussian_pairs(0.5, 4000, reps=6, seed=1)
    x3, y3 = x.reshape(2, 3, -1), y.reshape(2, 3, -1)
    a = mutual_info(x3, y3)
    assert a.shape == (2, 3)
    t = mutual_info(torch.from_numpy(x3).float(), torch.from_numpy(y3).float())
    assert isinstance(t, torch.Tensor) and t.shape == (2, 3)
    np.testing.assert_allclose(t.numpy(), a, atol=1e-12)
    one = mutual_info(x[0], y[0])
    assert np.ndim(one) == 0 and float(one) == pytest.approx(a.reshape(-1)[0])
    bf = mutual_info(torch.from_numpy(x3).bfloat16(), torch.from_numpy(y3).bfloat16())
    assert torch.all(torch.abs(bf - torch.from_numpy(a)) < 0.05)
    with pytest.raises(ValueError):
        mutual_info(x, y[:, :10])
    with pytest.raises(ValueError):
        mutual_info(x, y, bins=15)
    # array-likes as scikit-learn takes them, reversed views too
    assert mutual_info(x[0].tolist(), y[0].tolist()) == pytest.approx(float(one))
    assert mutual_info(x[0][::-1], y[0][::-1]) == mutual_info(x[0][::-1].copy(),
                                                             y[0][::-1].copy())


@pytest.mark.parametrize("estimator", ["mutual_info", "mutual_info_ksg", "gaussian_copula_mi"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_refused_naming_the_row(estimator, bad) -> None:
    """A NaN was binned somewhere without a word (MI 0.336 instead of 0.337)."""
    import vitprobe.stats as stats
    from vitprobe.errors import NonFiniteInputError

    x, y = gaussian_pairs(0.5, 400, reps=6, seed=2)
    x3, y3 = x.reshape(2, 3, -1), y.reshape(2, 3, -1).copy()
    y3[1, 2, 7] = bad
    fn = getattr(stats, estimator)
    with pytest.raises(NonFiniteInputError, match=r"y holds NaN or inf \(first at index "
                                                  r"\(1, 2\) of the leading axes\), in 1 of 6"):
        fn(x3, y3)
    with pytest.raises(NonFiniteInputError):  # tensors too
        fn(torch.from_numpy(x3), torch.from_numpy(y3))


def test_huge_finite_samples_are_not_taken_for_non_finite() -> None:
    """Rows are screened by their sum: a sum that overflows float32 sends the row to the
    exact test, which passes it."""
    from vitprobe.stats._common import paired_samples

    big = np.full((2, 64), 3e38, np.float32)
    big[1, ::2] = -3e38
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(big.sum(-1)).all()
    for a in (big, torch.from_numpy(big)):
        xs, _, lead = paired_samples(a, a)
        assert lead == (2,) and xs.shape == (2, 64)


def test_ksg_neighbours_are_checked() -> None:
    from vitprobe.errors import ConfigurationError

    x, y = gaussian_pairs(0.5, 100, reps=1, seed=3)
    for k in (0, 100):
        with pytest.raises(ConfigurationError, match=r"k must be in 1\.\.N-1 = 99"):
            mutual_info_ksg(x[0], y[0], k=k)


def test_torch_counting_path_matches_numpy() -> None:
    from vitprobe.stats.mi import _counts_numpy, _counts_torch

    x, y = gaussian_pairs(0.5, 3000, reps=4, seed=2)
    sub = np.sort(np.random.default_rng(0).choice(3000, 512, replace=False))
    a = _counts_numpy(x, y, 16, sub)
    b = _counts_torch(torch.from_numpy(x), torch.from_numpy(y), 16, sub)
    np.testing.assert_array_equal(a, b.numpy())


def test_mi_from_counts() -> None:
    rng = np.random.default_rng(0)
    c = rng.integers(0, 50, (3, 8, 8))
    t = torch.from_numpy(c)
    for m in ("plugin", "miller-madow", "extrapolated"):
        np.testing.assert_allclose(mi_from_counts(c, method=m), mi_from_counts(t, method=m).numpy())
    # independent product table: plug-in MI exactly 0
    prod = np.outer([1, 2, 3, 4], [5, 6, 7, 8])[None]
    assert mi_from_counts(prod, method="plugin")[0] == pytest.approx(0, abs=1e-12)
    diag = np.diag([10, 10, 10, 10])[None]
    assert mi_from_counts(diag, method="plugin")[0] == pytest.approx(np.log(4))
    assert np.isnan(mi_from_counts(np.zeros((1, 4, 4), int))[0])
    assert coarsen_counts(c).shape == (3, 4, 4)
    assert coarsen_counts(c).sum() == c.sum()
