"""Front-ends: the same weights in fused and separate layouts give identical numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers as T

from tests.weights.conftest import D, H, L, probed_from_timm, randomize_norms
from vitprobe.errors import UnsupportedModelError
from vitprobe.weights import analyze_qk, effective_factors, factors_from_module, qk_spectra
from vitprobe.weights.factors import factors_from_probed

NUMERIC = (
    "eig_sym",
    "lambda_asym",
    "singular_value",
    "sv_cosine",
    "symmetry",
    "positive_share",
    "weighted_cosine",
    "layer_symmetry",
    "bias_key_norm",
    "bias_query_norm",
    "bias_const",
)


def assert_same_numbers(ds1, ds2, rtol=1e-10):
    for var in NUMERIC:
        np.testing.assert_allclose(
            ds1[var].values, ds2[var].values, rtol=rtol, atol=1e-12, err_msg=var
        )


def test_timm_fused_equals_probed_standin(timm_vit):
    a = factors_from_module(timm_vit)
    b = factors_from_probed(probed_from_timm(timm_vit))
    assert "timm" in a.family
    for name in ("W_Q", "W_K", "b_Q", "b_K", "ln_weight", "ln_bias"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_allclose(a.scale, (D // H) ** -0.5)


@pytest.mark.parametrize("fold_ln", [False, True])
def test_timm_fused_and_hf_separate_identical(timm_vit, hf_vit_copy, fold_ln):
    f_hf = factors_from_module(hf_vit_copy)
    assert f_hf.family == "separate-qkv" and f_hf.W_Q.shape == (L, H, D, D // H)
    ds_fused = analyze_qk(probed_from_timm(timm_vit), fold_ln=fold_ln, scale=True)
    ds_sep = analyze_qk(hf_vit_copy, fold_ln=fold_ln, scale=True)
    assert_same_numbers(ds_fused, ds_sep)
    if fold_ln:  # folding a non-trivial LayerNorm weight changes the spectra
        plain = analyze_qk(hf_vit_copy, scale=True)
        assert not np.allclose(plain["eig_sym"].values, ds_sep["eig_sym"].values)


def test_logit_decomposition_with_folding_and_biases(timm_vit):
    """scale * q.k from the real module == xhat M yhat^T + yhat.key_bias + xhat.query_bias + c."""
    blk = copy.deepcopy(timm_vit.blocks[1]).double()
    x = torch.randn(5, D, dtype=torch.float64)
    with torch.no_grad():
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(5, 3, H, D // H)
    q, k = qkv[:, 0].transpose(0, 1), qkv[:, 1].transpose(0, 1)  # (H, tokens, r)
    logits = (q @ k.transpose(1, 2) * (D // H) ** -0.5).numpy()
    eff = effective_factors(factors_from_module(timm_vit), fold_ln=True, scale=True)
    xhat = (
        (x - x.mean(1, keepdim=True))
        / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + blk.norm1.eps)
    ).numpy()
    for h in range(H):
        M = eff.A[1, h] @ eff.B[1, h].T
        pred = (
            xhat @ M @ xhat.T
            + (xhat @ eff.key_bias[1, h])[None, :]
            + (xhat @ eff.query_bias[1, h])[:, None]
            + eff.const_bias[1, h]
        )
        np.testing.assert_allclose(pred, logits[h], rtol=1e-5, atol=1e-5)


def _bert_and_gpt2_same_weights() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(1)
    bert = T.BertModel(
        T.BertConfig(
            hidden_size=D,
            num_hidden_layers=L,
            num_attention_heads=H,
            intermediate_size=2 * D,
            vocab_size=50,
        )
    ).eval()
    gpt2 = T.GPT2Model(
        T.GPT2Config(
            n_embd=D,
            n_layer=L,
            n_head=H,
            vocab_size=50,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
        )
    ).eval()
    randomize_norms(bert, seed=2)
    with torch.no_grad():
        for layer in range(L):
            att = bert.encoder.layer[layer].attention.self
            c = gpt2.h[layer].attn.c_attn  # Conv1D, weight [in, out] = (D, 3D)
            for i, proj in enumerate((att.query, att.key, att.value)):
                c.weight[:, i * D : (i + 1) * D] = proj.weight.T
                c.bias[i * D : (i + 1) * D] = proj.bias
            # BERT is post-LN: the norm before layer l is the previous block's output norm
            pre = (
                bert.embeddings.LayerNorm
                if layer == 0
                else bert.encoder.layer[layer - 1].output.LayerNorm
            )
            gpt2.h[layer].ln_1.weight.copy_(pre.weight)
            gpt2.h[layer].ln_1.bias.copy_(pre.bias)
    return bert, gpt2


@pytest.mark.parametrize("fold_ln", [False, True])
def test_gpt2_fused_conv1d_equals_bert_separate(fold_ln):
    bert, gpt2 = _bert_and_gpt2_same_weights()
    fb, fg = factors_from_module(bert), factors_from_module(gpt2)
    assert "GPT-2" in fg.family and fb.family == "separate-qkv"
    np.testing.assert_array_equal(fb.ln_weight, fg.ln_weight)
    assert_same_numbers(
        analyze_qk(bert, fold_ln=fold_ln, scale=True), analyze_qk(gpt2, fold_ln=fold_ln, scale=True)
    )


@pytest.mark.parametrize("cls", ["Llama", "Qwen2"])
def test_grouped_query_attention_shares_key_heads(cls):
    cfg = getattr(T, f"{cls}Config")(
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=2,
        intermediate_size=2 * D,
        vocab_size=50,
    )
    torch.manual_seed(3)
    model = getattr(T, f"{cls}Model")(cfg).eval()
    randomize_norms(model, seed=4)
    f = factors_from_module(model)
    assert "GQA 4 query / 2 key heads" in f.family
    np.testing.assert_array_equal(f.kv_head, [0, 0, 1, 1])
    r = D // H
    for layer in range(L):
        att = model.layers[layer].self_attn
        wq = att.q_proj.weight.detach().double().numpy()
        wk = att.k_proj.weight.detach().double().numpy()
        for h in range(H):
            np.testing.assert_array_equal(f.W_Q[layer, h], wq[h * r : (h + 1) * r].T)
            np.testing.assert_array_equal(f.W_K[layer, h], wk[h // 2 * r : (h // 2 + 1) * r].T)
        g = model.layers[layer].input_layernorm.weight.detach().double().numpy()
        np.testing.assert_array_equal(f.ln_weight[layer], g)
    assert f.ln_bias is None  # RMSNorm
    assert (f.b_Q is not None) == (cls == "Qwen2")
    ds = analyze_qk(model, fold_ln=True)
    g = f.ln_weight[:, None, :, None]
    ref = qk_spectra(g * f.W_Q, g * f.W_K)
    np.testing.assert_allclose(ds["eig_sym"].values[0], ref.eig_sym, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(ds["kv_head"].values, [0, 0, 1, 1])


def test_qk_norm_models_are_refused():
    cfg = T.Qwen3Config(
        hidden_size=D,
        num_hidden_layers=1,
        num_attention_heads=H,
        num_key_value_heads=H,
        head_dim=D // H,
        intermediate_size=2 * D,
        vocab_size=50,
    )
    with pytest.raises(UnsupportedModelError, match="q_norm"):
        factors_from_module(T.Qwen3Model(cfg))


def test_torchvision_multihead_attention():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(5)
    model = VisionTransformer(
        image_size=32, patch_size=8, num_layers=L, num_heads=H, hidden_dim=D, mlp_dim=2 * D
    ).eval()
    f = factors_from_module(model)
    r = D // H
    mha = model.encoder.layers[1].self_attention
    w = mha.in_proj_weight.detach().double().numpy()
    np.testing.assert_array_equal(f.W_K[1, 2], w[D + 2 * r : D + 3 * r].T)
    ln = model.encoder.layers[1].ln_1.weight.detach().double().numpy()
    np.testing.assert_array_equal(f.ln_weight[1], ln)


def test_not_a_transformer():
    with pytest.raises(UnsupportedModelError):
        factors_from_module(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(UnsupportedModelError):
        analyze_qk(object())


def test_load_model_front_end_matches_module_reader():
    """ProbedViT from vitprobe.models.load_model gives the same factors as the raw module."""
    load_model = pytest.importorskip("vitprobe.models").load_model
    m = load_model("timm:vit_tiny_patch16_224", pretrained=False)
    a, b = factors_from_probed(m), factors_from_module(m.model)
    assert a.spec == "timm:vit_tiny_patch16_224" and a.W_Q.shape == (12, 3, 192, 64)
    for name in ("W_Q", "W_K", "b_Q", "b_K", "ln_weight", "ln_bias"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
