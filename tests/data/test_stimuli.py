"""Generated stimuli have their defining properties, and load at the model resolution."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vitprobe.data import make_loader, open_images
from vitprobe.data.stimuli import grating, odd_one_out, pink_noise, white_noise
from vitprobe.errors import ImageSourceError
from vitprobe.models.preprocess import PreprocessConfig


def bar_orientation_from_fft(image: np.ndarray) -> tuple[float, float]:
    """(bar orientation in degrees [0, 180), cycles per image) from the FFT peak."""
    gray = image[:, :, 0] - image[:, :, 0].mean()
    spectrum = np.abs(np.fft.fft2(gray))
    row, col = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    size = gray.shape[0]
    ky = row if row <= size // 2 else row - size  # cycles per image, down the rows
    kx = col if col <= size // 2 else col - size  # cycles per image, to the right
    wave_angle = np.degrees(np.arctan2(-ky, kx))  # on screen, y up
    return float((wave_angle - 90.0) % 180.0), float(np.hypot(kx, ky))


def angle_difference(a: float, b: float) -> float:
    return abs((a - b + 90.0) % 180.0 - 90.0)


@pytest.mark.parametrize("orientation", [0.0, 30.0, 45.0, 90.0, 120.0, 157.5])
def test_grating_orientation_from_fft_peak(orientation):
    image = grating(224, orientation, cycles_per_image=16, phase_deg=30, contrast=0.8)
    assert image.shape == (224, 224, 3) and image.dtype == np.float32
    assert image.min() >= 0.1 - 1e-6 and image.max() <= 0.9 + 1e-6  # contrast 0.8
    measured, frequency = bar_orientation_from_fft(image)
    assert angle_difference(measured, orientation) < 2.0
    assert abs(frequency - 16) < 1.0


def test_grating_zero_is_horizontal_bars():
    image = grating(64, 0.0, 4)[:, :, 0]
    assert np.allclose(image, image[:, :1])  # constant along each row
    assert not np.allclose(image, image[:1, :])


def amplitude_slope(image: np.ndarray) -> float:
    """Slope of log radially-averaged amplitude spectrum against log frequency."""
    gray = image[:, :, 0] - image[:, :, 0].mean()
    size = gray.shape[0]
    amplitude = np.abs(np.fft.fft2(gray))
    f = np.fft.fftfreq(size) * size
    radius = np.hypot(f[:, None], f[None, :])
    bands = np.unique(np.round(np.geomspace(2, size / 2 - 1, 30)))
    x, y = [], []
    for low, high in itertools.pairwise(bands):
        ring = (radius >= low) & (radius < high)
        x.append(np.log(radius[ring].mean()))
        y.append(np.log(amplitude[ring].mean()))
    return float(np.polyfit(x, y, 1)[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_pink_noise_has_a_one_over_f_amplitude_spectrum(seed):
    image = pink_noise(256, 1.0, np.random.default_rng(seed))
    assert abs(amplitude_slope(image) + 1.0) < 0.1
    assert abs(image.mean() - 0.5) < 0.02 and abs(image.std() - 0.15) < 0.01
    assert abs(amplitude_slope(white_noise(256, seed)) - 0.0) < 0.1
    steeper = pink_noise(256, 1.5, seed)
    assert abs(amplitude_slope(steeper) + 1.5) < 0.1


def patches(image: np.ndarray, patch: int) -> np.ndarray:
    rows, cols = image.shape[0] // patch, image.shape[1] // patch
    grid = image[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch, 3)
    return grid.transpose(0, 2, 1, 3, 4).reshape(rows * cols, patch, patch, 3)


def structure_orientation(tile: np.ndarray) -> float:
    """Bar orientation in degrees from the structure tensor of a tile."""
    gy, gx = np.gradient(tile[:, :, 0].astype(float))
    gy = -gy  # screen y points up
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    gradient_angle = 0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))
    return (gradient_angle + 90.0) % 180.0


@pytest.mark.parametrize("feature", ["orientation", "colour"])
def test_odd_one_out_singleton_is_at_the_recorded_patch(feature):
    image, meta = odd_one_out(224, 16, feature=feature, rng=7, background=20.0)
    tiles = patches(image, 16)
    reference = tiles[(meta["singleton_patch"] + 1) % len(tiles)]
    differs = [i for i, tile in enumerate(tiles) if not np.array_equal(tile, reference)]
    assert differs == [meta["singleton_patch"]] == meta["singleton_patches"]
    row, col = meta["singleton_patch_rc"]
    assert row * 14 + col == meta["singleton_patch"] and meta["patch_grid"] == (14, 14)
    if feature == "orientation":
        odd = structure_orientation(tiles[meta["singleton_patch"]])
        assert angle_difference(structure_orientation(reference), 20.0) < 8
        assert angle_difference(odd, 110.0) < 8
    else:
        centre = tiles[meta["singleton_patch"]][8, 8]
        assert np.allclose(reference[8, 8], [1.0, 1 / 3, 0.0], atol=0.01)  # hue 20
        assert np.allclose(centre, [0.0, 2 / 3, 1.0], atol=0.01)  # hue 200


def test_odd_one_out_cells_of_several_patches():
    image, meta = odd_one_out((224, 224), 16, feature="colour", cell=2, singleton=(3, 5))
    assert meta["singleton_patches"] == [6 * 14 + 10, 6 * 14 + 11, 7 * 14 + 10, 7 * 14 + 11]
    tiles = patches(image, 32)
    assert not np.array_equal(tiles[3 * 7 + 5], tiles[0])
    assert sum(not np.array_equal(t, tiles[0]) for t in tiles) == 1


def test_stimulus_sources_and_geometry():
    gratings = open_images("stimuli:gratings")
    assert len(gratings) == 12 * 4 * 4 and gratings.native_resolution
    assert gratings.ids[0] == "stimuli:gratings:0"
    random = open_images("stimuli:gratings?n=10&gen_seed=3")
    more = open_images("stimuli:gratings?n=20&gen_seed=3")
    assert [s.meta for s in random] == [s.meta for s in more][:10]  # stimulus i ignores n
    odd = open_images("stimuli:odd-one-out?n=6", n_images=3, seed=1)
    model = PreprocessConfig(input_size=(384, 384), resize_size=438)
    loader = make_loader(odd, model, patch_size=32, batch_size=8)
    (batch,) = list(loader)
    assert batch["pixels"].shape == (3, 3, 384, 384) and batch["ids"] == odd.ids
    assert all(m["patch_grid"] == (12, 12) and m["singleton_patch"] < 144 for m in batch["meta"])
    with pytest.raises(ImageSourceError, match="input resolution"):
        make_loader(open_images("stimuli:pink?size=224"), model)


def test_stimuli_pixels_are_not_resized():
    source = open_images("stimuli:gratings?n=2", n_images=1)
    cfg = PreprocessConfig(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    (batch,) = list(make_loader(source, cfg, patch_size=16))
    expected = source.load(0).transpose(2, 0, 1)
    assert np.allclose(batch["pixels"][0].numpy(), expected, atol=1e-6)
