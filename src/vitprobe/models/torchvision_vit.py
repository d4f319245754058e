"""torchvision ViTs (``vit_b_16``, ``vit_l_32``, ...).

Each ``EncoderBlock`` calls ``nn.MultiheadAttention(x, x, x, need_weights=False)``:
q, k, v are computed inside the module from one packed ``in_proj_weight``, so the
adapter recomputes them from the module's input with those same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitprobe.errors import UnsupportedModelError
from vitprobe.models.base import AttentionWeights, FamilyAdapter, QKVEmit, ViTArch
from vitprobe.models.preprocess import PreprocessConfig


def is_torchvision_vit(model: nn.Module) -> bool:
    from torchvision.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def create(name: str, *, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    if not name.startswith("vit_"):
        raise UnsupportedModelError(f"torchvision model {name!r} is not a ViT (vit_b_16, ...)")
    try:
        return tvm.get_model(name, weights="DEFAULT" if pretrained else None)
    except ValueError as err:
        raise UnsupportedModelError(f"torchvision has no model named {name!r}") from err


class TorchvisionViTAdapter(FamilyAdapter):
    family = "torchvision"

    def __init__(self, model: nn.Module):
        if not is_torchvision_vit(model):
            raise UnsupportedModelError(
                f"expected a torchvision VisionTransformer, found {type(model).__name__}"
            )
        super().__init__(model)

    def _attn(self, layer: int) -> nn.MultiheadAttention:
        return self.model.encoder.layers[layer].self_attention

    def arch(self) -> ViTArch:
        m = self.model
        attn = self._attn(0)
        grid = m.image_size // m.patch_size
        return ViTArch(
            family=self.family,
            n_layers=len(m.encoder.layers),
            n_heads=attn.num_heads,
            d_model=m.hidden_dim,
            d_head=attn.head_dim,
            prefix_tokens=("cls",),
            grid=(grid, grid),
            patch_size=m.patch_size,
            attn_scale=attn.head_dim**-0.5,
            ln1_eps=float(m.encoder.layers[0].ln_1.eps),
            # torchvision's ImageNet weights: resize 256 bilinear (vit_b_16 v1), crop 224
            preprocess=PreprocessConfig(
                input_size=(m.image_size, m.image_size),
                resize_size=int(round(m.image_size * 256 / 224)),
                interpolation="bilinear",
            ),
        )

    def blocks(self):
        return list(self.model.encoder.layers)

    def ln1(self, layer):
        return self.model.encoder.layers[layer].ln_1

    def attn_out(self, layer):
        return self.model.encoder.layers[layer].dropout  # called once, right after attention

    def mlp_out(self, layer):
        return self.model.encoder.layers[layer].mlp

    def attach_qkv(self, layer: int, emit: QKVEmit):
        attn = self._attn(layer)
        n_heads, d_head = attn.num_heads, attn.head_dim

        def on_input(module, args, kwargs):
            x = args[0] if args else kwargs["query"]
            b, n, _ = x.shape
            qkv = F.linear(x, module.in_proj_weight, module.in_proj_bias)
            q, k, v = qkv.reshape(b, n, 3, n_heads, d_head).permute(2, 0, 3, 1, 4)
            emit("q", q)
            emit("k", k)
            emit("v", v)

        return [attn.register_forward_pre_hook(on_input, with_kwargs=True)]

    def attention_weights(self, layer: int) -> AttentionWeights:
        attn = self._attn(layer)
        wq, wk, wv = attn.in_proj_weight.chunk(3, dim=0)
        bq, bk, bv = attn.in_proj_bias.chunk(3, dim=0)
        ln = self.ln1(layer)
        return AttentionWeights(
            q_weight=wq,
            k_weight=wk,
            v_weight=wv,
            o_weight=attn.out_proj.weight,
            q_bias=bq,
            k_bias=bk,
            v_bias=bv,
            o_bias=attn.out_proj.bias,
            ln1_weight=ln.weight,
            ln1_bias=ln.bias,
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)
