"""Planted query-key forms: W_K = W_Q attends to similar patches, W_K = -W_Q to dissimilar.

With zero q/k biases the logit is s_ij = x_i W_Q W_K^T x_j^T / sqrt(d_head). For W_K = W_Q,
M = W_Q W_Q^T is symmetric positive semidefinite, so s_ij = <x_i W_Q, x_j W_Q> grows as the
tokens align: attention goes to small angles. W_K = -W_Q flips the sign (dissimilarity).
"""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from vitprobe.attention import AngleAccumulator
from vitprobe.models import ProbedViT, wrap

D, HEADS = 32, 2


def planted(sign: float, seed: int = 0) -> ProbedViT:
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=D, depth=1, num_heads=HEADS,
                            mlp_ratio=2.0, num_classes=0).eval()
    with torch.no_grad():
        qkv = vit.blocks[0].attn.qkv
        w_q = 0.25 * torch.randn(D, D)  # (out, in): heads along the output rows
        qkv.weight[:D] = w_q
        qkv.weight[D:2 * D] = sign * w_q
        qkv.bias[:2 * D] = 0.0
    return wrap(vit, spec=f"planted W_K = {sign:+g} W_Q")


def measure(model, n_images: int = 6) -> AngleAccumulator:
    g = torch.Generator().manual_seed(11)
    pixels = torch.randn(n_images, 3, 32, 32, generator=g)
    acc = AngleAccumulator.from_model(model)
    batches = [pixels[:3], pixels[3:]]
    for _, cache in model.stream(batches, acc.calibration_sites):
        acc.calibrate(cache)
    acc.end_calibration()
    model.stream(batches, acc.sites, consumer=lambda batch, cache: acc.update(cache))
    return acc


@pytest.fixture(scope="module")
def results():
    return {sign: measure(planted(sign)).result() for sign in (1.0, -1.0)}


def test_planted_model_has_the_planted_form():
    model = planted(-1.0)
    torch.testing.assert_close(model.W_K, -model.W_Q)
    assert float(model.b_Q.abs().max()) == 0.0 and float(model.b_K.abs().max()) == 0.0


def test_symmetric_positive_form_attends_to_small_angles(results):
    ds = results[1.0]
    # the angles vary: the test is not decided by a degenerate distribution
    assert float(ds["std_angle_baseline"].min()) > 5.0
    shift = ds["angle_shift"]  # (layer, variant, head), degrees
    assert float(shift.max()) < -5.0, shift.values
    assert float((ds["share_attention_above_90"] - ds["share_pairs_above_90"]).max()) < 0
    assert float(ds["logit_cos_correlation"].min()) > 0.3
    assert float(ds["logit_cos_correlation_within_query"].min()) > 0.3


def test_negated_form_attends_to_large_angles(results):
    ds = results[-1.0]
    shift = ds["angle_shift"]
    assert float(shift.min()) > 5.0, shift.values
    assert float((ds["share_attention_above_90"] - ds["share_pairs_above_90"]).min()) > 0
    assert float(ds["logit_cos_correlation"].max()) < -0.3


def test_baselines_agree_and_only_the_attention_moves(results):
    # same embeddings (the sign only changes keys): identical pair distributions
    a, b = results[1.0], results[-1.0]
    assert (a["baseline_hist"] == b["baseline_hist"]).all()
    assert float(a["layer_angle_shift"].max()) < 0 < float(b["layer_angle_shift"].min())
