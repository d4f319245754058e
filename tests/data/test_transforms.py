"""The preprocessing reproduces timm/torchvision evaluation transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vitprobe.data.transforms import normalize, prepare, preprocess, resize_crop
from vitprobe.models.preprocess import PreprocessConfig

from .conftest import noise_rgb

MODES = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def reference(img: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    return T.Compose(
        [
            T.Resize(cfg.resize_size, interpolation=MODES[cfg.interpolation]),
            T.CenterCrop(cfg.input_size),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )(img)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(500, 375), (375, 500), (257, 256), (224, 224), (7, 5)])
def test_matches_torchvision_pipeline(interpolation, size):
    cfg = PreprocessConfig(interpolation=interpolation)
    img = Image.fromarray(noise_rgb(size[1], size[0], seed=sum(size)))
    ours = preprocess(img, cfg)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference(img, cfg), atol=1e-5, rtol=0)


def test_crop_larger_than_resize_is_zero_padded_like_torchvision():
    cfg = PreprocessConfig(input_size=(224, 224), resize_size=200)
    img = Image.fromarray(noise_rgb(100, 300))
    torch.testing.assert_close(preprocess(img, cfg), reference(img, cfg), atol=1e-5, rtol=0)


def test_extreme_aspect_ratio_stays_cheap_and_close():
    cfg = PreprocessConfig()
    img = Image.fromarray(noise_rgb(2, 3000))
    out = resize_crop(img, cfg)  # a full resize would be 256 x 384000 pixels
    assert out.size == (224, 224)
    ref = T.CenterCrop(224)(T.Resize(256, interpolation=MODES["bicubic"])(img))
    assert np.abs(np.asarray(out, int) - np.asarray(ref, int)).max() <= 1


def test_tiny_images_are_upscaled_not_skipped():
    img = Image.new("RGB", (3, 2), (0, 0, 255))
    out = prepare(img, PreprocessConfig(input_size=(224, 224), resize_size=256))
    assert out.shape == (224, 224, 3) and (out == [0, 0, 255]).all()


def test_deterministic_and_normalised():
    cfg = PreprocessConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = Image.fromarray(noise_rgb(300, 400))
    assert torch.equal(preprocess(img, cfg), preprocess(img, cfg))
    white = normalize(np.full((1, 4, 4, 3), 255, np.uint8), cfg)
    assert white.shape == (1, 3, 4, 4) and torch.allclose(white, torch.full_like(white, 2.0))
    grey = normalize(np.full((1, 4, 4, 3), 0.5, np.float32), cfg)
    assert torch.allclose(grey, torch.zeros_like(grey))


def test_stimulus_arrays_must_match_the_input_size():
    from vitprobe.errors import ImageSourceError

    with pytest.raises(ImageSourceError, match="input resolution"):
        prepare(np.zeros((100, 100, 3), np.float32), PreprocessConfig())
