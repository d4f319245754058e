"""Hugging Face ViTs: ViTModel, DeiTModel, Dinov2Model (with or without registers),
CLIPVisionModel, and their ``*ForImageClassification`` wrappers.

The families share one layout in transformers >= 5: a list of layers, each with a
LayerNorm before attention, an attention module with ``q_proj``/``k_proj``/
``v_proj`` Linears and an output projection, an MLP, and (DINOv2) LayerScales.
Only the attribute names differ, so one adapter resolves them from short lists.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitprobe.errors import UnsupportedModelError
from vitprobe.models.base import AttentionWeights, FamilyAdapter, QKVEmit, ViTArch
from vitprobe.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

# model_type -> prefix tokens before the patches (registers added from the config)
PREFIX_BY_TYPE = {
    "vit": ("cls",),
    "deit": ("cls", "dist"),
    "dinov2": ("cls",),
    "dinov2_with_registers": ("cls",),
    "clip_vision_model": ("cls",),
}
LAYER_LISTS = ("layers", "encoder.layer", "encoder.layers")
LN1_NAMES = ("layernorm_before", "norm1", "layer_norm1")
ATTN_NAMES = ("attention", "self_attn")
OUT_PROJ_NAMES = ("o_proj", "out_proj")


def _get(obj: nn.Module, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _first(obj: nn.Module, names: tuple[str, ...], what: str):
    for name in names:
        found = _get(obj, name)
        if found is not None:
            return found
    raise UnsupportedModelError(
        f"{type(obj).__name__} has no {what} (looked for {', '.join(names)})"
    )


def is_hf_vision_model(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    vision = getattr(config, "vision_config", None)
    model_type = getattr(vision or config, "model_type", None)
    return model_type in PREFIX_BY_TYPE


def backbone_of(model: nn.Module) -> nn.Module:
    """The ViT inside a wrapper (``ViTForImageClassification.vit``, ``CLIPModel.vision_model``)."""
    for name in ("vision_model", "vit", "deit", "dinov2", "dinov2_with_registers"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return model


class HFViTAdapter(FamilyAdapter):
    family = "hf"

    def __init__(self, model: nn.Module, preprocess: PreprocessConfig | None = None):
        config = getattr(model, "config", None)
        config = getattr(config, "vision_config", None) or config
        model_type = getattr(config, "model_type", None)
        if model_type not in PREFIX_BY_TYPE:
            raise UnsupportedModelError(
                f"Hugging Face model of type {model_type!r} ({type(model).__name__}) is not a "
                f"supported ViT; supported: {', '.join(sorted(PREFIX_BY_TYPE))}"
            )
        super().__init__(model)
        self.config = config
        self.model_type = model_type
        self.backbone = backbone_of(model)
        self._layers = list(_first(self.backbone, LAYER_LISTS, "list of transformer layers"))
        self._preprocess = preprocess or default_preprocess(config)

    def _attn(self, layer: int) -> nn.Module:
        return _first(self._layers[layer], ATTN_NAMES, "attention module")

    def arch(self) -> ViTArch:
        c = self.config
        prefix = PREFIX_BY_TYPE[self.model_type] + ("reg",) * int(
            getattr(c, "num_register_tokens", 0) or 0
        )
        attn = self._attn(0)
        n_heads = c.num_attention_heads
        d_head = getattr(attn, "head_dim", None) or c.hidden_size // n_heads
        patch = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
        height, width = self._preprocess.input_size
        scale = getattr(attn, "scaling", None) or getattr(attn, "scale", None) or d_head**-0.5
        return ViTArch(
            family=self.family,
            n_layers=len(self._layers),
            n_heads=n_heads,
            d_model=c.hidden_size,
            d_head=d_head,
            prefix_tokens=prefix,
            grid=(height // patch, width // patch),
            patch_size=patch,
            attn_scale=float(scale),
            ln1_eps=float(self.ln1(0).eps),
            preprocess=self._preprocess,
        )

    def blocks(self):
        return self._layers

    def ln1(self, layer):
        return _first(self._layers[layer], LN1_NAMES, "LayerNorm before attention")

    def attn_out(self, layer):
        block = self._layers[layer]
        scale = getattr(block, "layer_scale1", None)
        return (
            scale
            if scale is not None
            else _first(self._attn(layer), OUT_PROJ_NAMES, "output projection")
        )

    def mlp_out(self, layer):
        block = self._layers[layer]
        scale = getattr(block, "layer_scale2", None)
        return scale if scale is not None else block.mlp

    def attach_qkv(self, layer: int, emit: QKVEmit):
        attn = self._attn(layer)
        d_head = self.arch_d_head

        def hook(kind: str):
            def on_proj(module, args, output):
                b, n, _ = output.shape
                emit(kind, output.view(b, n, -1, d_head).transpose(1, 2))

            return on_proj

        return [getattr(attn, f"{k}_proj").register_forward_hook(hook(k)) for k in "qkv"]

    @property
    def arch_d_head(self) -> int:
        attn = self._attn(0)
        return (
            getattr(attn, "head_dim", None)
            or self.config.hidden_size // self.config.num_attention_heads
        )

    def attention_weights(self, layer: int) -> AttentionWeights:
        attn = self._attn(layer)
        out = _first(attn, OUT_PROJ_NAMES, "output projection")
        ln = self.ln1(layer)
        return AttentionWeights(
            q_weight=attn.q_proj.weight,
            k_weight=attn.k_proj.weight,
            v_weight=attn.v_proj.weight,
            o_weight=out.weight,
            q_bias=attn.q_proj.bias,
            k_bias=attn.k_proj.bias,
            v_bias=attn.v_proj.bias,
            o_bias=out.bias,
            ln1_weight=ln.weight,
            ln1_bias=ln.bias,
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = pixels.shape[-2:]
        kwargs = {}
        # DINOv2 always interpolates its position embedding; the others must be asked to
        if (height, width) != _config_size(self.config) and "dinov2" not in self.model_type:
            kwargs["interpolate_pos_encoding"] = True
        out = self.model(pixel_values=pixels, **kwargs)
        logits = getattr(out, "logits", None)
        return logits if logits is not None else out.last_hidden_state


def _config_size(config) -> tuple[int, int]:
    size = config.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def default_preprocess(config) -> PreprocessConfig:
    """Preprocessing when no image-processor file says otherwise (config size, family stats)."""
    height, width = _config_size(config)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if getattr(config, "model_type", "") == "vit":
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # google/vit-* processors
    elif getattr(config, "model_type", "") == "clip_vision_model":
        mean = (0.48145466, 0.4578275, 0.40821073)
        std = (0.26862954, 0.26130258, 0.27577711)
    return PreprocessConfig(
        input_size=(height, width),
        resize_size=min(height, width),
        mean=mean,
        std=std,
        interpolation="bicubic",
    )


def preprocess_from_processor(path_or_name: str | Path, config) -> PreprocessConfig:
    """Read ``preprocessor_config.json`` (local dir or hub) into a PreprocessConfig."""
    try:
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(str(path_or_name))
    except (OSError, ValueError, ImportError):
        return default_preprocess(config)
    size = getattr(proc, "size", None) or {}
    crop = getattr(proc, "crop_size", None) or {}
    do_crop = bool(getattr(proc, "do_center_crop", False)) and crop
    if do_crop:
        input_size = (crop["height"], crop["width"])
    elif "height" in size:
        input_size = (size["height"], size["width"])
    else:
        input_size = (size["shortest_edge"],) * 2
    resize = size.get("shortest_edge") or min(
        size.get("height", input_size[0]), size.get("width", input_size[1])
    )
    resample = getattr(proc, "resample", 3)
    interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(int(resample), "bicubic")
    return PreprocessConfig(
        input_size=tuple(int(x) for x in input_size),
        resize_size=int(resize),
        mean=tuple(float(x) for x in proc.image_mean),
        std=tuple(float(x) for x in proc.image_std),
        interpolation=interpolation,
    )


def load(
    repo_or_dir: str, *, pretrained: bool, attn_implementation: str = "sdpa"
) -> tuple[nn.Module, PreprocessConfig]:
    """Load an HF vision model by hub name or local directory.

    ``pretrained=False`` reads only the config and initialises weights randomly.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(repo_or_dir)
    except (OSError, ValueError) as err:
        raise UnsupportedModelError(
            f"cannot read a Hugging Face config from {repo_or_dir!r}: {err}"
        ) from err
    vision = getattr(config, "vision_config", None)
    if vision is not None:  # a CLIP checkpoint: keep the vision tower only
        from transformers import CLIPVisionModel

        cls = CLIPVisionModel
        config = vision if not pretrained else config
    else:
        archs = getattr(config, "architectures", None) or []
        cls = (
            AutoModelForImageClassification
            if any("ImageClassification" in a for a in archs)
            else AutoModel
        )
    if getattr(vision or config, "model_type", None) not in PREFIX_BY_TYPE:
        raise UnsupportedModelError(
            f"{repo_or_dir!r} is a {getattr(config, 'model_type', '?')!r} model, "
            "not a supported ViT "
            f"({', '.join(sorted(PREFIX_BY_TYPE))})"
        )
    if pretrained:
        model = cls.from_pretrained(repo_or_dir, attn_implementation=attn_implementation)
    else:
        model = cls.from_config(vision or config, attn_implementation=attn_implementation)
    preprocess = preprocess_from_processor(repo_or_dir, vision or config)
    return model, preprocess
