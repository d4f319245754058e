"""AngleAccumulator against a brute-force pair loop, shards, persistence and devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.attention.brute import brute_force
from tests.models import zoo
from vitprobe._jit import jit_enabled
from vitprobe.attention import AngleAccumulator
from vitprobe.errors import ResultsError, VitprobeError

SUM_KEYS = ("attn_hist", "sum_theta", "sum_theta2", "sum_cos", "sum_cos2", "sum_rowcos2",
            "sum_attn_theta", "sum_logit", "sum_logit2", "sum_dev2", "sum_logit_cos",
            "sum_dev_cos")


ATTENTION = ("blocks.*.attn.scores", "blocks.*.attn.pattern")


def record(model, pixels, sites, batch=2):
    """Batches of recorded sites plus the recorder's own logits and attention."""
    return [model.run_with_cache(pixels[i:i + batch], [*sites, *ATTENTION])[1]
            for i in range(0, len(pixels), batch)]


def stream(acc, caches, *, recorded_attention=False):
    """Calibrate and stream; by default the accumulator forms attention from q and k."""
    if not recorded_attention:
        caches = [{k: v for k, v in c.items() if "attn.scores" not in k
                   and "attn.pattern" not in k} for c in caches]
    if acc.needs_calibration and not acc.calibrated:
        for c in caches:
            acc.calibrate(c)
        acc.end_calibration()
    for c in caches:
        acc.update(c)
    return acc


@pytest.fixture(scope="module")
def vit():
    return zoo.make("timm-vit")


@pytest.mark.parametrize(
    ("name", "kwargs", "recorded"),
    [
        ("timm-vit", {}, False),
        ("hf-dinov2-reg4", {"include_prefix": True}, False),  # 5 prefix tokens paired too
        ("torchvision-vit", {"embedding": "resid_pre", "bins": 36}, False),
        ("hf-clip", {"variants": ["centered"]}, True),  # recorded scores and pattern
        ("timm-deit-distilled", {"variants": ["raw"]}, False),
    ],
)
def test_streamed_equals_brute_force(name, kwargs, recorded):
    model = zoo.make(name)
    acc = AngleAccumulator.from_model(model, **kwargs)
    caches = record(model, zoo.pixels(model, 5, seed=3), acc.sites)  # batches 2, 2, 1
    stream(acc, caches, recorded_attention=recorded)
    ref, direct, means = brute_force(caches, list(acc.layers), start=acc.start, bins=acc.bins,
                                     embedding=acc.embedding, variants=acc.variants)
    got = acc.sums()
    np.testing.assert_array_equal(got["count"], ref["count"])
    for k in SUM_KEYS:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6 * np.abs(ref[k]).max(),
                                   err_msg=k)
    if acc.needs_calibration:
        np.testing.assert_allclose(acc.mean_token.numpy(), means, rtol=1e-6, atol=1e-9)

    # the Dataset's summaries against their definitions computed on the pair lists
    ds = acc.result()
    for (layer, variant), d in direct.items():
        sub = ds.sel(layer=layer, variant=variant)
        np.testing.assert_allclose(sub["mean_angle_baseline"], d["theta"].mean(), rtol=1e-6)
        w = d["a"]  # (pairs, H)
        np.testing.assert_allclose(sub["mean_angle_attention"],
                                   (w * d["theta"][:, None]).sum(0) / w.sum(0), rtol=1e-6)
        above = d["theta"] >= 90
        np.testing.assert_allclose(sub["share_attention_above_90"],
                                   w[above].sum(0) / w.sum(0), rtol=1e-6, atol=1e-9)
        for h in range(model.n_heads):
            r = np.corrcoef(d["x"][:, h], d["y"])[0, 1]
            rq = np.corrcoef(d["dx"][:, h], d["dy"])[0, 1]
            assert abs(float(sub["logit_cos_correlation"][h]) - r) < 1e-6
            assert abs(float(sub["logit_cos_correlation_within_query"][h]) - rq) < 1e-6
        hist = sub["attention_hist"].sum("angle_bin")
        np.testing.assert_allclose(hist, w.sum(0), rtol=1e-6)
    n_layers, n_variants = len(acc.layers), len(acc.variants)
    assert int(ds["baseline_hist"].sum()) == ds.attrs["n_pairs"] * n_variants * n_layers


def test_float64_precision_matches_brute_force_tightly(vit):
    acc = AngleAccumulator.from_model(vit, precision="float64")
    caches = record(vit, zoo.pixels(vit, 3, seed=5), acc.sites)
    # the recorder's float32 attention as input (from q and k it would be formed in float64)
    stream(acc, caches, recorded_attention=True)
    ref, _, _ = brute_force(caches, list(acc.layers), start=acc.start, bins=acc.bins)
    got = acc.sums()
    np.testing.assert_array_equal(got["count"], ref["count"])
    for k in SUM_KEYS:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-11, atol=1e-11, err_msg=k)


def test_merge_of_shards_equals_one_pass(vit):
    pixels = zoo.pixels(vit, 6, seed=7)
    full = AngleAccumulator.from_model(vit, layers=[1])
    caches = record(vit, pixels, full.sites)
    stream(full, caches)
    mean = full.mean_token
    a, b = (AngleAccumulator.from_model(vit, layers=[1]) for _ in range(2))
    for shard, part in ((a, caches[:1]), (b, caches[1:])):
        shard.set_mean_token(mean)
        stream(shard, part)  # attention formed from q and k, as in the one pass
    a.merge(b)
    assert a.n_images == full.n_images == 6
    for k, v in full.sums().items():
        np.testing.assert_allclose(a.sums()[k], v, rtol=1e-13, atol=1e-13, err_msg=k)
    ds_a, ds_f = a.result(), full.result()
    # a difference of two means (degrees): sums agree to 1e-13, the difference to 1e-10 deg
    np.testing.assert_allclose(ds_a["angle_shift"], ds_f["angle_shift"], rtol=0, atol=1e-10)


def test_merge_refuses_other_mean_or_config(vit):
    a = AngleAccumulator.from_model(vit)
    b = AngleAccumulator.from_model(vit)
    a.set_mean_token(np.zeros((vit.n_layers, vit.d_model)))
    b.set_mean_token(np.ones((vit.n_layers, vit.d_model)))
    with pytest.raises(ResultsError, match="mean token"):
        a.merge(b)
    with pytest.raises(ResultsError, match="configuration"):
        a.merge(AngleAccumulator.from_model(vit, bins=30))


def test_save_load_round_trip(vit, tmp_path):
    acc = AngleAccumulator.from_model(vit)
    stream(acc, record(vit, zoo.pixels(vit, 4, seed=2), acc.sites))
    acc.save_state(tmp_path / "angles.npz")
    back = AngleAccumulator.from_model(vit)
    back.load_state(tmp_path / "angles.npz")
    assert back.n_images == acc.n_images and back.calibrated
    for k, v in acc.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    # a loaded state keeps streaming: one more batch gives the same as never saving
    extra = record(vit, zoo.pixels(vit, 2, seed=9), acc.sites)[0]
    acc.update(extra)
    back.update(extra)
    for k, v in acc.sums().items():
        np.testing.assert_array_equal(back.sums()[k], v, err_msg=k)
    with pytest.raises(ResultsError, match="shape"):
        AngleAccumulator.from_model(vit, bins=30).load_state(tmp_path / "angles.npz")


def test_dataset_round_trips_through_netcdf(vit, tmp_path):
    from vitprobe.attention import load_angles, save_angles

    acc = AngleAccumulator.from_model(vit, variants=["raw"])
    assert not acc.needs_calibration
    stream(acc, record(vit, zoo.pixels(vit, 2), acc.sites))
    ds = acc.result()
    back = load_angles(save_angles(ds, tmp_path / "angles.nc"))
    for name in ds.data_vars:
        np.testing.assert_array_equal(back[name].values, ds[name].values)
        assert back[name].attrs["units"] and back[name].attrs["long_name"]
    assert back.attrs["embedding"] == "ln1" and back.attrs["n_images"] == 2
    np.testing.assert_array_equal(back["angle"].values, np.arange(1, 180, 2))


def test_errors_are_explicit(vit):
    acc = AngleAccumulator.from_model(vit)
    caches = record(vit, zoo.pixels(vit, 2), acc.sites)
    with pytest.raises(RuntimeError, match="calibrat"):
        acc.update(caches[0])
    with pytest.raises(VitprobeError, match="even"):
        AngleAccumulator.from_model(vit, bins=45)
    with pytest.raises(VitprobeError, match="embedding"):
        AngleAccumulator.from_model(vit, embedding="resid_post")
    other = zoo.make("timm-dinov2-reg4")
    _, c = other.run_with_cache(zoo.pixels(other, 1), "blocks.0.*")
    acc = AngleAccumulator.from_model(vit, layers=[0], variants=["raw"])
    with pytest.raises(VitprobeError, match="expected"):
        acc.update(c)


def test_pair_set_excludes_prefix_and_diagonal(vit):
    acc = AngleAccumulator.from_model(vit, variants=["raw"])
    stream(acc, record(vit, zoo.pixels(vit, 2), acc.sites))
    n_sel = vit.n_tokens - vit.n_prefix
    assert acc.sums()["count"].sum(-1).tolist() == [[2 * n_sel * (n_sel - 1)]] * vit.n_layers
    ds = acc.result()
    # every query holds one unit of attention: the pairs get less (self and class token)
    share = ds["pair_attention_share"].values
    assert np.all(share > 0) and np.all(share < 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    model = zoo.make("hf-dinov2-reg4")
    pixels = zoo.pixels(model, 4, seed=4)
    cpu = AngleAccumulator.from_model(model)
    caches = record(model, pixels, cpu.sites)
    stream(cpu, caches)
    gpu = AngleAccumulator.from_model(model, device="cuda")
    stream(gpu, [{k: v.cuda() for k, v in c.items()} for c in caches])
    assert gpu._state["count"].is_cuda
    # the same pairs; the GPU centres the Gram directly (the CPU by a rank-two
    # correction), so a pair on a bin edge may move to the neighbouring bin
    count_gpu, count_cpu = gpu.sums()["count"], cpu.sums()["count"]
    np.testing.assert_array_equal(count_gpu.sum(-1), count_cpu.sum(-1))
    assert np.abs(count_gpu - count_cpu).sum() <= 1e-3 * count_cpu.sum()
    for k in SUM_KEYS:
        np.testing.assert_allclose(gpu.sums()[k], cpu.sums()[k], rtol=1e-5, atol=1e-6,
                                   err_msg=k)
    # and the model itself on the GPU, streamed
    model.to("cuda")
    dev = AngleAccumulator.from_model(model)
    batches = [pixels[:2].cuda(), pixels[2:].cuda()]
    for _, c in model.stream(batches, dev.calibration_sites):
        dev.calibrate(c)
    dev.end_calibration()
    model.stream(batches, dev.sites, consumer=lambda b, c: dev.update(c))
    np.testing.assert_allclose(dev.result()["angle_shift"], cpu.result()["angle_shift"],
                               atol=1e-4)


@pytest.mark.skipif(not jit_enabled(), reason="numba not installed")
@pytest.mark.parametrize("kwargs", [{}, {"include_prefix": True, "variants": ["raw"]}])
def test_compiled_path_equals_torch_reference(vit, monkeypatch, kwargs):
    caches = record(vit, zoo.pixels(vit, 5, seed=11), AngleAccumulator.from_model(vit).sites)
    sums = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("VITPROBE_JIT", mode)
        acc = AngleAccumulator.from_model(vit, **kwargs)
        acc.chunk_images = 1  # several steps per thread and batch
        sums[mode] = stream(acc, caches).sums()
    np.testing.assert_array_equal(sums["1"]["count"], sums["0"]["count"])
    for k in SUM_KEYS:
        np.testing.assert_allclose(sums["1"][k], sums["0"][k], rtol=1e-6,
                                   atol=1e-6 * np.abs(sums["0"][k]).max(), err_msg=k)


@pytest.mark.parametrize("site", ["ln1", "attn.k"])
def test_nonfinite_inputs_are_refused_with_the_site(vit, site):
    acc = AngleAccumulator.from_model(vit, variants=["raw"])
    cache = record(vit, zoo.pixels(vit, 3, seed=2), acc.sites, batch=3)[0]
    cache = {k: v.clone() for k, v in cache.items() if "attn.scores" not in k
             and "attn.pattern" not in k}
    cache[f"blocks.1.{site}"][2, 0, 1] = float("nan")
    with pytest.raises(VitprobeError, match=rf"blocks\.1\.{site}.*image\(s\) \[2\]"):
        acc.update(cache)
    assert acc.n_images == 0 and not acc.sums()["count"].any()  # nothing half-added


def test_accelerator_path_stacks_layers_in_steps_without_changing_the_sums(monkeypatch):
    """The accelerator path (here on CPU tensors) stacks layers along the batch, as many
    per step as ``device_step_bytes`` allows: one layer per step, two then one, all three at
    once, each equal to the CPU reference's layer-by-layer sums."""
    import timm

    import vitprobe

    torch.manual_seed(0)
    model = vitprobe.models.wrap(timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                                   img_size=64, depth=3).eval(), spec="t3")
    caches = record(model, zoo.pixels(model, 5, seed=13), AngleAccumulator.from_model(model).sites)
    monkeypatch.setenv("VITPROBE_JIT", "0")
    ref = stream(AngleAccumulator.from_model(model), caches).sums()
    probe = AngleAccumulator.from_model(model)
    per_layer = 2 * model.n_tokens**2 * (4 * (3 * model.n_heads + 3 * 2) + 8 * 2)
    for step_bytes, steps in ((1, 1), (2 * per_layer, 2), (2**40, 3)):
        probe.device_step_bytes = step_bytes
        assert probe.layers_per_step(2) == steps
        acc = AngleAccumulator.from_model(model)
        acc.device_path_on_cpu = True
        acc.device_step_bytes = step_bytes
        got = stream(acc, caches).sums()
        np.testing.assert_array_equal(got["count"], ref["count"])
        for k in SUM_KEYS:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-6,
                                       atol=1e-6 * np.abs(ref[k]).max(), err_msg=k)
