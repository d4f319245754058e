"""Small random-init models of every supported family, shared by the tests."""

from __future__ import annotations

import timm
import torch
import transformers as T
from torchvision.models.vision_transformer import VisionTransformer

import vitprobe
from vitprobe.models import ProbedViT

HF_SMALL = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96)


def timm_vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, depth=2)


def timm_deit_distilled() -> torch.nn.Module:
    return timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=64, depth=2
    )


def timm_dinov2_reg() -> torch.nn.Module:
    # LayerScale and 4 register tokens
    return timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, depth=2
    )


def hf_vit() -> torch.nn.Module:
    return T.ViTModel(
        T.ViTConfig(image_size=64, patch_size=16, **HF_SMALL), add_pooling_layer=False
    )


def hf_vit_classifier() -> torch.nn.Module:
    return T.ViTForImageClassification(
        T.ViTConfig(image_size=64, patch_size=16, num_labels=5, **HF_SMALL)
    )


def hf_deit() -> torch.nn.Module:
    return T.DeiTModel(
        T.DeiTConfig(image_size=64, patch_size=16, **HF_SMALL), add_pooling_layer=False
    )


def hf_dinov2() -> torch.nn.Module:
    return T.Dinov2Model(T.Dinov2Config(image_size=56, patch_size=14, **HF_SMALL))


def hf_dinov2_reg() -> torch.nn.Module:
    return T.Dinov2WithRegistersModel(
        T.Dinov2WithRegistersConfig(image_size=56, patch_size=14, num_register_tokens=4, **HF_SMALL)
    )


def hf_clip() -> torch.nn.Module:
    return T.CLIPVisionModel(T.CLIPVisionConfig(image_size=64, patch_size=16, **HF_SMALL))


def torchvision_vit() -> torch.nn.Module:
    return VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96
    )


FACTORIES = {
    "timm-vit": timm_vit,
    "timm-deit-distilled": timm_deit_distilled,
    "timm-dinov2-reg4": timm_dinov2_reg,
    "hf-vit": hf_vit,
    "hf-vit-classifier": hf_vit_classifier,
    "hf-deit": hf_deit,
    "hf-dinov2": hf_dinov2,
    "hf-dinov2-reg4": hf_dinov2_reg,
    "hf-clip": hf_clip,
    "torchvision-vit": torchvision_vit,
}


def make(name: str, seed: int = 0) -> ProbedViT:
    torch.manual_seed(seed)
    model = FACTORIES[name]()
    # LayerScale initialises near zero or one: perturb every parameter so that no
    # sublayer is trivially tiny and every weight matters in the comparisons
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vitprobe.models.wrap(model.eval(), spec=name)


def pixels(model: ProbedViT, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = model.preprocess.input_size
    return torch.randn(batch, 3, h, w, generator=g)
