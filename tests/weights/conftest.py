"""Small random-init transformers shared by the weights tests (all built in < 1 s)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

D, H, L = 32, 4, 2  # d_model, heads, layers; d_head = 8


def probed_from_timm(model: torch.nn.Module) -> SimpleNamespace:
    """A stand-in for vitprobe.models.ProbedViT built by hand from a timm ViT."""
    wq, wk, bq, bk, lw, lb = [], [], [], [], [], []
    for blk in model.blocks:
        d = blk.attn.qkv.in_features
        h = blk.attn.num_heads
        r = d // h
        w, b = blk.attn.qkv.weight.detach(), blk.attn.qkv.bias.detach()
        wq.append(torch.stack([w[i * r : (i + 1) * r].T for i in range(h)]))
        wk.append(torch.stack([w[d + i * r : d + (i + 1) * r].T for i in range(h)]))
        bq.append(b[:d].reshape(h, r))
        bk.append(b[d : 2 * d].reshape(h, r))
        lw.append(blk.norm1.weight.detach())
        lb.append(blk.norm1.bias.detach())
    return SimpleNamespace(
        W_Q=torch.stack(wq),
        W_K=torch.stack(wk),
        b_Q=torch.stack(bq),
        b_K=torch.stack(bk),
        ln1_weight=torch.stack(lw),
        ln1_bias=torch.stack(lb),
        ln1_eps=1e-6,
        spec="timm:tiny-test",
        source="random init (test stand-in)",
    )


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every norm a non-trivial weight/bias so that LN folding is actually tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name.lower() or "ln" in name) and p.ndim == 1:
                p.copy_(
                    1.0 + 0.5 * torch.randn(p.shape, generator=g)
                    if name.endswith("weight")
                    else 0.3 * torch.randn(p.shape, generator=g)
                )
            elif name.endswith("bias") and p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="session")
def timm_vit() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=D, depth=L, num_heads=H, mlp_ratio=2.0, num_classes=0
    ).eval()
    randomize_norms(model)
    return model


@pytest.fixture(scope="session")
def hf_vit_copy(timm_vit: torch.nn.Module) -> torch.nn.Module:
    """Hugging Face ViTModel (separate q/k/v nn.Linear) holding timm_vit's weights."""
    import transformers as T

    cfg = T.ViTConfig(
        hidden_size=D,
        num_hidden_layers=L,
        num_attention_heads=H,
        intermediate_size=2 * D,
        image_size=32,
        patch_size=8,
    )
    model = T.ViTModel(cfg).eval()
    with torch.no_grad():
        for blk, lay in zip(timm_vit.blocks, model.layers, strict=True):
            w, b = blk.attn.qkv.weight, blk.attn.qkv.bias
            att = lay.attention
            for i, proj in enumerate((att.q_proj, att.k_proj, att.v_proj)):
                proj.weight.copy_(w[i * D : (i + 1) * D])
                proj.bias.copy_(b[i * D : (i + 1) * D])
            lay.layernorm_before.weight.copy_(blk.norm1.weight)
            lay.layernorm_before.bias.copy_(blk.norm1.bias)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
