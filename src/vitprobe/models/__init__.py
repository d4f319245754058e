"""Models: load any supported ViT and reach its weights and activations.

>>> import vitprobe
>>> m = vitprobe.load_model("timm:vit_small_patch16_224", pretrained=False)  # doctest: +SKIP
>>> m.W_Q[3, 0].shape          # (d_model, d_head)                            # doctest: +SKIP
>>> out, cache = m.run_with_cache(pixels, sites="blocks.*.attn.pattern")     # doctest: +SKIP

Attributes are imported lazily, so that the CLI can describe its options without
importing torch.
"""

from __future__ import annotations

from vitprobe._lazy import lazy_exports

_EXPORTS = {
    "AttentionWeights": "vitprobe.models.base",
    "FamilyAdapter": "vitprobe.models.base",
    "ProbedViT": "vitprobe.models.base",
    "ViTArch": "vitprobe.models.base",
    "PreprocessConfig": "vitprobe.models.preprocess",
    "DEFAULT_MODEL": "vitprobe.defaults",
    "FAMILIES": "vitprobe.models.registry",
    "Family": "vitprobe.models.registry",
    "NAMED_MODELS": "vitprobe.models.registry",
    "adapter_for": "vitprobe.models.registry",
    "load_checkpoint": "vitprobe.models.registry",
    "load_model": "vitprobe.models.registry",
    "register_family": "vitprobe.models.registry",
    "register_model": "vitprobe.models.registry",
    "wrap": "vitprobe.models.registry",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
