"""Models: load any supported ViT and reach its weights and activations.

>>> import vitprobe
>>> m = vitprobe.load_model("timm:vit_small_patch16_224", pretrained=False)  # doctest: +SKIP
>>> m.W_Q[3, 0].shape          # (d_model, d_head)                            # doctest: +SKIP
>>> out, cache = m.run_with_cache(pixels, sites="blocks.*.attn.pattern")     # doctest: +SKIP
"""

from vitprobe.models.base import AttentionWeights, FamilyAdapter, ProbedViT, ViTArch
from vitprobe.models.preprocess import PreprocessConfig
from vitprobe.models.registry import (
    DEFAULT_MODEL,
    FAMILIES,
    adapter_for,
    load_checkpoint,
    load_model,
    register_family,
    wrap,
)

__all__ = [
    "DEFAULT_MODEL",
    "FAMILIES",
    "AttentionWeights",
    "FamilyAdapter",
    "PreprocessConfig",
    "ProbedViT",
    "ViTArch",
    "adapter_for",
    "load_checkpoint",
    "load_model",
    "register_family",
    "wrap",
]
