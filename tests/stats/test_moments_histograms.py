from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from vitprobe.stats import NeuronHistograms, NeuronMoments

from .conftest import PlantedStream


def _all_values(batches, layout, group):
    t = torch.cat([b[f"blocks.{group[0]}.{group[1]}.out"] for b in batches]).double()
    return t[:, torch.as_tensor(layout.token_index)].numpy()  # (N, P, C)


def test_moments_match_scipy_and_merge(small_layout) -> None:
    stream = PlantedStream(small_layout, seed=1, scale=3.0)
    batches = [stream.batch(b) for b in (17, 40, 1, 33)]
    # a large offset: raw power sums would lose all precision here
    for b in batches:
        for k in b:
            b[k] = b[k].double() + 1e4
    one = NeuronMoments(small_layout)
    for b in batches:
        one.update(b)
    shard_a, shard_b = NeuronMoments(small_layout), NeuronMoments(small_layout)
    for b in batches[:2]:
        shard_a.update(b)
    for b in batches[2:]:
        shard_b.update(b)
    merged = shard_a.merge(shard_b)
    s1, s2 = one.state_dict(), merged.state_dict()
    assert int(s1["n"]) == int(s2["n"]) == 91
    for k in ("mean", "m2", "m3", "m4"):
        np.testing.assert_allclose(s2[k], s1[k], rtol=1e-10, atol=1e-10 * np.abs(s1[k]).max())
    v = _all_values(batches, small_layout, (1, "mlp"))
    ds = one.result()
    sel = ds.sel(layer=1, sublayer="mlp")
    np.testing.assert_allclose(sel["mean"].values, v.mean(0).T, rtol=1e-12)
    np.testing.assert_allclose(sel["variance"].values, v.var(0, ddof=1).T, rtol=1e-9)
    np.testing.assert_allclose(sel["skewness"].values, scipy.stats.skew(v, axis=0).T, rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(sel["excess_kurtosis"].values, scipy.stats.kurtosis(v, axis=0).T,
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sel["minimum"].values, v.min(0).T)
    assert set(ds.dims) == {"layer", "sublayer", "channel", "position"}
    assert ds.excess_kurtosis.attrs["units"] == "1"


def test_float32_input_with_offset(small_layout) -> None:
    """float32 activations far from zero (mean 300, sd 0.5) keep full precision."""
    stream = PlantedStream(small_layout, seed=21)
    batches = [stream.batch(32) for _ in range(4)]
    for b in batches:
        for k in b:
            b[k] = (b[k].double() * 0.5 + 300.0).float()
    acc = NeuronMoments(small_layout)
    for b in batches:
        acc.update(b)
    v = _all_values(batches, small_layout, (0, "attn"))
    sel = acc.result().sel(layer=0, sublayer="attn")
    np.testing.assert_allclose(sel["excess_kurtosis"].values, scipy.stats.kurtosis(v, axis=0).T,
                               rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(sel["variance"].values, v.var(0, ddof=1).T, rtol=1e-10)


def test_moments_state_roundtrip_and_torch_path(small_layout, tmp_path) -> None:
    stream = PlantedStream(small_layout, seed=2)
    batches = [stream.batch(16) for _ in range(3)]
    acc = NeuronMoments(small_layout)
    for b in batches:
        acc.update(b)
    acc.save_state(tmp_path / "m.npz")
    back = NeuronMoments(small_layout)
    back.load_state(tmp_path / "m.npz")
    for k, v in acc.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    # the accelerator (torch) formulas give the same moments
    from vitprobe.stats.moments import batch_moments, combine_moments

    x = batches[0]["blocks.0.attn.out"].double()
    n, m, m2, m3, m4 = batch_moments(x)
    xt = x.clone()
    d = xt - xt.mean(0)
    np.testing.assert_allclose(m2.numpy(), (d**2).sum(0).numpy(), rtol=1e-12)
    c = combine_moments((n, m, m2, m3, m4), (n, m, m2, m3, m4))
    assert c[0] == 2 * n
    np.testing.assert_allclose(c[2].numpy(), 2 * m2.numpy(), rtol=1e-12)


def test_moments_normality(small_layout) -> None:
    acc = NeuronMoments(small_layout)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = torch.randn(100, 17, 6, generator=gen)
        t[..., 0] = torch.distributions.StudentT(3.0).sample((100, 17))  # heavy tails
        acc.update({f"blocks.{i}.{s}.out": t for i in range(2) for s in ("attn", "mlp")})
    ds = acc.result()
    k = ds.excess_kurtosis.sel(layer=0, sublayer="attn")
    assert float(k.sel(channel=0).median()) > 1.0
    assert float(abs(k.sel(channel=slice(1, None))).median()) < 0.3
    p = ds.normality_pvalue.sel(layer=0, sublayer="attn")
    assert float(p.sel(channel=0).max()) < 1e-3
    assert float(p.sel(channel=slice(1, None)).median()) > 0.05


def test_histograms_counts_merge_and_save(small_layout, tmp_path) -> None:
    stream = PlantedStream(small_layout, seed=3)
    calib = [stream.batch(64) for _ in range(2)]
    data = [stream.batch(32) for _ in range(4)]

    def make() -> NeuronHistograms:
        h = NeuronHistograms(small_layout, n_bins=40, z_range=5.0)
        for b in calib:
            h.calibrate(b)
        h.end_calibration()
        return h

    one, a, b = make(), make(), make()
    for d in data:
        one.update(d)
    for d in data[:1]:
        a.update(d)
    for d in data[1:]:
        b.update(d)
    a.merge(b)
    for k, v in one.state_dict().items():
        np.testing.assert_array_equal(a.state_dict()[k], v)
    ds = one.result()
    p, n = small_layout.n_positions, 128
    assert int(ds.histogram.sel(layer=0, sublayer="attn", channel=2).sum()) == p * n
    assert int(ds.histogram_centre.sel(layer=0, sublayer="attn", channel=2).sum()) == n
    # standard normal data: about 68% within one calibration standard deviation
    h = ds.histogram.sel(layer=1, sublayer="mlp").sum("channel")
    inner = h.where((ds.bin_lower >= -1) & (ds.bin_upper <= 1)).sum()
    assert 0.6 < float(inner / h.sum()) < 0.76
    one.save_state(tmp_path / "h.npz")
    back = NeuronHistograms(small_layout, n_bins=40, z_range=5.0)
    back.load_state(tmp_path / "h.npz")
    for k, v in one.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v)
    with pytest.raises(RuntimeError):
        NeuronHistograms(small_layout).update(data[0])


def test_histograms_numpy_and_torch_paths_agree(small_layout) -> None:
    stream = PlantedStream(small_layout, seed=4)
    calib = stream.batch(64)
    data = stream.batch(32)
    fast = NeuronHistograms(small_layout, n_bins=30, z_range=4.0)
    slow = NeuronHistograms(small_layout, n_bins=30, z_range=4.0, per_position=True)
    for h in (fast, slow):
        h.calibrate(calib)
        h.end_calibration()
        h.update(data)
    d1, d2 = fast.result(), slow.result()
    np.testing.assert_array_equal(d1.histogram.values, d2.histogram.values)
    np.testing.assert_array_equal(d2.histogram_neuron.sum("position").values,
                                  d2.histogram.values)


@pytest.mark.parametrize(("jit", "step_bytes"), [("1", 2**40), ("0", 2**40), ("1", 1)])
def test_histogram_paths_bin_values_on_the_edges_alike(small_layout, monkeypatch, jit,
                                                       step_bytes) -> None:
    """Every activation within a few float32 steps of a bin edge (and NaN, which counts
    as underflow) lands in the same bin on the CPU path (compiled kernel or its numpy
    reference) and on the accelerator path (torch ops, here on CPU tensors; all groups
    stacked in one step, or one group per step)."""
    monkeypatch.setenv("VITPROBE_JIT", jit)
    stream = PlantedStream(small_layout, seed=5)
    calib, data = stream.batch(64), stream.batch(24)
    cpu = NeuronHistograms(small_layout, n_bins=30, z_range=4.0)
    dev = NeuronHistograms(small_layout, n_bins=30, z_range=4.0)
    dev.device_path_on_cpu = True
    dev.device_step_bytes = step_bytes
    for h in (cpu, dev):
        h.calibrate(calib)
        h.end_calibration()
    rng = np.random.default_rng(0)
    tokens = torch.as_tensor(small_layout.token_index)
    for gi, (layer, sub) in enumerate(cpu.groups):
        mu, inv_sigma = cpu.mu[gi].double().numpy(), cpu.inv_sigma[gi].double().numpy()
        edge = rng.integers(0, 31, size=(24, *mu.shape))  # z = -4 + 8 k / 30
        x = (mu + (-4.0 + 8.0 * edge / 30) / inv_sigma).astype(np.float32)
        for _ in range(3):  # up to three float32 steps either side of the edge
            step = rng.integers(-1, 2, size=x.shape)
            toward = np.where(step > 0, np.float32(np.inf), np.float32(-np.inf))
            x = np.where(step == 0, x, np.nextafter(x, toward))
        if jit == "1":  # (the numpy reference does not bin NaN)
            x[0, 0, :2] = np.nan
        data[f"blocks.{layer}.{sub}.out"][:, tokens] = torch.from_numpy(x)
    for h in (cpu, dev):
        h.update(data)
    for name, value in cpu.state_dict().items():
        np.testing.assert_array_equal(dev.state_dict()[name], value, err_msg=name)


@pytest.mark.parametrize("step_bytes", [None, 1])
def test_moments_accelerator_path_equals_the_cpu_path(small_layout, step_bytes) -> None:
    """The accelerator path (torch ops on CPU tensors; all groups in one step, or one
    group per step) holds the CPU path's moments, minima and maxima."""
    stream = PlantedStream(small_layout, seed=6, scale=2.0)
    batches = [stream.batch(n) for n in (9, 16, 1)]
    cpu, dev = NeuronMoments(small_layout), NeuronMoments(small_layout)
    dev.device_path_on_cpu = True
    dev.device_step_bytes = step_bytes
    for b in batches:
        cpu.update(b)
        dev.update(b)
    ref, got = cpu.state_dict(), dev.state_dict()
    assert ref.keys() == got.keys()
    for k, v in ref.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
