"""Generated stimuli: sinusoidal gratings, white and 1/f noise, odd-one-out and search arrays.

All generators return float32 arrays of shape (H, W, 3) with values in [0, 1]
(RGB, linear in the 8-bit scale: 0.5 is grey 127.5). They are made directly at the
model's *input* resolution and bypass resize and crop in the loader, so that a
stimulus element drawn in patch (r, c) is seen by exactly that patch token.

Conventions:

* ``size`` is an int (square) or (height, width) in pixels.
* Orientation is that of the *bars*, in degrees counter-clockwise from horizontal as
  seen on screen: 0 = horizontal bars (luminance varies down the image), 90 =
  vertical bars. The wave vector is perpendicular to the bars.
* Spatial frequency is in cycles per image, measured along ``min(H, W)``.
* Patch indices are row-major on the model's patch grid, without class/register
  tokens: flat index = row * (W // patch_size) + col (token index = flat index + the
  number of prefix tokens).
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitprobe.errors import ImageSourceError

__all__ = [
    "ElementArray",
    "element_array",
    "grating",
    "grating_disc",
    "odd_one_out",
    "pink_noise",
    "power_law_noise",
    "white_noise",
]


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray.astype(np.float32)[:, :, None], 3, axis=2)


def _screen_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) in pixels from the image centre; u to the right, v *up*."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    return cols - width / 2.0, height / 2.0 - rows


def _wave(
    u: np.ndarray, v: np.ndarray, orientation_deg: float, period_px: float, phase_deg: float
) -> np.ndarray:
    theta = np.deg2rad(orientation_deg)
    # distance along the normal of the bars (-sin, cos): varies across the bars
    across = -np.sin(theta) * u + np.cos(theta) * v
    return np.cos(2 * np.pi * across / period_px + np.deg2rad(phase_deg))


def grating(
    size: int | tuple[int, int],
    orientation_deg: float,
    cycles_per_image: float,
    phase_deg: float = 0.0,
    contrast: float = 1.0,
) -> np.ndarray:
    """A full-field sinusoidal luminance grating (grey, the same in R, G, B).

    Args:
        size: pixels, int or (height, width).
        orientation_deg: orientation of the bars (see module docstring).
        cycles_per_image: spatial frequency, cycles across ``min(H, W)`` pixels.
        phase_deg: phase of the cosine at the image centre (0: a bright bar there).
        contrast: Michelson contrast in [0, 1]; luminance is
            ``0.5 + 0.5 * contrast * cos(...)``.

    Returns:
        float32 (H, W, 3) in [0, 1].
    """
    height, width = _hw(size)
    if cycles_per_image <= 0:
        raise ValueError("cycles_per_image must be positive")
    u, v = _screen_coords(height, width)
    period = min(height, width) / cycles_per_image
    gray = 0.5 + 0.5 * contrast * _wave(u, v, orientation_deg, period, phase_deg)
    return _to_rgb(gray)


def power_law_noise(
    size: int | tuple[int, int],
    exponent: float,
    rng: np.random.Generator | int | None = None,
    *,
    contrast: float = 0.15,
    color: bool = False,
) -> np.ndarray:
    """Gaussian noise whose *amplitude* spectrum falls as 1 / f**exponent.

    ``exponent = 0`` is white noise; ``exponent = 1`` is pink (1/f) noise, the
    amplitude spectrum of natural images (their power spectrum falls as 1/f**2).
    The DC component is removed, the field scaled to RMS contrast ``contrast``
    (standard deviation, in [0, 1] units) around 0.5, then clipped to [0, 1]
    (at the default 0.15, values beyond 3.3 sd are clipped: under 0.1% of pixels).

    Args:
        size: pixels, int or (height, width).
        exponent: spectral slope of the amplitude spectrum (>= 0).
        rng: a numpy Generator or a seed.
        contrast: RMS contrast.
        color: independent fields for R, G, B (True) or one grey field (False).

    Returns:
        float32 (H, W, 3) in [0, 1].
    """
    height, width = _hw(size)
    rng = np.random.default_rng(rng)
    fy = np.fft.fftfreq(height)[:, None] * height
    fx = np.fft.fftfreq(width)[None, :] * width
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    gain = radius ** (-float(exponent))
    gain[0, 0] = 0.0  # zero mean
    channels = 3 if color else 1
    fields = []
    for _ in range(channels):
        white = rng.standard_normal((height, width))
        field = np.real(np.fft.ifft2(np.fft.fft2(white) * gain))
        field /= field.std() or 1.0
        fields.append(np.clip(0.5 + contrast * field, 0.0, 1.0))
    if color:
        return np.stack(fields, axis=2).astype(np.float32)
    return _to_rgb(fields[0])


def white_noise(
    size: int | tuple[int, int],
    rng: np.random.Generator | int | None = None,
    *,
    contrast: float = 0.15,
    color: bool = False,
) -> np.ndarray:
    """Gaussian white noise (flat spectrum); see :func:`power_law_noise`."""
    return power_law_noise(size, 0.0, rng, contrast=contrast, color=color)


def pink_noise(
    size: int | tuple[int, int],
    exponent: float = 1.0,
    rng: np.random.Generator | int | None = None,
    *,
    contrast: float = 0.15,
    color: bool = False,
) -> np.ndarray:
    """1/f noise with a natural-image amplitude spectrum; see :func:`power_law_noise`."""
    return power_law_noise(size, exponent, rng, contrast=contrast, color=color)


def hue_to_rgb(hue_deg: float) -> tuple[float, float, float]:
    """Fully saturated, full-value colour of hue ``hue_deg`` (0 red, 120 green, 240 blue)."""
    red, green, blue = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, 1.0, 1.0)
    return red, green, blue


def odd_one_out(
    size: int | tuple[int, int],
    patch_size: int,
    *,
    feature: str = "orientation",
    cell: int = 1,
    singleton: tuple[int, int] | None = None,
    background: float = 0.0,
    delta: float | None = None,
    cycles: float = 3.0,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """A field of identical elements on the patch grid, one of which differs.

    The image is divided into cells of ``cell`` x ``cell`` patches; every cell holds
    one element centred in it, on mid-grey (0.5), with a margin of
    ``max(1, cell_px // 8)`` pixels so that elements never touch. All elements are
    pixel-identical except the singleton's.

    * ``feature="orientation"``: elements are sinusoidal gratings (``cycles`` cycles
      across the cell, full contrast) in a circular aperture; ``background`` is the
      orientation of the others in degrees, the singleton's is ``background + delta``
      (default delta 90).
    * ``feature="colour"`` (or ``"color"``): elements are uniformly coloured squares;
      ``background`` is the hue in degrees of the others, the singleton's hue is
      ``background + delta`` (default delta 180, the complementary colour).

    Args:
        size: image pixels, int or (height, width); the model's input size.
        patch_size: the model's patch side in pixels.
        cell: element cell side, in patches.
        singleton: (row, col) of the singleton *cell*; random (from ``rng``) if None.
        rng: Generator or seed, used only when ``singleton`` is None.

    Returns:
        (image float32 (H, W, 3) in [0, 1], meta) where meta holds ``feature``,
        ``singleton_cell`` (row, col), ``singleton_patch`` (flat index of the cell's
        top-left patch; with ``cell=1`` *the* singleton patch), ``singleton_patch_rc``
        (its row, col), ``singleton_patches`` (flat indices of every patch of the
        singleton's cell), ``patch_grid`` (rows, cols), ``cell_grid`` (rows, cols),
        ``background`` and ``singleton_value`` (orientation or hue, degrees).
    """
    height, width = _hw(size)
    feature = "colour" if feature == "color" else feature
    if feature not in ("orientation", "colour"):
        raise ImageSourceError(
            f"odd-one-out feature must be orientation or colour, not {feature!r}"
        )
    cell_px = patch_size * cell
    grid = (height // cell_px, width // cell_px)
    if min(grid) < 2:
        raise ImageSourceError(
            f"odd-one-out: {height}x{width} px holds fewer than 2x2 cells of {cell_px} px"
        )
    if singleton is None:
        rng = np.random.default_rng(rng)
        singleton = (int(rng.integers(grid[0])), int(rng.integers(grid[1])))
    if delta is None:
        delta = 90.0 if feature == "orientation" else 180.0
    odd_value = background + delta
    common, odd = (_element(feature, cell_px, value, cycles) for value in (background, odd_value))
    image = np.full((height, width, 3), 0.5, dtype=np.float32)
    for row in range(grid[0]):
        for col in range(grid[1]):
            tile = odd if (row, col) == tuple(singleton) else common
            image[row * cell_px : (row + 1) * cell_px, col * cell_px : (col + 1) * cell_px] = tile
    patch_cols = width // patch_size
    top, left = singleton[0] * cell, singleton[1] * cell
    patches = [(top + i) * patch_cols + left + j for i in range(cell) for j in range(cell)]
    meta = {
        "stimulus": "odd-one-out",
        "feature": feature,
        "singleton_cell": tuple(singleton),
        "singleton_patch": patches[0],
        "singleton_patch_rc": (top, left),
        "singleton_patches": patches,
        "patch_size": patch_size,
        "patch_grid": (height // patch_size, patch_cols),
        "cell_patches": cell,
        "cell_grid": grid,
        "background": float(background) % (180.0 if feature == "orientation" else 360.0),
        "singleton_value": float(odd_value) % (180.0 if feature == "orientation" else 360.0),
    }
    return image, meta


def _element(feature: str, cell_px: int, value: float, cycles: float) -> np.ndarray:
    """One cell (cell_px, cell_px, 3) holding one element on grey."""
    margin = max(1, cell_px // 8)
    tile = np.full((cell_px, cell_px, 3), 0.5, dtype=np.float32)
    if feature == "colour":
        tile[margin : cell_px - margin, margin : cell_px - margin] = hue_to_rgb(value)
        return tile
    u, v = _screen_coords(cell_px, cell_px)
    # pixel centres, so the aperture and the bars are symmetric about the cell centre
    u, v = u + 0.5, v - 0.5
    wave = 0.5 + 0.5 * _wave(u, v, value, cell_px / cycles, 0.0)
    inside = np.hypot(u, v) <= cell_px / 2.0 - margin
    tile[inside] = _to_rgb(wave)[inside]
    return tile


#: grey of the background and of an achromatic grating's mean (0.5 in [0, 1] units)
GREY = 0.5


def grating_disc(
    cell_px: int,
    *,
    orientation: float = 0.0,
    hue: float | None = None,
    contrast: float = 1.0,
    diameter: float = 1.0,
    cycles: float = 3.0,
    phase: float = 0.0,
) -> np.ndarray:
    """One search-array element: a sinusoidal grating in a circular aperture on grey.

    The pixel value inside the aperture is ``colour * (0.5 + 0.5 * contrast * cos(...))``
    with ``colour = (1, 1, 1)`` (achromatic: the disc's mean equals the grey
    background, so only the grating makes it visible) or the fully saturated colour of
    ``hue`` (so every pixel of the disc has exactly that hue). The grating's period is
    ``cell_px / cycles`` whatever the diameter, so size changes leave spatial frequency
    alone. The aperture's largest diameter is ``cell_px - 2 * margin`` with
    ``margin = max(1, cell_px // 8)``: elements in neighbouring cells never touch.

    Parameters
    ----------
    cell_px : int
        Side of the square tile, pixels.
    orientation : float
        Bar orientation, degrees counter-clockwise from horizontal (module docstring).
    hue : float or None
        Hue in degrees (0 red, 120 green, 240 blue) or None for an achromatic grating.
    contrast : float
        Michelson contrast of the grating, in [0, 1].
    diameter : float
        Aperture diameter as a fraction of the largest that fits, in (0, 1].
    cycles : float
        Grating cycles across ``cell_px`` pixels.
    phase : float
        Phase of the cosine at the tile centre, degrees.

    Returns
    -------
    numpy.ndarray
        float32 (cell_px, cell_px, 3) in [0, 1].
    """
    if not 0.0 < diameter <= 1.0:
        raise ValueError(f"diameter must be in (0, 1], got {diameter}")
    if not 0.0 <= contrast <= 1.0:
        raise ValueError(f"contrast must be in [0, 1], got {contrast}")
    margin = max(1, cell_px // 8)
    tile = np.full((cell_px, cell_px, 3), GREY, dtype=np.float32)
    u, v = _screen_coords(cell_px, cell_px)
    # pixel centres, so the aperture and the bars are symmetric about the tile centre
    u, v = u + 0.5, v - 0.5
    wave = 0.5 + 0.5 * contrast * _wave(u, v, orientation, cell_px / cycles, phase)
    inside = np.hypot(u, v) <= diameter * (cell_px / 2.0 - margin)
    colour = np.ones(3) if hue is None else np.asarray(hue_to_rgb(hue))
    tile[inside] = (wave[inside, None] * colour[None, :]).astype(np.float32)
    return tile


@dataclass(frozen=True)
class ElementArray:
    """A rendered array of elements and which patch tokens each element covers.

    Attributes
    ----------
    image : (H, W, 3) float32
        The stimulus in [0, 1], at the model's input resolution.
    weights : (n_elements, n_patches) float32
        ``weights[e, p]``: the fraction of patch ``p``'s area inside element ``e``'s
        cell (1 for a cell aligned to the grid, 1/4, 1/2 for one straddling borders);
        patches in row-major order without prefix tokens.
    cells : (n_elements, 2) int
        (row, col) of each element's cell, row-major order (element index = row *
        cell_cols + col).
    origin : (n_elements, 2) int
        Pixel (y, x) of each cell's top-left corner.
    """

    image: np.ndarray
    weights: np.ndarray
    cells: np.ndarray
    origin: np.ndarray


def element_array(
    size: int | tuple[int, int],
    patch_size: int,
    elements: Sequence[Mapping[str, Any] | None],
    *,
    cell: int = 2,
    offset: int | tuple[int, int] = 0,
) -> ElementArray:
    """Render grating discs (:func:`grating_disc`) in a regular array of cells on grey.

    Cells are ``cell * patch_size`` pixels square and start at pixel ``offset``
    (y, x): offset 0 aligns every cell with whole patches; ``patch_size // 2`` makes
    every cell straddle patch borders. The array holds as many whole cells as fit.

    Parameters
    ----------
    size : int or (int, int)
        Image pixels (the model's input size).
    patch_size : int
        The model's patch side, pixels.
    elements : sequence of mappings or None
        Keyword arguments of :func:`grating_disc` per cell, row-major (``None``: an
        empty grey cell); its length must equal the number of cells
        (:func:`array_grid`).
    cell : int
        Cell side in patches.
    offset : int or (int, int)
        Pixel offset (y, x) of the first cell.

    Returns
    -------
    ElementArray
    """
    height, width = _hw(size)
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    rows, cols = array_grid(size, patch_size, cell=cell, offset=(oy, ox))
    if len(elements) != rows * cols:
        raise ValueError(f"{len(elements)} elements for a {rows}x{cols} array of cells")
    cell_px = cell * patch_size
    image = np.full((height, width, 3), GREY, dtype=np.float32)
    cells = np.array([(r, c) for r in range(rows) for c in range(cols)], dtype=np.int64)
    origin = np.stack([oy + cells[:, 0] * cell_px, ox + cells[:, 1] * cell_px], axis=1)
    for (y, x), params in zip(origin, elements, strict=True):
        if params is not None:
            image[y : y + cell_px, x : x + cell_px] = grating_disc(cell_px, **params)
    weights = _cell_patch_weights((height, width), patch_size, origin, cell_px)
    return ElementArray(image, weights, cells, origin)


def array_grid(
    size: int | tuple[int, int], patch_size: int, *, cell: int = 2,
    offset: int | tuple[int, int] = 0,
) -> tuple[int, int]:
    """(rows, cols) of the cells :func:`element_array` fits into the image."""
    height, width = _hw(size)
    oy, ox = (offset, offset) if isinstance(offset, int) else offset
    cell_px = cell * patch_size
    rows, cols = (height - oy) // cell_px, (width - ox) // cell_px
    if min(rows, cols) < 2:
        raise ImageSourceError(
            f"element array: {height}x{width} px at offset {(oy, ox)} holds fewer than "
            f"2x2 cells of {cell_px} px"
        )
    return rows, cols


def _cell_patch_weights(
    size: tuple[int, int], patch_size: int, origin: np.ndarray, cell_px: int
) -> np.ndarray:
    """(n_cells, n_patches): fraction of each patch's area inside each cell (exact)."""
    height, width = size
    prow, pcol = height // patch_size, width // patch_size
    edges_y = np.arange(prow) * patch_size
    edges_x = np.arange(pcol) * patch_size

    def overlap(start: np.ndarray, edges: np.ndarray) -> np.ndarray:
        lo = np.maximum(start[:, None], edges[None, :])
        hi = np.minimum(start[:, None] + cell_px, edges[None, :] + patch_size)
        return np.clip(hi - lo, 0, None) / patch_size

    wy, wx = overlap(origin[:, 0], edges_y), overlap(origin[:, 1], edges_x)
    return (wy[:, :, None] * wx[:, None, :]).reshape(len(origin), -1).astype(np.float32)
