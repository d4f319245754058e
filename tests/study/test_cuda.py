"""The CUDA path: recording, bf16 autocast, GPU counting, and a whole study on the GPU.

Skipped where no CUDA device exists (CI has none); run on a GPU machine with
``python -m pytest -m gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import vitprobe
from tests.models import zoo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_pattern_equals_cpu():
    cpu = zoo.make("timm-vit")
    gpu = zoo.make("timm-vit").to("cuda")
    x = zoo.pixels(cpu, batch=4)
    _, c_cpu = cpu.run_with_cache(x, ["blocks.*.attn.pattern", "blocks.*.mlp.out"])
    _, c_gpu = gpu.run_with_cache(x, ["blocks.*.attn.pattern", "blocks.*.mlp.out"])
    for site, ref in c_cpu.items():
        assert c_gpu[site].device.type == "cuda"
        torch.testing.assert_close(c_gpu[site].cpu(), ref, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_records_float32_patterns():
    model = zoo.make("hf-dinov2").to("cuda")
    x = zoo.pixels(model, batch=4).cuda()
    batches = list(model.stream([x], "blocks.*.attn.pattern", autocast=torch.bfloat16))
    (_, cache), = batches
    pattern = cache["blocks.0.attn.pattern"]
    assert pattern.dtype == torch.float32 and pattern.is_cuda
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    _, ref = model.run_with_cache(x, "blocks.0.attn.pattern")
    assert (pattern - ref["blocks.0.attn.pattern"]).abs().max() < 0.05  # bf16 q/k


def test_joint_counts_on_gpu_equal_cpu():
    from vitprobe.stats.joint import JointCounts
    from vitprobe.stats.layout import NeuronLayout

    layout = NeuronLayout(n_layers=1, d_model=8, grid=(5, 5), n_prefix=1)
    g = torch.Generator().manual_seed(0)
    batches = [{"blocks.0.attn.out": torch.randn(16, 26, 8, generator=g),
                "blocks.0.mlp.out": torch.randn(16, 26, 8, generator=g)} for _ in range(4)]
    results = []
    for device in ("cpu", "cuda"):
        acc = JointCounts(layout, 4, calibration_images=32, device=device)
        for b in batches[:2]:
            acc.calibrate({k: v.to(device) for k, v in b.items()})
        acc.end_calibration()
        for b in batches:
            acc.update({k: v.to(device) for k, v in b.items()})
        results.append(acc.state_dict())
    for key, value in results[0].items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(results[1][key]), err_msg=key)


def test_study_on_cuda(tmp_path):
    from vitprobe.study import run_study

    result = run_study(model="timm:vit_small_patch16_224", pretrained=False,
                       images="demo?crops=4", n_images=64, batch_size=32, device="cuda",
                       dtype="bfloat16", workers=0, calibration_images=32, mi_channels=32,
                       mi_bins=4, out=tmp_path / "run", report=False)
    assert result.n_images == 64
    with xr.open_dataset(result.datasets["mi"]) as ds:
        assert np.isfinite(ds["mi_vs_distance"].sel(distance=1)).all()
    with xr.open_dataset(result.datasets["angles"]) as ds:
        assert float(ds["attention_mass"].sum()) > 0
    assert vitprobe.load_model  # the package imports cleanly alongside CUDA
