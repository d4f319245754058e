"""MI counts split over passes combine into exactly the single-pass result (issue 12)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from tests.stats.conftest import PlantedStream
from vitprobe.errors import ResultsError
from vitprobe.stats import JointCounts, NeuronLayout
from vitprobe.stats.planning import joint_memory, plan_passes
from vitprobe.stats.results import combine_results

KW = dict(bins=8, calibration_images=64, null_channels=3, cross_pairs_per_distance=1)


def _count(layout: NeuronLayout, groups) -> xr.Dataset:
    """One pass over the same planted images (the stream draws every group each batch)."""
    acc = JointCounts(layout, groups=groups, **KW)
    stream = PlantedStream(layout, seed=21)
    acc.calibrate(stream.batch(64))
    acc.end_calibration()
    for b in (30, 31, 17):
        acc.update(stream.batch(b))
    return acc.result()


def assert_identical(got: xr.Dataset, want: xr.Dataset) -> None:
    """Every variable and coordinate: values (NaN where NaN), dtype, attrs; Dataset attrs."""
    assert list(got.data_vars) == list(want.data_vars)
    assert set(got.coords) == set(want.coords)
    for name in [*want.data_vars, *want.coords]:
        a, b = got[name], want[name]
        assert a.dims == b.dims, name
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        np.testing.assert_array_equal(a.values, b.values, err_msg=name)
        assert a.attrs == b.attrs, name
    assert got.attrs.keys() == want.attrs.keys()
    for key in want.attrs:
        np.testing.assert_array_equal(got.attrs[key], want.attrs[key], err_msg=key)


def test_plan_that_splits_a_layer_combines_to_the_single_pass_result() -> None:
    layout = NeuronLayout(n_layers=3, d_model=6, grid=(4, 4), n_prefix=1)
    options = dict(calibration_images=64, null_channels=3, cross_pairs_per_distance=1,
                   batch_size=31, max_images=78)
    # a budget that holds 3 of the 6 groups but not 4: two passes of 3 groups, so
    # layer 2's attention output lands in pass 1 and its MLP output in pass 2
    budget = (joint_memory(layout, 8, n_groups=3, **options).peak
              + joint_memory(layout, 8, n_groups=4, **options).peak) // 2
    plan = plan_passes(layout, 8, budget, **options)
    assert plan == [[(0, "attn"), (0, "mlp"), (1, "attn")], [(1, "mlp"), (2, "attn"),
                                                             (2, "mlp")]]
    single = _count(layout, None)
    parts = [_count(layout, groups) for groups in plan]
    assert_identical(combine_results(parts), single)
    assert_identical(combine_results(parts[::-1]), single)  # pass order does not matter
    assert single["joint_counts"].dtype == np.int32 and single["kept_channel"].dtype == np.int64


def test_one_group_per_pass_keeps_counts_integer_and_attrs() -> None:
    layout = NeuronLayout(n_layers=2, d_model=6, grid=(4, 4), n_prefix=1)
    single = _count(layout, None)
    parts = [_count(layout, [g]) for g in layout.groups()]
    comb = combine_results(parts)
    assert_identical(comb, single)
    assert comb["joint_counts"].encoding.get("zlib") is True


def test_passes_of_different_runs_are_refused() -> None:
    layout = NeuronLayout(n_layers=2, d_model=6, grid=(4, 4), n_prefix=1)
    a = _count(layout, [(0, "attn")])
    b = _count(layout, [(0, "mlp")]).assign_attrs(bins=16)
    with pytest.raises(ResultsError, match="bins"):
        combine_results([a, b])
    with pytest.raises(ResultsError, match="twice"):
        combine_results([a, a])
