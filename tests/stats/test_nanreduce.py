"""nanmean / nanstd: numpy's values, NaN for empty slices, no warning (on any thread)."""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vitprobe.stats.nanreduce import nanmean, nanstd


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_equal_numpy_bit_for_bit(axis):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5, 4))
    a[rng.random(a.shape) < 0.3] = np.nan
    a[:, 0, 0] = np.nan  # an all-NaN slice along axis 0
    a[1:, 1, 1] = np.nan  # one value left: std with ddof=1 is NaN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, std = np.nanmean(a, axis=axis), np.nanstd(a, axis=axis, ddof=1)
        std0 = np.nanstd(a, axis=axis)
    np.testing.assert_array_equal(nanmean(a, axis), mean)
    np.testing.assert_array_equal(nanstd(a, axis, ddof=1), std)
    np.testing.assert_array_equal(nanstd(a, axis), std0)


def test_empty_slices_are_nan_without_a_warning_on_threads():
    a = np.full((3, 4), np.nan)
    a[0, 1] = 2.0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(4) as pool:
            out = list(pool.map(lambda _: (nanmean(a, 0), nanstd(a, 0, ddof=1)), range(16)))
    assert caught == []
    for mean, std in out:
        np.testing.assert_array_equal(mean, [np.nan, 2.0, np.nan, np.nan])
        assert np.isnan(std).all()
