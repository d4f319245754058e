"""The accelerator code paths give the CPU results (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.stats import (
    JointCounts,
    NeuronHistograms,
    NeuronLayout,
    NeuronMoments,
    mutual_info,
)

from .conftest import PlantedStream

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _cuda(cache: dict) -> dict:
    return {k: v.cuda() for k, v in cache.items()}


@pytest.mark.parametrize("bins", [8, 32])
def test_joint_counts_cuda_equals_cpu(bins: int) -> None:
    lay = NeuronLayout(n_layers=2, d_model=8, grid=(5, 5), n_prefix=1)
    s = PlantedStream(lay, seed=0)
    cal = [s.batch(128), s.batch(128)]
    data = [s.batch(50), s.batch(13), s.batch(64)]
    kw = dict(bins=bins, calibration_images=256, null_channels=3, cross_pairs_per_distance=2)
    cpu, gpu = JointCounts(lay, **kw), JointCounts(lay, **kw)
    for c in cal:
        cpu.calibrate(c)
        gpu.calibrate(_cuda(c))
    cpu.end_calibration()
    gpu.end_calibration()
    assert gpu.counts[0].is_cuda and gpu.counts[0].dtype == torch.int32
    np.testing.assert_array_equal(cpu.state_dict()["edges"], gpu.state_dict()["edges"])
    for d in data:
        cpu.update(d)
        gpu.update(_cuda(d))
    a, b = cpu.state_dict(), gpu.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    np.testing.assert_allclose(cpu.result().mi.values, gpu.result().mi.values, equal_nan=True)


def test_moments_and_histograms_cuda_equal_cpu() -> None:
    lay = NeuronLayout(n_layers=1, d_model=16, grid=(6, 6), n_prefix=2)
    s = PlantedStream(lay, seed=1, dtype=torch.bfloat16)
    cal, data = s.batch(64), [s.batch(40), s.batch(24)]
    mc, mg = NeuronMoments(lay), NeuronMoments(lay)
    hc, hg = NeuronHistograms(lay), NeuronHistograms(lay)
    hc.calibrate(cal)
    hg.calibrate(_cuda(cal))
    hc.end_calibration()
    hg.end_calibration()
    for d in data:
        for acc, dd in ((mc, d), (hc, d), (mg, _cuda(d)), (hg, _cuda(d))):
            acc.update(dd)
    for k, v in mc.state_dict().items():
        np.testing.assert_allclose(mg.state_dict()[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
    diff = np.abs(hc.state_dict()["hist"] - hg.state_dict()["hist"]).sum()
    assert diff <= 4  # only values on a bin edge may round differently


def test_mutual_info_cuda() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 20_000))
    y = 0.6 * x + 0.8 * rng.standard_normal((16, 20_000))
    cpu = mutual_info(x, y)
    gpu = mutual_info(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())
    assert gpu.is_cuda
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu, atol=1e-10)
