"""BowtieCounts against a brute-force histogram, merges, state, files and the pair choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.errors import ResultsError
from vitprobe.netcdf import load_dataset, save_dataset
from vitprobe.stats.bowtie import BowtieCounts, position_pairs
from vitprobe.stats.joint import IMAGE_INDEX
from vitprobe.stats.layout import NeuronLayout


def scale_mixture_batch(layout: NeuronLayout, b: int, gen: torch.Generator,
                        shared: tuple[int, ...] = (0, 2, 4)) -> dict[str, torch.Tensor]:
    """Every channel is Gaussian noise per position; the channels in ``shared`` are
    multiplied by one random scale per image and channel (a bowtie between any two of
    its positions). Prefix tokens are noise too."""
    n_tok = int(layout.token_index.max()) + 1
    out = {}
    for layer, s in layout.groups():
        t = torch.randn(b, n_tok, layout.d_model, generator=gen)
        scale = torch.ones(b, 1, layout.d_model)
        scale[:, :, list(shared)] = torch.exp(torch.randn(b, 1, len(shared), generator=gen))
        t = t * scale + 0.3 * (layer + 1)
        out[f"blocks.{layer}.{s}.out"] = t
    return out


def calibrated(layout: NeuronLayout, seed: int = 0, **kw) -> BowtieCounts:
    gen = torch.Generator().manual_seed(seed)
    acc = BowtieCounts(layout, calibration_images=48, **kw)
    acc.calibrate(scale_mixture_batch(layout, 30, gen))
    acc.calibrate(scale_mixture_batch(layout, 30, gen))  # only 18 of these are kept
    acc.end_calibration()
    return acc


def test_calibrated_ranges_are_each_channels_mean_and_quantile() -> None:
    """Every chosen channel's bin grid is centred on its mean over the calibration
    reservoir (the first 48 images; the centre, its distance-1 neighbours and 16 evenly
    spaced positions) and spans the range quantile of its absolute deviation."""
    lay = NeuronLayout(n_layers=2, d_model=6, grid=(5, 5), n_prefix=1)
    gen = torch.Generator().manual_seed(3)
    batches = [scale_mixture_batch(lay, 30, gen) for _ in range(2)]
    acc = BowtieCounts(lay, calibration_images=48, pairs=[(0, 0), (1, 2), (4, 3)])
    for batch in batches:
        acc.calibrate(batch)
    acc.end_calibration()
    spread = np.linspace(0, lay.n_positions - 1, 16).round().astype(np.int64)
    positions = np.unique(np.concatenate([[lay.centre_position],
                                          np.flatnonzero(lay.distance_bin == 1), spread]))
    tokens = lay.token_index[positions]
    for gi, (layer, sub) in enumerate(acc.groups):
        x = torch.cat([b[f"blocks.{layer}.{sub}.out"] for b in batches])[:48]
        for k, pair in enumerate(acc.channel[gi]):
            for side, ch in enumerate(pair):
                v = x[:, tokens, ch].double().numpy().ravel()
                mean = v.mean()
                half = np.quantile(np.abs(v - mean), acc.range_quantile)
                assert acc.centre[gi, k, side] == pytest.approx(mean, rel=1e-6, abs=1e-6)
                assert acc.half_range[gi, k, side] == pytest.approx(half, rel=1e-6)


def brute_force(acc: BowtieCounts, batches: list[dict], gi: int, pair: int, distance: int,
                pooling: str) -> np.ndarray:
    """The histogram by enumeration: every image, every ordered position pair."""
    assert acc.channel is not None
    lay = acc.layout
    layer, sub = acc.groups[gi]
    b = acc.bins
    out = np.zeros((b, b), np.int64)
    cx, cy = acc.channel[gi, pair]
    lo = acc.centre[gi, pair] - acc.half_range[gi, pair]
    scale = np.float32(b) / (np.float32(2) * acc.half_range[gi, pair])
    rows, cols = lay.rows, lay.cols
    for cache in batches:
        v = cache[f"blocks.{layer}.{sub}.out"].numpy()[:, lay.token_index]  # (n, P, C)
        for img in v:
            ix = np.clip(np.floor((img[:, cx] - lo[0]) * scale[0]), 0, b - 1).astype(int)
            iy = np.clip(np.floor((img[:, cy] - lo[1]) * scale[1]), 0, b - 1).astype(int)
            ps = [lay.centre_position] if pooling == "central" else range(lay.n_positions)
            for p in ps:
                for q in range(lay.n_positions):
                    if pooling == "translation" and cx == cy and p == q:
                        continue  # a neuron against itself: not counted
                    d = np.hypot(rows[p] - rows[q], cols[p] - cols[q])
                    if int(np.rint(d)) == distance:
                        out[ix[p], iy[q]] += 1
    return out


@pytest.mark.parametrize(("jit", "device_path", "step_bytes"),
                         [("1", False, None), ("0", False, None), ("1", True, None),
                          ("1", True, 1)])
def test_counts_equal_brute_force(jit: str, device_path: bool, step_bytes: int | None,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled kernel, the torch reference and the accelerator path (on CPU
    tensors; all groups in one step, or one group per step) against enumeration."""
    monkeypatch.setenv("VITPROBE_JIT", jit)
    lay = NeuronLayout(n_layers=2, d_model=7, grid=(4, 5), n_prefix=1)
    acc = calibrated(lay, pooled_distances=(0, 1, 2, 4), bins=9)
    acc.device_path_on_cpu = device_path
    acc.device_step_bytes = step_bytes
    assert acc.pair_kind == ["highest", "median", "lowest", "random", "random", "cross",
                             "cross"]
    gen = torch.Generator().manual_seed(3)
    batches = [scale_mixture_batch(lay, n, gen) for n in (5, 1, 7)]
    for cache in batches:
        acc.update(cache)
    assert acc.n == 13
    for gi in range(len(acc.groups)):
        for pair in (0, 4, 5):
            for d in (0, 1, 2, 4):
                np.testing.assert_array_equal(
                    acc.pair_counts(*acc.groups[gi], pair, d),
                    brute_force(acc, batches, gi, pair, d, "translation"))
            for d in range(int(lay.distance_bin.max()) + 1):
                np.testing.assert_array_equal(
                    acc.pair_counts(*acc.groups[gi], pair, d, pooling="central"),
                    brute_force(acc, batches, gi, pair, d, "central"))
    ds = acc.result()
    c = ds.counts.sel(layer=1, sublayer="mlp", pair=5, pooling="translation", distance=2)
    np.testing.assert_array_equal(c.values, brute_force(acc, batches, 3, 5, 2, "translation"))
    # distances that were not pooled hold no counts; the central counts reach the corner
    assert int(ds.counts.sel(pooling="translation", distance=3).sum()) == 0
    assert int(ds.n_samples.sel(pooling="central", distance=3)[0, 0, 0]) > 0


def test_position_pairs_cover_every_pair_once() -> None:
    lay = NeuronLayout(n_layers=1, d_model=2, grid=(6, 6))
    pp, qq, slot, n_slots = position_pairs(lay, list(range(0, 8)))
    pooled = slot < 8
    # 0..7 covers every ordered pair of a 6 x 6 grid (max distance 7.07 rounds to 7)
    assert pooled.sum() == 36 * 36
    assert len({(int(p), int(q)) for p, q in zip(pp[pooled], qq[pooled], strict=True)}) == 36 * 36
    central = ~pooled
    assert np.all(pp[central] == lay.centre_position) and central.sum() == 36
    assert n_slots == 8 + int(lay.distance_bin.max()) + 1


def test_out_of_range_values_go_to_the_edge_bins() -> None:
    lay = NeuronLayout(n_layers=1, d_model=6, grid=(3, 3), sublayers=("attn",))
    acc = calibrated(lay, pairs=[(0, 0), (1, 2)], bins=11)
    cache = scale_mixture_batch(lay, 2, torch.Generator().manual_seed(1))
    t = cache["blocks.0.attn.out"]
    t[:, :, 0] = 1e6
    t[:, :, 1] = -1e6
    acc.update(cache)
    c = acc.pair_counts(0, "attn", 0, 1)
    assert c[-1, -1] == c.sum() > 0
    c = acc.pair_counts(0, "attn", 1, 1)
    assert c[0].sum() == c.sum() > 0
    edge = acc.result().edge_fraction.sel(layer=0, sublayer="attn", pooling="translation")
    assert float(edge.sel(pair=0, distance=1)) == 1.0


def test_merge_equals_one_pass_and_state_round_trip(tmp_path) -> None:
    lay = NeuronLayout(n_layers=1, d_model=6, grid=(4, 4), n_prefix=1)
    gen = torch.Generator().manual_seed(5)
    batches = [scale_mixture_batch(lay, n, gen) for n in (6, 3, 9, 4)]
    start = 0
    for cache in batches:  # global image indices: the folds follow them, not the shard
        cache[IMAGE_INDEX] = torch.arange(start, start + cache["blocks.0.attn.out"].shape[0])
        start += cache["blocks.0.attn.out"].shape[0]
    one = calibrated(lay)
    empty = one.state_dict()
    for cache in batches:
        one.update(cache)
    a, b = calibrated(lay), calibrated(lay)
    b.load_state_dict(empty)
    for cache in batches[::2]:
        a.update(cache)
    for cache in batches[1::2]:
        b.update(cache)
    a.merge(b)
    sa, so = a.state_dict(), one.state_dict()
    assert sa.keys() == so.keys()
    for key in so:
        np.testing.assert_array_equal(sa[key], so[key], err_msg=key)
    # save / load the state, and the result through the netCDF files
    one.save_state(tmp_path / "bowtie.npz")
    back = BowtieCounts(lay, calibration_images=48)
    back.load_state(tmp_path / "bowtie.npz")
    for key, value in back.state_dict().items():
        np.testing.assert_array_equal(value, so[key], err_msg=key)
    ds = one.result()
    save_dataset(ds, tmp_path / "bowtie.nc")
    loaded = load_dataset(tmp_path / "bowtie.nc")
    np.testing.assert_array_equal(loaded.counts.values, ds.counts.values)
    np.testing.assert_allclose(loaded.bowtie_index.values, ds.bowtie_index.values)
    assert list(loaded.pair_kind.values) == list(ds.pair_kind.values)
    # an uncalibrated state (mid-calibration checkpoint) round-trips too
    fresh = BowtieCounts(lay, calibration_images=48)
    fresh.calibrate(batches[0])
    state = fresh.state_dict()
    again = BowtieCounts(lay, calibration_images=48)
    again.load_state_dict(state)
    again.calibrate(batches[1])
    again.end_calibration()
    assert again.calibration_n == 9


def test_merge_refuses_different_calibrations() -> None:
    lay = NeuronLayout(n_layers=1, d_model=6, grid=(3, 3))
    a, b = calibrated(lay, seed=0), calibrated(lay, seed=1)
    with pytest.raises(ResultsError, match="calibrated differently"):
        a.merge(b)
    with pytest.raises(RuntimeError, match="calibrate"):
        BowtieCounts(lay).update({})


def test_channel_choice_follows_the_calibration_mi() -> None:
    """Channel 3 has a strong shared latent across positions, channel 5 none: they are
    the highest and the lowest; the random and cross picks are seeded."""
    lay = NeuronLayout(n_layers=1, d_model=8, grid=(5, 5), sublayers=("mlp",))
    gen = torch.Generator().manual_seed(0)
    acc = BowtieCounts(lay, calibration_images=256, seed=7)
    twin = BowtieCounts(lay, calibration_images=256, seed=7)
    for _ in range(2):
        t = torch.randn(128, 25, 8, generator=gen)
        z = torch.randn(128, 1, 8, generator=gen)
        weight = torch.tensor([0.5, 0.4, 0.45, 0.95, 0.35, 0.0, 0.3, 0.42])
        t = weight * z + torch.sqrt(1 - weight**2) * t
        acc.calibrate({"blocks.0.mlp.out": t})
        twin.calibrate({"blocks.0.mlp.out": t})
    acc.end_calibration()
    twin.end_calibration()
    assert acc.channel[0, 0].tolist() == [3, 3]
    assert acc.channel[0, 2].tolist() == [5, 5]
    assert acc.ranking_mi[0].argmax() == 3
    np.testing.assert_array_equal(acc.channel, twin.channel)
    random = acc.channel[0, 3:5, 0]
    assert len(set(random.tolist()) | {3, 5, int(acc.channel[0, 1, 0])}) == 5
    cross = acc.channel[0, 5:]
    assert np.all(cross[:, 0] != cross[:, 1])


def test_planted_bowtie_through_the_accumulator() -> None:
    """Channel 0 shares one scale per image across positions (a bowtie between any two
    positions, no correlation); channel 1 is independent noise. The jackknife over image
    folds must cover 0 for the independent pair and exclude it for the bowtie, although
    the pooled position pairs of one image are far from independent."""
    lay = NeuronLayout(n_layers=1, d_model=4, grid=(6, 6), sublayers=("attn",))
    gen = torch.Generator().manual_seed(8)
    acc = BowtieCounts(lay, pairs=[(0, 0), (1, 1)], calibration_images=64)
    acc.calibrate(scale_mixture_batch(lay, 64, gen, shared=(0,)))
    acc.end_calibration()
    for _ in range(10):
        acc.update(scale_mixture_batch(lay, 40, gen, shared=(0,)))
    ds = acc.result().sel(layer=0, sublayer="attn", pooling="translation")
    for d in (1, 2, 4):
        one = ds.sel(distance=d)
        assert float(one.bowtie_index_lo.sel(pair=0)) > 0.1
        assert float(one.w_lo.sel(pair=0)) > 0.05
        assert float(one.correlation_lo.sel(pair=0)) < 0 < float(
            one.correlation_hi.sel(pair=0))
        for name in ("bowtie_index", "w", "correlation"):
            assert float(one[f"{name}_lo"].sel(pair=1)) < 0 < float(
                one[f"{name}_hi"].sel(pair=1)), (name, d)
