"""The preprocessing a model expects, in one small record shared by every model family."""

from __future__ import annotations

from dataclasses import asdict, dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """How to turn a decoded RGB image into the model's input tensor.

    The pipeline (``vitprobe.data.transforms``) is: resize the shorter side to
    ``resize_size`` pixels with ``interpolation``, centre-crop ``input_size``
    (height, width), scale to [0, 1], then normalise with ``mean`` and ``std``.

    Attributes:
        input_size: (height, width) in pixels of the tensor the model consumes.
        resize_size: shorter-side length in pixels before the centre crop
            (``round(input_size / crop_pct)`` for timm-style configs).
        mean: per-channel mean (RGB, in [0, 1] units) subtracted before ``std``.
        std: per-channel standard deviation (RGB, in [0, 1] units).
        interpolation: ``"bicubic"``, ``"bilinear"`` or ``"nearest"``.
    """

    input_size: tuple[int, int] = (224, 224)
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    @property
    def crop_pct(self) -> float:
        return min(self.input_size) / self.resize_size

    def to_dict(self) -> dict:
        return asdict(self)
