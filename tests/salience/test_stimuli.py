"""Stimulus ground truth: singleton position and feature values are exact, patch
alignment is exact, and the same seed gives the same stimuli."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from vitprobe.data.stimuli import element_array, grating_disc
from vitprobe.salience.stimuli import (
    FEATURES,
    conjunction_stimulus,
    popout_stimulus,
    surround_stimulus,
)

SIZE, PATCH = (224, 224), 14


def bar_orientation(tile: np.ndarray, pad: int = 512) -> float:
    """Bar orientation (degrees, [0, 180)) from the peak of the zero-padded spectrum."""
    gray = tile[:, :, 0] - tile[:, :, 0].mean()
    spectrum = np.abs(np.fft.fft2(gray, s=(pad, pad)))
    spectrum[0, 0] = 0.0
    row, col = np.unravel_index(np.argmax(spectrum), spectrum.shape)
    ky = row if row <= pad // 2 else row - pad
    kx = col if col <= pad // 2 else col - pad
    wave = np.degrees(np.arctan2(-ky, kx))  # screen coordinates, y up
    return float((wave - 90.0) % 180.0)


def angle_difference(a: float, b: float) -> float:
    return abs((a - b + 90.0) % 180.0 - 90.0)


def cell_pixels(image: np.ndarray, weights_row: np.ndarray) -> np.ndarray:
    """The pixels of the patches an element covers (aligned arrays)."""
    grid = image.shape[0] // PATCH
    rows, cols = np.divmod(np.nonzero(weights_row)[0], grid)
    return image[rows.min() * PATCH:(rows.max() + 1) * PATCH,
                 cols.min() * PATCH:(cols.max() + 1) * PATCH]


@pytest.mark.parametrize("orientation", [0.0, 22.5, 60.0, 90.0, 135.0])
def test_disc_orientation_measured_back_from_the_spectrum(orientation):
    tile = grating_disc(112, orientation=orientation, cycles=8.0)
    assert angle_difference(bar_orientation(tile), orientation) < 1.5


@pytest.mark.parametrize("level", [0.25, 0.5, 1.0])
def test_orientation_singleton_position_and_value(level):
    image, weights, s, meta = popout_stimulus(SIZE, PATCH, feature="orientation", level=level,
                                              seed=3, cell=4)
    cells = [cell_pixels(image, w) for w in weights]
    # the singleton is the only cell that differs from the others, at the stated position
    differs = [i for i, c in enumerate(cells) if not np.array_equal(c, cells[(s + 1) % 16])]
    assert differs == [s]
    assert tuple(meta["singleton_cell"]) == divmod(s, 4)
    measured = bar_orientation(cells[s])
    assert angle_difference(measured, meta["orientation"] + 90.0 * level) < 1.5
    assert angle_difference(bar_orientation(cells[(s + 1) % 16]), meta["orientation"]) < 1.5


def test_colour_singleton_hue_from_pixels():
    image, weights, s, meta = popout_stimulus(SIZE, PATCH, feature="colour", level=0.5, seed=1)
    for index, expected in ((s, meta["base"] + 90.0), ((s + 1) % 64, meta["base"])):
        px = cell_pixels(image, weights[index]).reshape(-1, 3)
        coloured = px[np.abs(px - 0.5).max(1) > 0.02]  # the disc, not the grey margin
        hues = np.array([colorsys.rgb_to_hsv(*p)[0] * 360.0 for p in coloured])
        assert len(hues) > 50
        assert np.abs((hues - expected + 180.0) % 360.0 - 180.0).max() < 0.01


def test_contrast_and_size_singletons_are_exact():
    image, weights, s, _ = popout_stimulus(SIZE, PATCH, feature="contrast", level=1.0,
                                           seed=2)
    px = cell_pixels(image, weights[s])
    assert px.max() == pytest.approx(1.0, abs=0.01) and px.min() == pytest.approx(0.0, abs=0.01)
    other = cell_pixels(image, weights[(s + 1) % 64])
    assert other.max() == pytest.approx(0.5 + 0.5 * 0.3, abs=0.01)
    image, weights, s, _ = popout_stimulus(SIZE, PATCH, feature="size", level=1.0, seed=2)
    disc = np.abs(cell_pixels(image, weights[s]) - 0.5).max(-1) > 1e-6
    small = np.abs(cell_pixels(image, weights[(s + 1) % 64]) - 0.5).max(-1) > 1e-6
    # the disc's extent doubles (diameter 0.5 -> 1.0 of the largest)
    assert np.ptp(np.nonzero(disc.any(0))[0]) + 1 == pytest.approx(
        2 * (np.ptp(np.nonzero(small.any(0))[0]) + 1), abs=2)


def test_patch_alignment_is_exact():
    arr = element_array(SIZE, PATCH, [{"orientation": 0.0}] * 64, cell=2)
    assert set(np.unique(arr.weights)) == {0.0, 1.0}
    assert (arr.weights.sum(1) == 4).all() and (arr.weights.sum(0) == 1).all()
    # straddling: every cell covers 3 x 3 patches with weights 1/4, 1/2, 1
    arr = element_array(SIZE, PATCH, [{"orientation": 0.0}] * 49, cell=2, offset=PATCH // 2)
    assert arr.weights.shape == (49, 256)
    assert np.allclose(arr.weights.sum(1), 4.0)
    assert sorted(np.unique(arr.weights)) == [0.0, 0.25, 0.5, 1.0]
    assert ((arr.weights > 0).sum(1) == 9).all()
    # nothing is drawn outside an element's cell
    y, x = arr.origin[10]
    single = element_array(SIZE, PATCH, [None] * 10 + [{"orientation": 0.0}] + [None] * 38,
                           cell=2, offset=PATCH // 2)
    drawn = np.abs(single.image - 0.5).max(-1) > 0
    assert drawn[y:y + 28, x:x + 28].any() and not drawn.sum() - drawn[y:y + 28, x:x + 28].sum()


@pytest.mark.parametrize("feature", FEATURES)
def test_same_seed_same_stimuli(feature):
    a = popout_stimulus(SIZE, PATCH, feature=feature, level=0.5, jitter=0.3, seed=7)
    b = popout_stimulus(SIZE, PATCH, feature=feature, level=0.5, jitter=0.3, seed=7)
    c = popout_stimulus(SIZE, PATCH, feature=feature, level=0.5, jitter=0.3, seed=8)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])
    # the level does not move the singleton or change the distractors (paired design)
    d = popout_stimulus(SIZE, PATCH, feature=feature, level=1.0, jitter=0.3, seed=7)
    assert d[2] == a[2]
    keep = np.ones(64, bool)
    keep[a[2]] = False
    assert np.array_equal(a[3]["values"][keep], d[3]["values"][keep])


def test_null_level_has_no_singleton_and_jitter_spreads_distractors():
    image, weights, s, meta = popout_stimulus(SIZE, PATCH, feature="orientation", level=0.0,
                                              seed=4)
    cells = [cell_pixels(image, w) for w in weights]
    assert all(np.array_equal(c, cells[0]) for c in cells)
    _, _, s, meta = popout_stimulus(SIZE, PATCH, feature="orientation", level=0.0, jitter=0.3,
                                    seed=4)
    spread = meta["values"] - meta["base"]
    assert np.abs(spread).max() <= 0.3 * 90 / 2 and spread[s] == 0.0 and np.ptp(spread) > 10


def test_conjunction_target_shares_each_feature_with_half_the_distractors():
    _, _, t, meta = conjunction_stimulus(SIZE, PATCH, target=True, seed=0)
    kinds = meta["kinds"]
    o_t, h_t = kinds[t]
    others = [k for i, k in enumerate(kinds) if i != t]
    assert kinds.count((o_t, h_t)) == 1
    assert 0.4 < np.mean([o == o_t for o, _ in others]) < 0.6
    assert 0.4 < np.mean([h == h_t for _, h in others]) < 0.6


def test_surround_conditions_share_the_centre():
    stims = {rel: surround_stimulus(SIZE, PATCH, feature="orientation", relation=rel,
                                    distance=2, seed=5) for rel in ("none", "iso", "cross")}
    centre = {rel: cell_pixels(s[0], s[1][s[2]]) for rel, s in stims.items()}
    assert np.array_equal(centre["none"], centre["iso"])
    assert np.array_equal(centre["none"], centre["cross"])
    image, weights, c, meta = stims["iso"]
    surround = np.nonzero(meta["surround"])[0]
    assert c not in surround and len(surround) > 20
    # iso surround elements equal the centre, cross ones are rotated by 90 degrees
    assert np.array_equal(cell_pixels(image, weights[surround[0]]), centre["iso"])
    cross = cell_pixels(stims["cross"][0], weights[surround[0]])
    assert angle_difference(bar_orientation(cross), meta["orientation"] + 90.0) < 3.0
    # the gap: no drawn element at Chebyshev distance 1
    near = [i for i in range(64) if max(abs(i // 8 - c // 8), abs(i % 8 - c % 8)) == 1]
    assert all(np.all(cell_pixels(image, weights[i]) == 0.5) for i in near)
