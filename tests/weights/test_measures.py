"""Scalar measures on hand-computable spectra."""

from __future__ import annotations

import numpy as np
import pytest

from vitprobe.weights import measures as ms


def test_positive_share():
    assert ms.positive_share(np.array([3.0, 1.0, 0.0, -1.0])) == pytest.approx(0.8)
    assert ms.positive_share(np.array([1.0, -1.0])) == pytest.approx(0.5)
    assert np.isnan(ms.positive_share(np.zeros(4)))


def test_symmetry_index_and_ratio():
    M = np.array([[1.0, 2.0], [0.0, 1.0]])
    S, X = (M + M.T) / 2, (M - M.T) / 2
    fs, fa, f = (S * S).sum(), (X * X).sum(), (M * M).sum()
    assert ms.symmetry_index(fs, f) == pytest.approx(np.sum(M * M.T) / f)
    assert ms.asym_sym_ratio(fa, fs) == pytest.approx(np.linalg.norm(X) / np.linalg.norm(S))


def test_weighted_cosine():
    s = np.array([[2.0, 1.0, 1.0]])
    cos = np.array([[1.0, -1.0, 0.5]])
    assert ms.weighted_cosine(s, cos)[0] == pytest.approx((2 - 1 + 0.5) / 4)


def test_ranks_and_energy():
    flat = np.ones(8)
    assert ms.effective_rank(flat) == pytest.approx(8.0)
    assert ms.stable_rank(flat) == pytest.approx(8.0)
    one = np.r_[5.0, np.zeros(7)]
    assert ms.effective_rank(one) == pytest.approx(1.0)
    assert ms.stable_rank(one) == pytest.approx(1.0)
    e = ms.energy_cumulative(np.array([2.0, 1.0, 1.0]))
    np.testing.assert_allclose(e, [4 / 6, 5 / 6, 1.0])
    assert ms.effective_rank(np.array([2.0, 1.0, 1.0])) == pytest.approx(
        np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)))
    )
