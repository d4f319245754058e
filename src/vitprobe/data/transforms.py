"""The model's deterministic evaluation preprocessing, from a ``PreprocessConfig``.

Pipeline, identical to timm/torchvision evaluation transforms
(``Resize(resize_size)`` + ``CenterCrop(input_size)`` + ``ToTensor`` + ``Normalize``):

1. resize so the *shorter* side is ``resize_size`` pixels, the longer side
   ``int(resize_size * long / short)`` (torchvision's rounding), with PIL's
   ``interpolation`` filter (antialiased when shrinking);
2. centre-crop ``input_size`` (height, width), offsets ``round((size - crop) / 2)``;
   if the resized image is smaller than the crop (only when ``resize_size`` <
   ``input_size``) it is zero-padded first, as torchvision does;
3. scale to [0, 1] and normalise with ``mean`` and ``std`` (per RGB channel).

The result is pixel-identical to timm's evaluation transform (tested against
torchvision). Only for extreme aspect ratios (resized image more than
``_MAX_RESIZED_AREA`` times the crop, e.g. a 1x5000 strip, which would otherwise blow up
into a huge intermediate image) are steps 1 and 2 fused into one PIL call that
resamples only the source region mapping onto the crop (``Image.resize(box=...)``):
same filter, scale and sample positions, equal up to float rounding (<= 1 grey level).

Tiny images (smaller than the crop) are *upscaled* by the same resize, not skipped:
the model still sees a valid input and the sample keeps its identity; results for
such images are as blurry as the image is small.

Stimuli (``vitprobe.data.stimuli``) are generated at the model's input resolution and
skip steps 1-2, so that their elements stay aligned with the patch grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vitprobe.errors import ImageSourceError
from vitprobe.models.preprocess import PreprocessConfig

if TYPE_CHECKING:
    import torch

__all__ = [
    "INTERPOLATIONS",
    "normalize",
    "prepare",
    "preprocess",
    "resize_crop",
    "resized_size",
]

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# above this ratio of resized to cropped area, resample only the cropped region
_MAX_RESIZED_AREA = 16


def _resample(cfg: PreprocessConfig) -> Image.Resampling:
    try:
        return INTERPOLATIONS[cfg.interpolation.lower()]
    except KeyError:
        raise ImageSourceError(
            f"unknown interpolation {cfg.interpolation!r}; use one of {sorted(INTERPOLATIONS)}"
        ) from None


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``resize_size`` pixels,
    with torchvision's truncation of the longer side."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def resize_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """Resize the shorter side to ``cfg.resize_size`` and centre-crop ``cfg.input_size``.

    Args:
        img: an RGB ``PIL.Image`` of any size (>= 1x1).
        cfg: the model's preprocessing.

    Returns:
        An RGB image of exactly ``cfg.input_size`` = (height, width) pixels.
    """
    crop_h, crop_w = cfg.input_size
    width, height = img.size
    new_w, new_h = resized_size(width, height, cfg.resize_size)
    resample = _resample(cfg)
    if crop_w > new_w or crop_h > new_h:
        return _resize_pad_crop(img, (new_w, new_h), (crop_h, crop_w), resample)
    left = round((new_w - crop_w) / 2.0)
    top = round((new_h - crop_h) / 2.0)
    if new_w * new_h <= _MAX_RESIZED_AREA * crop_w * crop_h:
        # the reference path: exactly torchvision's Resize + CenterCrop on PIL images
        resized = img.resize((new_w, new_h), resample)
        return resized.crop((left, top, left + crop_w, top + crop_h))
    scale_x, scale_y = width / new_w, height / new_h
    box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
    return img.resize((crop_w, crop_h), resample, box=box)


def _resize_pad_crop(
    img: Image.Image, new_size: tuple[int, int], crop: tuple[int, int], resample: Image.Resampling
) -> Image.Image:
    crop_h, crop_w = crop
    resized = img.resize(new_size, resample)
    new_w, new_h = new_size
    canvas_w, canvas_h = max(new_w, crop_w), max(new_h, crop_h)
    # torchvision pads (crop - size) // 2 on the left/top, the rest right/bottom, with 0
    canvas = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
    canvas.paste(resized, ((canvas_w - new_w) // 2, (canvas_h - new_h) // 2))
    left = round((canvas_w - crop_w) / 2.0)
    top = round((canvas_h - crop_h) / 2.0)
    return canvas.crop((left, top, left + crop_w, top + crop_h))


def prepare(image: Image.Image | np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Geometry part of the pipeline, run in loader workers.

    Args:
        image: a decoded RGB ``PIL.Image`` (resized and cropped here), or a float
            array (H, W, 3) in [0, 1] already at ``cfg.input_size`` (stimuli).

    Returns:
        (H, W, 3) array: uint8 for photos, float32 in [0, 1] for stimuli.
    """
    if isinstance(image, np.ndarray):
        if image.shape != (*cfg.input_size, 3):
            raise ImageSourceError(
                f"stimulus of shape {image.shape} does not match the model input "
                f"{cfg.input_size}; stimuli are generated at the input resolution"
            )
        return image.astype(np.float32, copy=False)
    # a writable copy: torch warns on (and must not write into) read-only PIL buffers
    return np.array(resize_crop(image, cfg), dtype=np.uint8)


def normalize(batch: np.ndarray | torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(B, H, W, 3) uint8 in [0, 255] or float in [0, 1] -> normalised float32
    (B, 3, H, W), contiguous: ``(x - mean) / std`` per channel."""
    import torch

    tensor = torch.as_tensor(batch)
    if tensor.dtype == torch.uint8:
        tensor = tensor.to(torch.float32).div_(255.0)
    else:
        tensor = tensor.to(torch.float32)
    mean = torch.tensor(cfg.mean, dtype=torch.float32)
    std = torch.tensor(cfg.std, dtype=torch.float32)
    tensor = (tensor - mean).div_(std)
    return tensor.permute(0, 3, 1, 2).contiguous()


def preprocess(image: Image.Image | np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """The whole pipeline for one image: float32 tensor (3, H, W), normalised."""
    return normalize(prepare(image, cfg)[None], cfg)[0]
