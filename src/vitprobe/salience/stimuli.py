"""The salience battery's stimuli: pop-out search arrays, conjunctions, centre-surround.

Every stimulus is an array of grating discs (:func:`vitprobe.data.stimuli.grating_disc`)
rendered by :func:`vitprobe.data.stimuli.element_array` at the model's input
resolution, so that each element's patch tokens are known exactly (``weights``).

Pop-out arrays: identical distractors and one singleton that differs in one feature
by ``level * MAX_DIFFERENCE[feature]``:

==============  ===================================  ==================  ===========
feature         distractors                           singleton           max diff.
==============  ===================================  ==================  ===========
orientation     achromatic, random orientation o      o + diff (degrees)  90 deg
colour          hue h (random), orientation o         h + diff (degrees)  180 deg
contrast        Michelson contrast 0.3                0.3 + diff          0.7
size            diameter 0.5 (of the cell's largest)  0.5 * (1 + diff)    1.0 (2x)
==============  ===================================  ==================  ===========

Level 0 is the null: the "singleton" is a designated distractor, pixel-identical to
the rest. ``jitter`` (a fraction of the maximum difference) spreads each distractor's
feature uniformly over ``base +- jitter * max / 2`` (distractor heterogeneity); the
singleton keeps ``base + diff`` exactly. ``placement`` ``"aligned"`` puts every cell on
whole patches, ``"straddling"`` shifts the array by half a patch so each cell covers
parts of 3 x 3 patches.

The random choices of a stimulus (singleton cell, base orientation and hue, jitter
draws) come from ``numpy.random.default_rng([seed, feature, placement])`` and do not
depend on the level or the jitter: the curves against feature difference compare the
same positions and bases (a paired design), and the same seed gives the same stimuli.

Conjunctions (orientation x colour): distractors of two kinds, (o, h) and
(o + 90, h + 180), half each at random; the target (o, h + 180) shares each feature
with half the distractors. Its null puts an (o, h) element at the target cell.

Centre-surround: a centre element at one of the central cells and a surround filling
every cell at Chebyshev distance >= ``distance`` cells from it, either ``iso`` (the
centre's orientation or hue), ``cross`` (orthogonal orientation, complementary hue)
or ``none`` (grey), the centre unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitprobe.data.stimuli import array_grid, element_array

__all__ = [
    "FEATURES",
    "MAX_DIFFERENCE",
    "PLACEMENTS",
    "RELATIONS",
    "StimulusBatch",
    "conjunction_stimulus",
    "feature_difference",
    "popout_stimulus",
    "surround_stimulus",
]

FEATURES = ("orientation", "colour", "contrast", "size")
#: the largest feature difference of each feature (level 1)
MAX_DIFFERENCE = {"orientation": 90.0, "colour": 180.0, "contrast": 0.7, "size": 1.0}
UNITS = {"orientation": "degrees", "colour": "degrees of hue", "contrast": "Michelson contrast",
         "size": "diameter ratio - 1"}
PLACEMENTS = ("aligned", "straddling")
RELATIONS = ("none", "iso", "cross")
SURROUND_FEATURES = ("orientation", "colour")

#: element defaults where a feature is not the one varied
_CONTRAST, _DIAMETER = 0.8, 0.7
_BASE_CONTRAST, _BASE_DIAMETER = 0.3, 0.5
_KEYS = {"orientation": 0, "colour": 1, "contrast": 2, "size": 3, "conjunction": 4,
         "surround": 5}


def feature_difference(feature: str, level: float) -> float:
    """The feature difference (in the feature's units, :data:`UNITS`) at ``level``."""
    return float(level) * MAX_DIFFERENCE[feature]


@dataclass
class StimulusBatch:
    """Stimuli with the tokens of their elements, ready for the model.

    Attributes
    ----------
    images : (N, H, W, 3) float32
        The stimuli in [0, 1].
    weights : (N, E, P) float32
        Patch-area fractions of each element's cell (zero rows pad arrays with fewer
        than E elements).
    target : (N,) int
        Index of the singleton, target or centre element.
    meta : list of dict
        What each stimulus is (feature, level, seed, values of every element, ...).
    """

    images: np.ndarray
    weights: np.ndarray
    target: np.ndarray
    meta: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def stack(cls, items: Sequence[tuple[np.ndarray, np.ndarray, int, dict]]) -> StimulusBatch:
        n_el = max(w.shape[0] for _, w, _, _ in items)
        n_p = items[0][1].shape[1]
        weights = np.zeros((len(items), n_el, n_p), dtype=np.float32)
        for i, (_, w, _, _) in enumerate(items):
            weights[i, : w.shape[0]] = w
        images = np.stack([im for im, _, _, _ in items])
        target = np.array([t for _, _, t, _ in items], dtype=np.int64)
        return cls(images, weights, target, [m for _, _, _, m in items])

    def __len__(self) -> int:
        return len(self.images)


def _geometry(size: tuple[int, int], patch: int, cell: int, placement: str):
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
    offset = 0 if placement == "aligned" else patch // 2
    return offset, array_grid(size, patch, cell=cell, offset=offset)


def _rng(seed: int, kind: str, placement: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _KEYS[kind], PLACEMENTS.index(placement)])


def popout_stimulus(
    size: tuple[int, int],
    patch: int,
    *,
    feature: str,
    level: float,
    jitter: float = 0.0,
    placement: str = "aligned",
    seed: int = 0,
    cell: int = 2,
) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """One pop-out search array (module docstring).

    Parameters
    ----------
    size : (int, int)
        Image pixels (model input size).
    patch : int
        Patch side, pixels.
    feature : str
        One of :data:`FEATURES`.
    level : float
        Feature difference as a fraction of :data:`MAX_DIFFERENCE` (0: the null).
    jitter : float
        Spread of the distractors' feature as a fraction of the maximum difference.
    placement : str
        ``"aligned"`` or ``"straddling"``.
    seed : int
        Picks the singleton cell, the base orientation and hue, the jitter draws.
    cell : int
        Cell side in patches.

    Returns
    -------
    image : (H, W, 3) float32
    weights : (E, P) float32
    singleton : int
        Element index of the singleton.
    meta : dict
        ``feature``, ``level``, ``difference``, ``jitter``, ``placement``, ``seed``,
        ``singleton_cell``, ``values`` (the varied feature of every element, (E,)),
        ``base``.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {FEATURES}, not {feature!r}")
    offset, (rows, cols) = _geometry(size, patch, cell, placement)
    n = rows * cols
    rng = _rng(seed, feature, placement)
    singleton = int(rng.integers(n))
    orientation = float(rng.uniform(0.0, 180.0))
    hue = float(rng.uniform(0.0, 360.0))
    spread = rng.uniform(-0.5, 0.5, size=n)
    spread[singleton] = 0.0
    diff_max = MAX_DIFFERENCE[feature]
    base = {"orientation": orientation, "colour": hue, "contrast": _BASE_CONTRAST,
            "size": _BASE_DIAMETER}[feature]
    values = base + jitter * diff_max * spread
    if feature == "size":  # jitter and difference are relative to the base diameter
        values = base * (1.0 + jitter * diff_max * spread)
        values[singleton] = base * (1.0 + level * diff_max)
    else:
        values[singleton] = base + level * diff_max
    elements = []
    for value in values:
        params = {"orientation": orientation, "hue": None, "contrast": _CONTRAST,
                  "diameter": _DIAMETER}
        if feature == "colour":  # coloured gratings only where colour is the feature
            params["hue"] = hue
        params[_PARAM[feature]] = float(value)
        elements.append(params)
    arr = element_array(size, patch, elements, cell=cell, offset=offset)
    meta = {"experiment": "popout", "feature": feature, "level": float(level),
            "difference": feature_difference(feature, level), "jitter": float(jitter),
            "placement": placement, "seed": int(seed),
            "singleton_cell": tuple(int(v) for v in arr.cells[singleton]),
            "values": values.astype(np.float64), "base": float(base),
            "orientation": orientation}
    return arr.image, arr.weights, singleton, meta


_PARAM = {"orientation": "orientation", "colour": "hue", "contrast": "contrast",
          "size": "diameter"}


def conjunction_stimulus(
    size: tuple[int, int],
    patch: int,
    *,
    target: bool,
    placement: str = "aligned",
    seed: int = 0,
    cell: int = 2,
) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """An orientation x colour conjunction array (module docstring).

    Returns ``(image, weights, target_index, meta)`` as :func:`popout_stimulus`;
    ``meta["kinds"]`` holds each element's (orientation, hue).
    """
    offset, (rows, cols) = _geometry(size, patch, cell, placement)
    n = rows * cols
    rng = _rng(seed, "conjunction", placement)
    index = int(rng.integers(n))
    orientation = float(rng.uniform(0.0, 180.0))
    hue = float(rng.uniform(0.0, 360.0))
    kind = rng.permutation(np.arange(n) % 2)  # half (o, h), half (o + 90, h + 180)
    kinds = [(orientation + 90.0 * k, (hue + 180.0 * k) % 360.0) for k in kind]
    kinds[index] = (orientation, (hue + 180.0) % 360.0) if target else (orientation, hue)
    elements = [{"orientation": o, "hue": h, "contrast": _CONTRAST, "diameter": _DIAMETER}
                for o, h in kinds]
    arr = element_array(size, patch, elements, cell=cell, offset=offset)
    meta = {"experiment": "conjunction", "target": bool(target), "placement": placement,
            "seed": int(seed), "singleton_cell": tuple(int(v) for v in arr.cells[index]),
            "kinds": kinds}
    return arr.image, arr.weights, index, meta


def surround_stimulus(
    size: tuple[int, int],
    patch: int,
    *,
    feature: str,
    relation: str,
    distance: int,
    seed: int = 0,
    cell: int = 2,
) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """A centre element with an iso, cross or no surround (module docstring).

    Returns ``(image, weights, centre_index, meta)``; ``meta["surround"]`` is a bool
    (E,) marking the surround cells (also for ``relation="none"``, where they are grey).
    """
    if feature not in SURROUND_FEATURES:
        raise ValueError(f"surround feature must be one of {SURROUND_FEATURES}, not {feature!r}")
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, not {relation!r}")
    rows, cols = array_grid(size, patch, cell=cell)
    rng = _rng(seed, "surround", "aligned")
    centre = (rows // 2 - int(rng.integers(2)), cols // 2 - int(rng.integers(2)))
    orientation = float(rng.uniform(0.0, 180.0))
    hue = float(rng.uniform(0.0, 360.0)) if feature == "colour" else None
    cells = np.array([(r, c) for r in range(rows) for c in range(cols)])
    chebyshev = np.abs(cells - np.array(centre)).max(axis=1)
    surround = chebyshev >= int(distance)
    centre_index = int(centre[0] * cols + centre[1])
    centre_params = {"orientation": orientation, "hue": hue, "contrast": _CONTRAST,
                     "diameter": _DIAMETER}
    other = dict(centre_params)
    if relation == "cross":
        if feature == "orientation":
            other["orientation"] = orientation + 90.0
        else:
            other["hue"] = (hue + 180.0) % 360.0
    elements: list[dict | None] = []
    for i in range(len(cells)):
        if i == centre_index:
            elements.append(centre_params)
        elif surround[i] and relation != "none":
            elements.append(other)
        else:
            elements.append(None)
    arr = element_array(size, patch, elements, cell=cell)
    meta = {"experiment": "surround", "feature": feature, "relation": relation,
            "distance": int(distance), "seed": int(seed), "centre_cell": centre,
            "surround": surround, "orientation": orientation, "hue": hue}
    return arr.image, arr.weights, centre_index, meta
