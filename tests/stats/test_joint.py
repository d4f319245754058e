"""JointCounts on synthetic caches with planted dependence (analytic MI per position)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.errors import ResultsError
from vitprobe.stats import JointCounts, NeuronLayout, open_results, save_results
from vitprobe.stats.results import combine_results

from .conftest import PlantedStream, gaussian_mi, planted_rho


def run(acc: JointCounts, stream: PlantedStream, calib: list[int], data: list[int]):
    for b in calib:
        acc.calibrate(stream.batch(b))
    acc.end_calibration()
    for b in data:
        acc.update(stream.batch(b))
    return acc


def test_planted_mi_recovered() -> None:
    lay = NeuronLayout(n_layers=1, d_model=4, grid=(5, 5), n_prefix=1)
    acc = JointCounts(lay, bins=32, calibration_images=1024, null_channels=2)
    run(acc, PlantedStream(lay, seed=0, decay=0.75), [512, 512], [2000] * 10)
    ds = acc.result()
    truth = gaussian_mi(planted_rho(lay, 0.75))
    est = ds.mi.sel(layer=0, sublayer="attn").values  # (channel, position)
    ok = np.arange(lay.n_positions) != lay.centre_position
    err = est[:, ok] - truth[ok]
    assert abs(err.mean()) < 0.01
    assert np.abs(err).max() < 0.05
    assert np.isnan(est[:, lay.centre_position]).all()
    # MI falls with distance; the null level sits at zero
    curve = ds.mi_vs_distance.sel(layer=0, sublayer="attn").values
    assert np.isnan(curve[0]) and np.all(np.diff(curve[1:]) < 0)
    assert abs(float(ds.mi_null_level.sel(layer=0, sublayer="attn"))) < 0.003
    assert float(ds.mi_vs_distance_stderr.max()) < 0.02
    assert ds.attrs["n_images"] == 20_000 and ds.attrs["bins"] == 32
    assert ds.mi.attrs["units"] == "nats"
    # pair access and the kept counts agree
    ch = int(ds.kept_channel.sel(layer=0, sublayer="attn")[0])
    pc = acc.pair_counts(0, "attn", ch, 3)
    np.testing.assert_array_equal(
        ds.joint_counts.sel(layer=0, sublayer="attn", kept=0, position=3).values, pc)
    assert pc.sum() == 20_000


def _state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_merge_equals_one_pass_and_null_within_batch(small_layout) -> None:
    kw = dict(bins=8, calibration_images=256, null_channels=3, cross_pairs_per_distance=2)
    calib = PlantedStream(small_layout, seed=5)
    c_batches = [calib.batch(128), calib.batch(128)]
    data = PlantedStream(small_layout, seed=6)
    batches = [data.batch(b) for b in (10, 6, 1, 13, 20)]

    def fresh() -> JointCounts:
        acc = JointCounts(small_layout, **kw)
        for b in c_batches:
            acc.calibrate(b)
        acc.end_calibration()
        return acc

    one = fresh()
    for b in batches:
        one.update(b)
    # null pairs stay inside each batch; a batch of one image has none
    assert one.n == 50 and one.n_null == 49
    # the documented layouts: null (C_null, B_x, P, B_y), cross (halves, K, B_x, B_y);
    # every null image adds one pair per (null channel, position)
    p, state = small_layout.n_positions, one.state_dict()
    assert state["null_0"].shape == (3, 8, p, 8)
    assert state["cross_0"].shape == (2, one.cross.shape[0], 8, 8)
    np.testing.assert_array_equal(state["null_0"].sum((1, 3)), np.full((3, p), 49))
    ds = one.result()
    assert ds["mi_null"].sizes["null_channel"] == 3
    assert ds["mi_null"].sizes["position"] == p
    # shards of even length: halves line up, so the merge is exact everywhere
    a, b = fresh(), fresh()
    for x in batches[:2]:
        a.update(x)
    for x in batches[2:]:
        b.update(x)
    _state_equal(a.merge(b).state_dict(), one.state_dict())
    # with global image indices the halves line up for any split of the batches
    starts = np.cumsum([0, 10, 6, 1, 13])
    indexed = [dict(x, image_index=torch.arange(s, s + x["blocks.0.attn.out"].shape[0]))
               for x, s in zip(batches, starts, strict=True)]
    c, d = fresh(), fresh()
    for x in indexed[:3]:  # 17 images: an odd shard
        c.update(x)
    for x in indexed[3:]:
        d.update(x)
    _state_equal(c.merge(d).state_dict(), one.state_dict())
    with pytest.raises(ValueError):
        c.merge(JointCounts(small_layout, **kw))  # not calibrated


def test_save_load_roundtrip(small_layout, tmp_path) -> None:
    acc = run(JointCounts(small_layout, bins=8, calibration_images=128),
              PlantedStream(small_layout, seed=7), [128], [30, 30])
    acc.save_state(tmp_path / "j.npz")
    back = JointCounts(small_layout, bins=8, calibration_images=128)
    back.load_state(tmp_path / "j.npz")
    _state_equal(acc.state_dict(), back.state_dict())
    # resuming continues exactly as an uninterrupted stream would
    s = PlantedStream(small_layout, seed=8)
    nxt = s.batch(9)
    acc.update(nxt)
    back.update(nxt)
    _state_equal(acc.state_dict(), back.state_dict())
    # mid-calibration state round-trips too
    mid = JointCounts(small_layout, bins=8, calibration_images=128)
    mid.calibrate(s.batch(20))
    mid2 = JointCounts(small_layout, bins=8, calibration_images=128)
    mid2.load_state_dict(mid.state_dict())
    rest = s.batch(108)
    mid.calibrate(rest)
    mid2.calibrate(rest)
    mid.end_calibration()
    mid2.end_calibration()
    np.testing.assert_array_equal(mid.state_dict()["edges"], mid2.state_dict()["edges"])


@pytest.mark.parametrize(("bins", "step_bytes"), [(8, None), (32, None), (8, 1)])
def test_torch_path_matches_numpy_path(small_layout, bins: int, step_bytes: int | None,
                                       ) -> None:
    """Neuron-major and streaming count layouts (8, 32 bins); the accelerator path with
    all groups in one step, or one group per step."""
    kw = dict(bins=bins, calibration_images=128, null_channels=2, cross_pairs_per_distance=1)
    s = PlantedStream(small_layout, seed=9)
    cal, batches = s.batch(128), [s.batch(16), s.batch(7)]
    a = JointCounts(small_layout, **kw)
    b = JointCounts(small_layout, count_dtype="int32", **kw)
    b.device_path_on_cpu = True  # the accelerator code path, on CPU tensors
    b.device_step_bytes = step_bytes
    for acc in (a, b):
        acc.calibrate(cal)
        acc.end_calibration()
        for x in batches:
            acc.update(x)
    _state_equal(a.state_dict(), b.state_dict())


def test_int16_promotion(small_layout) -> None:
    acc = run(JointCounts(small_layout, bins=4, calibration_images=64, null_channels=0),
              PlantedStream(small_layout, seed=10), [64], [4])
    assert acc.counts[0].dtype == torch.int16
    acc.n = 65_530  # pretend: the next batch would overflow a half
    acc.update(PlantedStream(small_layout, seed=11).batch(8))
    assert acc.counts[0].dtype == torch.int32
    assert int(acc.counts[0].sum()) == 12 * small_layout.n_positions * small_layout.d_model


def test_bfloat16_and_channel_subset(small_layout) -> None:
    acc = JointCounts(small_layout, bins=8, calibration_images=64, channels=[1, 4],
                      null_channels=None)
    run(acc, PlantedStream(small_layout, seed=12, dtype=torch.bfloat16), [64], [64])
    ds = acc.result(keep_channels=[4])
    assert list(ds.channel.values) == [1, 4]
    assert list(ds.null_channel.values) == [1, 4]
    assert int(ds.kept_channel.sel(layer=1, sublayer="mlp")[0]) == 4
    assert np.isfinite(ds.mi.sel(channel=4).values).sum() == 2 * 2 * 15


def test_dataset_save_open_and_combine(small_layout, tmp_path) -> None:
    s1, s2 = PlantedStream(small_layout, seed=13), PlantedStream(small_layout, seed=13)
    full = run(JointCounts(small_layout, bins=8, calibration_images=64),
               s1, [64], [40, 40]).result()
    passes = []
    for groups in ([(0, "attn"), (0, "mlp"), (1, "attn")], [(1, "mlp")]):
        acc = JointCounts(small_layout, bins=8, calibration_images=64, groups=groups)
        s = PlantedStream(small_layout, seed=13)
        passes.append(run(acc, s, [64], [40, 40]).result())
    del s2
    comb = combine_results(passes)
    for name in ("mi", "mi_vs_distance", "edges", "joint_counts", "kept_channel",
                 "mi_null_level"):
        np.testing.assert_array_equal(comb[name].values, full[name].values, err_msg=name)
        assert comb[name].dtype == full[name].dtype
    path = save_results(comb, tmp_path / "mi.nc")
    back = open_results(path)
    np.testing.assert_array_equal(back.mi.values, full.mi.values)
    np.testing.assert_array_equal(back.joint_counts.values, full.joint_counts.values)
    assert back.attrs["bins"] == 8 and back.layer.attrs["long_name"] == "layer (0-based)"
    with pytest.raises(ResultsError):
        combine_results([passes[0], passes[0]])
    with pytest.raises(ResultsError):
        open_results(tmp_path / "missing.nc")


def test_order_statistics_equal_a_full_sort_of_the_reservoir() -> None:
    """The calibration's edges, minimum and maximum are exact order statistics of the
    reservoir along the images, whatever the pieces' sizes and dtypes; ties and a NaN
    neuron (sorted last, as numpy does) included."""
    from vitprobe.stats.binning import edge_ranks
    from vitprobe.stats.joint import _order_statistics

    gen = torch.Generator().manual_seed(0)
    pieces = [torch.randn(b, 5, 7, generator=gen) for b in (32, 3, 29)]
    pieces[1] = pieces[1].round()  # ties
    pieces[2][4, 2, 3] = float("nan")
    pieces.append(torch.randn(8, 5, 7, generator=gen).to(torch.bfloat16))
    ranks = edge_ranks(72, 6)
    edges, lo, hi = _order_statistics(pieces, ranks)
    ref = np.sort(torch.cat([p.float() for p in pieces]).numpy(), axis=0)
    assert edges.shape == (5, 5, 7) and edges.dtype == torch.float32
    np.testing.assert_array_equal(edges.numpy(), ref[ranks])
    np.testing.assert_array_equal(lo.numpy(), ref[0])
    np.testing.assert_array_equal(hi.numpy(), ref[-1])
    assert torch.isnan(hi[2, 3]) and not torch.isnan(lo[2, 3])
