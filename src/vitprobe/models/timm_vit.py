"""timm ViTs: ``VisionTransformer`` and its subclasses (vit_*, deit_*, *_dinov2*, CLIP ViTs).

timm fuses q, k and v into one Linear (``attn.qkv``, rows ordered q, k, v, heads
contiguous). Queries and keys pass through ``attn.q_norm`` / ``attn.k_norm``
(Identity unless the model uses QK-norm) right before the attention product, so
hooks there see exactly the q and k the fused kernel consumes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vitprobe.errors import UnsupportedModelError
from vitprobe.models.base import AttentionWeights, FamilyAdapter, QKVEmit, ViTArch
from vitprobe.models.preprocess import PreprocessConfig


def is_timm_vit(model: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(model, VisionTransformer)


def create(name: str, *, pretrained: bool) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UnsupportedModelError(f"timm has no model named {name!r}") from err
        raise


class TimmViTAdapter(FamilyAdapter):
    family = "timm"

    def __init__(self, model: nn.Module):
        if not is_timm_vit(model):
            raise UnsupportedModelError(
                f"expected a timm VisionTransformer, found {type(model).__module__}."
                f"{type(model).__name__}"
            )
        from timm.models.vision_transformer import Attention

        for i, block in enumerate(model.blocks):
            attn = getattr(block, "attn", None)
            if type(attn) is not Attention:
                raise UnsupportedModelError(
                    f"timm block {i} uses {type(attn).__name__}, not the plain "
                    "timm.models.vision_transformer.Attention that vitprobe probes"
                )
        super().__init__(model)

    def arch(self) -> ViTArch:
        m = self.model
        attn = m.blocks[0].attn
        prefix = ["cls"] * int(getattr(m, "cls_token", None) is not None)
        if getattr(m, "dist_token", None) is not None:
            prefix.append("dist")
        prefix += ["reg"] * int(getattr(m, "num_reg_tokens", 0) or 0)
        if len(prefix) != m.num_prefix_tokens:
            raise UnsupportedModelError(
                f"timm model reports {m.num_prefix_tokens} prefix tokens, vitprobe found {prefix}"
            )
        return ViTArch(
            family=self.family,
            n_layers=len(m.blocks),
            n_heads=attn.num_heads,
            d_model=m.embed_dim,
            d_head=attn.head_dim,
            prefix_tokens=tuple(prefix),
            grid=tuple(m.patch_embed.grid_size),
            patch_size=int(m.patch_embed.patch_size[0]),
            attn_scale=float(attn.scale),
            ln1_eps=float(getattr(m.blocks[0].norm1, "eps", 1e-6)),
            preprocess=preprocess_from_timm(m),
        )

    def blocks(self):
        return list(self.model.blocks)

    def ln1(self, layer):
        return self.model.blocks[layer].norm1

    def attn_out(self, layer):
        return self.model.blocks[layer].ls1  # Identity when the model has no LayerScale

    def mlp_out(self, layer):
        return self.model.blocks[layer].ls2

    def attach_qkv(self, layer: int, emit: QKVEmit):
        attn = self.model.blocks[layer].attn
        n_heads, d_head = attn.num_heads, attn.head_dim

        def on_qkv(module, args, output):
            b, n, _ = output.shape
            emit("v", output.reshape(b, n, 3, n_heads, d_head)[:, :, 2].transpose(1, 2))

        return [
            attn.qkv.register_forward_hook(on_qkv),
            attn.q_norm.register_forward_hook(lambda m, a, out: emit("q", out)),
            attn.k_norm.register_forward_hook(lambda m, a, out: emit("k", out)),
        ]

    def attention_weights(self, layer: int) -> AttentionWeights:
        block = self.model.blocks[layer]
        weight = block.attn.qkv.weight
        bias = block.attn.qkv.bias
        wq, wk, wv = weight.chunk(3, dim=0)
        bq, bk, bv = bias.chunk(3, dim=0) if bias is not None else (None, None, None)
        if getattr(block.attn, "q_bias", None) is not None:  # some ports keep q/v biases apart
            bq, bk, bv = block.attn.q_bias, torch.zeros_like(block.attn.q_bias), block.attn.v_bias
        norm1 = block.norm1
        return AttentionWeights(
            q_weight=wq,
            k_weight=wk,
            v_weight=wv,
            o_weight=block.attn.proj.weight,
            q_bias=bq,
            k_bias=bk,
            v_bias=bv,
            o_bias=block.attn.proj.bias,
            ln1_weight=norm1.weight,
            ln1_bias=norm1.bias,
        )

    def forward(self, pixels):
        return self.model(pixels)


def preprocess_from_timm(model: nn.Module) -> PreprocessConfig:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    # the model's own patch_embed size wins over the pretrained config (img_size= overrides)
    height, width = tuple(getattr(model.patch_embed, "img_size", None) or cfg["input_size"][1:])
    crop_pct = cfg.get("crop_pct") or 1.0
    return PreprocessConfig(
        input_size=(height, width),
        resize_size=int(math.floor(min(height, width) / crop_pct)),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
    )
