"""The accelerator path gives the CPU path's numbers: patterns, counts, a whole study.

Each check takes the device under test. Where the logic allows, it also runs with
``device="cpu"``, so CI (no GPU) exercises the same assertions:

* recorded attention patterns equal the library's own eager attention computed on
  the same device (CPU: the fused / SDPA path against eager);
* accumulator states on the device equal the CPU reference path (numba off,
  ``VITPROBE_JIT=0`` semantics): on CUDA the ``index_add_`` counting, on CPU the
  compiled kernels;
* the whole study on CUDA against the whole study on the CPU (two devices: CUDA only).

Run on a GPU machine with ``python -m pytest -m gpu tests/study/test_cuda.py``.
"""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch
import xarray as xr

from tests.models import zoo
from vitprobe.stats import JointCounts, NeuronLayout, NeuronMoments

needs_cuda = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
# eager and fused attention agree to float32 rounding on the CPU; CUDA's SDPA kernels
# round differently from its eager matmuls, and the difference grows through the layers
PATTERN_ATOL = {"cpu": 1e-5, "cuda": 1e-4}


def _eager_patterns(probed, x: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's attention pattern (batch, head, query, key) from the library's own eager
    attention, on a deep copy of the model (the probed model stays on its fused path)."""
    eager = copy.deepcopy(probed.model)
    if probed.arch.family == "timm":
        captured: list[torch.Tensor] = []
        for block in eager.blocks:
            block.attn.fused_attn = False
            block.attn.attn_drop.register_forward_hook(lambda m, a, out: captured.append(out))
        with torch.inference_mode():
            eager(x)
        return captured
    eager.set_attn_implementation("eager")
    with torch.inference_mode():
        return list(eager(pixel_values=x, output_attentions=True).attentions)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["timm-vit", "hf-dinov2"])
def test_recorded_patterns_equal_eager_attention_on_device(device: str, name: str) -> None:
    probed = zoo.make(name).to(device)
    x = zoo.pixels(probed, batch=4).to(device)
    expected = _eager_patterns(probed, x)
    _, cache = probed.run_with_cache(x, "blocks.*.attn.pattern")
    assert len(expected) == probed.n_layers
    for layer, ref in enumerate(expected):
        pattern = cache[f"blocks.{layer}.attn.pattern"]
        assert pattern.device.type == device and pattern.dtype == torch.float32
        assert pattern.shape == (4, probed.n_heads, probed.n_tokens, probed.n_tokens)
        torch.testing.assert_close(pattern, ref.float(), atol=PATTERN_ATOL[device], rtol=0)
        # a pattern is a distribution over keys, and not a uniform one (else equality
        # with eager would prove little)
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]))
        assert float(pattern.std(-1).mean()) > 1e-3


@pytest.mark.parametrize("name", ["timm-vit", "hf-dinov2"])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_cuda_patterns_and_activations_equal_cpu(device: str, name: str) -> None:
    cpu = zoo.make(name)
    gpu = zoo.make(name).to(device)
    x = zoo.pixels(cpu, batch=4)
    sites = ["blocks.*.attn.pattern", "blocks.*.mlp.out"]
    _, c_cpu = cpu.run_with_cache(x, sites)
    _, c_gpu = gpu.run_with_cache(x.to(device), sites)
    assert set(c_gpu) == set(c_cpu)
    for site, ref in c_cpu.items():
        assert c_gpu[site].device.type == device
        torch.testing.assert_close(c_gpu[site].cpu(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_bf16_autocast_records_float32_patterns(device: str) -> None:
    model = zoo.make("hf-dinov2").to(device)
    x = zoo.pixels(model, batch=4).to(device)
    batches = list(model.stream([x], "blocks.*.attn.pattern", autocast=torch.bfloat16))
    ((_, cache),) = batches
    _, ref = model.run_with_cache(x, "blocks.*.attn.pattern")
    for layer in range(model.n_layers):
        pattern = cache[f"blocks.{layer}.attn.pattern"]
        assert pattern.dtype == torch.float32 and pattern.device.type == device
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern[..., 0]))
        # bf16 q and k (8 bits of mantissa): close to the float32 pattern, not equal
        diff = float((pattern - ref[f"blocks.{layer}.attn.pattern"]).abs().max())
        assert 0 < diff < 0.05


def _planted_batches(layout: NeuronLayout, sizes: list[int], seed: int) -> list[dict]:
    """Activations with a shared component per (image, channel), so that the joint counts
    of the central neuron are far from independent; batch sizes differ on purpose (split
    halves, in-batch null pairing, a batch of one)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        batch = {}
        for s in layout.sublayers:
            for layer in range(layout.n_layers):
                shared = torch.randn(n, 1, layout.d_model, generator=g)
                tokens = layout.n_prefix + layout.n_positions
                noise = torch.randn(n, tokens, layout.d_model, generator=g)
                batch[f"blocks.{layer}.{s}.out"] = shared + 0.7 * noise
        out.append(batch)
    return out


def _accumulate(device: str, calibration: list[dict], data: list[dict]) -> dict:
    layout = NeuronLayout(n_layers=2, d_model=8, grid=(5, 5), n_prefix=1)
    joint = JointCounts(layout, bins=8, calibration_images=48, null_channels=3,
                        cross_pairs_per_distance=2, device=device)
    moments = NeuronMoments(layout, device=device)
    for batch in calibration:
        joint.calibrate({k: v.to(device) for k, v in batch.items()})
    joint.end_calibration()
    for batch in data:
        on_device = {k: v.to(device) for k, v in batch.items()}
        joint.update(on_device)
        moments.update(on_device)
    if device != "cpu":
        assert joint.counts[0].device.type == device
    return {"joint": joint.state_dict(), "moments": moments.state_dict(),
            "mi": joint.result().mi.values}


@pytest.mark.parametrize("device", DEVICES)
def test_accumulators_on_device_equal_the_cpu_reference(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vitprobe.stats.joint as joint_module
    import vitprobe.stats.moments as moments_module

    layout = NeuronLayout(n_layers=2, d_model=8, grid=(5, 5), n_prefix=1)
    calibration = _planted_batches(layout, [32, 16], seed=0)
    data = _planted_batches(layout, [16, 13, 1, 32], seed=1)
    with monkeypatch.context() as m:  # the reference: numpy / torch loops, no numba
        m.setattr(joint_module, "jit_enabled", lambda: False)
        m.setattr(moments_module, "jit_enabled", lambda: False)
        reference = _accumulate("cpu", calibration, data)
    tested = _accumulate(device, calibration, data)

    ref_joint, joint = reference["joint"], tested["joint"]
    assert ref_joint.keys() == joint.keys()
    for key, value in ref_joint.items():  # integer counts and bin edges: exactly equal
        np.testing.assert_array_equal(joint[key], value, err_msg=key)
    assert int(ref_joint["n"]) == 62 and int(ref_joint["n_null"]) == 61  # the 1-image batch
    # the counts are not trivially uniform: the shared component makes x and y dependent
    np.testing.assert_allclose(tested["mi"], reference["mi"], rtol=1e-6, atol=1e-9,
                               equal_nan=True)
    assert np.nanmean(reference["mi"]) > 0.05
    for key, value in reference["moments"].items():  # float64 sums, reassociated on CPU
        np.testing.assert_allclose(tested["moments"][key], value, rtol=1e-10, atol=1e-12,
                                   err_msg=key)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_study_on_cuda_equals_the_study_on_cpu(device: str, tmp_path) -> None:
    from vitprobe.study import run_study

    settings = dict(model="timm:vit_small_patch16_224", pretrained=False,
                    images="demo?crops=4", n_images=64, batch_size=32, workers=0,
                    calibration_images=32, mi_channels=32, mi_bins=4, report=False,
                    progress=False)
    cpu = run_study(device="cpu", dtype="float32", out=tmp_path / "cpu", **settings)
    gpu = run_study(device=device, dtype="float32", out=tmp_path / "gpu", **settings)
    bf16 = run_study(device=device, dtype="bfloat16", out=tmp_path / "bf16", **settings)
    assert cpu.n_images == gpu.n_images == bf16.n_images == 64
    # the device's high-water marks are the run's own (reset when it starts)
    assert "device_reserved" not in cpu.peak_memory
    assert 0 < gpu.peak_memory["device_allocated"] <= gpu.peak_memory["device_reserved"]
    assert gpu.peak_memory["device_reserved"] <= torch.cuda.get_device_properties(0).total_memory

    with xr.open_dataset(cpu.datasets["mi"]) as c, xr.open_dataset(gpu.datasets["mi"]) as g:
        np.testing.assert_allclose(g["mi"].values, c["mi"].values, atol=0.02, equal_nan=True)
        np.testing.assert_allclose(g["mi_vs_distance"].values, c["mi_vs_distance"].values,
                                   atol=0.02, equal_nan=True)
        # the kept channels are the highest-MI ones: compare the counts of those kept on
        # both devices (a near tie may swap one)
        dims = (*c["kept_channel"].dims, "position", "bin_x", "bin_y")
        same = c["kept_channel"].values == g["kept_channel"].values
        assert same.mean() >= 0.5
        counts_c = c["joint_counts"].transpose(*dims).values[same].astype(np.int64)
        counts_g = g["joint_counts"].transpose(*dims).values[same].astype(np.int64)
        # same images, same pairs: the same number of increments everywhere ...
        np.testing.assert_array_equal(counts_c.sum((-2, -1)), counts_g.sum((-2, -1)))
        assert counts_c.sum() > 0
        # ... in the same bins, but for activations on a bin edge, which float32
        # rounding on another device may move to the neighbouring bin
        moved = np.abs(counts_c - counts_g).sum() / (2 * counts_c.sum())
        assert moved < 0.01, f"{moved:.2%} of the increments changed bins"
    with xr.open_dataset(cpu.datasets["angles"]) as c, \
            xr.open_dataset(gpu.datasets["angles"]) as g:
        np.testing.assert_allclose(g["attention_mass"].values, c["attention_mass"].values,
                                   rtol=1e-4)
        np.testing.assert_allclose(g["layer_angle_shift"].values,
                                   c["layer_angle_shift"].values, atol=0.05, equal_nan=True)
    # bf16 autocast: the same study, less precise activations, still close
    with xr.open_dataset(bf16.datasets["mi"]) as b, xr.open_dataset(cpu.datasets["mi"]) as c:
        assert np.isfinite(b["mi_vs_distance"].sel(distance=1)).all()
        np.testing.assert_allclose(b["mi_vs_distance"].values, c["mi_vs_distance"].values,
                                   atol=0.1, equal_nan=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_memory_budget_on_the_gpu_is_a_share_of_its_memory() -> None:
    from vitprobe.resources import CPU_MEMORY_BUDGET, GPU_MEMORY_BUDGET_SHARE
    from vitprobe.study import StudyConfig

    total = torch.cuda.get_device_properties(0).total_memory
    budget = StudyConfig(device="cuda:0").memory_budget
    assert budget == max(CPU_MEMORY_BUDGET, int(GPU_MEMORY_BUDGET_SHARE * total))


# -- the counting pass on the device: the study's own accumulators --------------------------

def _study_accumulators(model, device: str, device_path: bool) -> dict:
    """The default study's image accumulators for ``model``, built by the analysis
    plug-ins as ``run_study`` builds them; ``device_path``: the accelerator code path."""
    from vitprobe.analyses import Context, first_pass_accumulators
    from vitprobe.study.config import StudyConfig

    cfg = StudyConfig(mi_bins=8)
    context = Context(n_images=64, calibration_images=16, batch_size=8, device=device,
                      memory_budget=cfg.memory_budget, options=cfg.analysis_options())
    accs = first_pass_accumulators(model, context, cfg.analyses)
    for acc in accs.values():
        acc.device_path_on_cpu = device_path
    return accs


def _count(model, accs: dict, device: str, n_batches: int, waits: list[str] | None = None,
           seen: set[str] | None = None):
    """Calibrate on the first batch, count the rest, as the runner does; the
    accumulators' calls on the last batch are watched when ``waits`` is given."""
    from vitprobe.record import Recorder, all_finite
    from vitprobe.stats.joint import IMAGE_INDEX

    sites = sorted({s for acc in accs.values() for s in acc.sites})
    pixels = zoo.pixels(model, batch=8 * n_batches, seed=5).to(device)
    with Recorder(model, sites) as recorder:
        for b in range(n_batches):
            with torch.inference_mode():
                model.adapter.forward(pixels[8 * b : 8 * b + 8])
            cache = recorder.pop()
            # the runner's one wait per batch, before the accumulators
            assert all_finite(t for t in cache.values() if t.is_floating_point())
            cache[IMAGE_INDEX] = index = torch.arange(8 * b, 8 * b + 8)  # host, as the runner's
            watch = waits is not None and b == n_batches - 1
            with _watched(device, [index], waits, seen) if watch \
                    else contextlib.nullcontext():
                for acc in accs.values():
                    if b == 0 and acc.needs_calibration:
                        acc.calibrate(cache)
                    else:
                        acc.update(cache)
            if b == 0:
                for acc in accs.values():
                    if acc.needs_calibration:
                        acc.end_calibration()
    return accs


@contextlib.contextmanager
def _watched(device: str, host: list[torch.Tensor], waits: list[str], seen: set[str]):
    """Collect the host waits of the block into ``waits`` and the names of all torch
    calls into ``seen``; on CUDA the driver's own check (``set_sync_debug_mode``)
    raises at any synchronisation besides."""
    from vitprobe.record import HostWaits

    watch = HostWaits(host)
    if device.startswith("cuda"):
        torch.cuda.set_sync_debug_mode("error")
    try:
        with watch:
            yield
    finally:
        if device.startswith("cuda"):
            torch.cuda.set_sync_debug_mode(0)
        waits += watch.calls
        seen |= set(watch.counts)


@pytest.mark.parametrize("device", DEVICES)
def test_counting_pass_never_waits_for_the_device(device: str) -> None:
    """On an accelerator the host queues a batch's work and goes on; each wait for the
    device (a value read back, bincount sizing its output, a blocking copy from host
    memory) leaves the device idle until the host has queued more. The accumulators of
    the default study wait for nothing (the runner's finite check is the batch's one
    wait)."""
    model = zoo.make("hf-dinov2").to(device)
    accs = _study_accumulators(model, device, device_path=True)
    assert set(accs) == {"moments/moments", "moments/histograms", "mi/mi", "bowtie/bowtie",
                         "angles/angles"}
    waits: list[str] = []
    seen: set[str] = set()
    _count(model, accs, device, n_batches=3, waits=waits, seen=seen)
    assert waits == []
    # the counting ran where it was watched: the device path's adds, not the CPU kernels
    # on worker threads
    assert {"index_add_", "scatter_add_", "searchsorted"} <= seen


@pytest.mark.parametrize("device", DEVICES)
def test_counting_pass_device_path_equals_the_cpu_path(device: str) -> None:
    """The default study's accumulators on the accelerator path (on a CPU: the same
    torch code on CPU tensors) hold the CPU path's (compiled kernels') state."""
    model = zoo.make("hf-dinov2")
    cpu = _count(model, _study_accumulators(model, "cpu", device_path=False), "cpu", 4)
    model.to(device)
    dev = _count(model, _study_accumulators(model, device, device_path=True), device, 4)
    for key, acc in cpu.items():
        ref, got = acc.state_dict(), dev[key].state_dict()
        assert ref.keys() == got.keys(), key
        for name, value in ref.items():
            where = f"{key}: {name}"
            if key == "angles/angles" and name in ("count", "attn_hist"):
                # the compiled kernel's float32 arccos (Cephes) and torch's differ by
                # ~1e-7: a pair on an angle bin's edge may move to the neighbouring bin,
                # with its attention; the totals stay
                a, b = got[name].astype(np.float64), value.astype(np.float64)
                np.testing.assert_allclose(a.sum(-1), b.sum(-1), rtol=1e-6, err_msg=where)
                moved = np.abs(np.cumsum(a - b, -1)).max(-1)
                assert np.all(moved <= 1e-3 * b.sum(-1) + 1e-6), where
            elif value.dtype.kind == "f":  # float sums: float32 work, reassociated
                # (the moments are float64 on both paths)
                rtol = 1e-10 if key == "moments/moments" else 1e-5
                np.testing.assert_allclose(got[name], value, rtol=rtol,
                                           atol=rtol / 10 * float(np.abs(value).max(initial=0)),
                                           err_msg=where)
            elif device == "cpu" or not name.startswith(("count", "hist")):
                np.testing.assert_array_equal(got[name], value, err_msg=where)
            else:  # a GPU rounds activations on a bin edge to the neighbouring bin
                a, b = got[name].astype(np.int64), value.astype(np.int64)
                assert a.sum() == b.sum(), where
                assert np.abs(a - b).sum() <= 0.01 * max(1, b.sum()), where
        counts = [v for k, v in ref.items() if k.startswith(("count", "hist"))]
        assert sum(int(v.astype(np.int64).sum()) for v in counts) > 0 or not counts, key
