"""Eigen-stimuli and pop-out on the offline DINOv2-S/14 (slow: the real trained model).

The issue asks that the eigen-stimuli of the heads shown (layer 1 by default) reach a
cosine of 0.9 with their target modes. The whole form's top modes are out of reach of
bounded pixels (0.3-0.7 at best, see :mod:`vitprobe.salience.eigen`); the modes within
the patch-reachable subspace are reached at 0.95 or more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    import vitprobe

    return vitprobe.load_model("imgfocus-dinov2-s14")


def test_eigen_search_on_the_offline_model(model):
    from vitprobe.salience.eigen import (
        _demo_pixels,
        eigen_targets,
        reachable_basis,
        search_patches,
    )

    torch.set_num_threads(2)
    context = _demo_pixels(model, 1)[1][0]
    t = eigen_targets(model, 0, basis=reachable_basis(model, 0, context))
    q = np.concatenate([t["query"][:, :3].reshape(-1, model.d_model), t["query"][:1, 3]])
    k = np.concatenate([t["key"][:, :3].reshape(-1, model.d_model), t["key"][:1, 3]])
    start = search_patches(model, 0, q, k, context, steps=0)["cosine"]
    found = search_patches(model, 0, q, k, context)
    assert found["cosine"].min() >= 0.9  # every target of every head: the 0.9
    assert np.median(start) < 0.2 and found["steps"] < 300
    # the whole form's modes are mostly outside what a patch reaches (the reason for
    # compressing): a finding the report states
    assert np.median(t["overlap"]) < 0.5


def test_singleton_pops_out_in_the_trained_model_only(model):
    import vitprobe
    from vitprobe.salience.measure import measure_arrays
    from vitprobe.salience.stimuli import StimulusBatch, popout_stimulus

    torch.set_num_threads(2)
    size = model.preprocess.input_size
    stim = StimulusBatch.stack([popout_stimulus(size, model.patch_size, feature="colour",
                                                level=lv, seed=s) for lv in (0.0, 1.0)
                                for s in range(2)])
    trained = measure_arrays(model, stim)["log2_ratio_heads"][..., 0].reshape(2, 2, -1)
    control = vitprobe.load_model("imgfocus-dinov2-s14", pretrained=False)
    rand = measure_arrays(control, stim)["log2_ratio_heads"][..., 0].reshape(2, 2, -1)
    # layer 9: the largest index in the default battery (about +5 log2)
    assert trained[1, :, 8].min() > 2.0 and abs(trained[0, :, 8]).max() < 1.0
    assert abs(rand).max() < 0.5
