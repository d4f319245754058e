"""Generated stimuli as an image source: ``stimuli:<kind>[?options]``.

Kinds and options (all optional):

* ``gratings`` - full-field sinusoidal gratings. By default the full grid of
  ``orientations`` (count, evenly spaced in [0, 180), default 12) x ``cpi`` (cycles per
  image, comma list, default 4,8,16,32) x ``phases`` (count in [0, 360), default 4) x
  ``contrast`` (comma list, default 1): 192 stimuli. With ``n=<int>``, ``n`` random
  gratings instead: orientation uniform in [0, 180), cycles per image log-uniform
  between min and max of ``cpi``, phase uniform, contrast drawn from ``contrast``.
* ``noise`` - white noise; ``pink`` - 1/f noise (``exponent``, default 1, is the slope
  of the amplitude spectrum). ``n`` (default 64), ``contrast`` (RMS, default 0.15),
  ``color`` (0/1, default 0: grey).
* ``odd-one-out`` - arrays of identical elements with one singleton. ``n`` (default 64),
  ``feature`` (orientation | colour), ``cell`` (element cell side in patches, default 1),
  ``delta`` (degrees of orientation or hue between singleton and the rest; default
  90 / 180), ``cycles`` (grating cycles per cell, default 3). Background orientation
  or hue and singleton position are random per stimulus.

Common: ``size`` (``224`` or ``224x320``), ``patch`` (patch side, default 16),
``gen_seed`` (default 0). Stimulus ``i`` uses ``numpy.random.default_rng([gen_seed,
i])`` so it does not depend on ``n``. The ``seed`` argument of ``open_images`` picks a
subset, as for any source; ``gen_seed`` decides what the stimuli look like.

Geometry: when ``size`` / ``patch`` are not given, ``make_loader`` adopts the model's
input size and patch size (metadata such as ``singleton_patch`` is recomputed; ids,
``stimuli:<kind>:<index>``, stay the same). When given, they must match the model.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from vitprobe.data import stimuli
from vitprobe.data.catalog import Catalog
from vitprobe.data.spec import Options
from vitprobe.errors import ImageSourceError

KINDS = ("gratings", "noise", "pink", "odd-one-out")
_ALIASES = {
    "grating": "gratings",
    "white": "noise",
    "odd_one_out": "odd-one-out",
    "oddball": "odd-one-out",
    "pink-noise": "pink",
}
_COMMON = ("size", "patch", "gen_seed", "n")
_KIND_OPTIONS = {
    "gratings": ("orientations", "cpi", "phases", "contrast"),
    "noise": ("contrast", "color"),
    "pink": ("exponent", "contrast", "color"),
    "odd-one-out": ("feature", "cell", "delta", "cycles"),
}


class StimulusCatalog(Catalog):
    kind = "stimuli"
    native_resolution = True

    def __init__(
        self,
        stim_kind: str,
        params: dict[str, Any],
        n: int,
        size: tuple[int, int],
        patch: int,
        explicit: tuple[bool, bool],
    ) -> None:
        self.stim_kind, self.params, self.n = stim_kind, params, n
        self.size, self.patch, self.explicit = size, patch, explicit
        self._grid = self._grating_grid() if stim_kind == "gratings" and "n" not in params else None
        if self._grid is not None:
            self.n = len(self._grid)

    @classmethod
    def from_options(cls, target: str, opts: Options) -> StimulusCatalog:
        kind = _ALIASES.get(target.lower(), target.lower())
        if kind not in KINDS:
            raise ImageSourceError(f"unknown stimuli {target!r}; kinds: {', '.join(KINDS)}")
        explicit = (opts.has("size"), opts.has("patch"))
        size = opts.get_size("size", (224, 224))
        patch = opts.get_int("patch", 16)
        params: dict[str, Any] = {"gen_seed": opts.get_int("gen_seed", 0)}
        n = opts.get_int("n")
        if n is not None:
            params["n"] = n
        if kind == "gratings":
            params["orientations"] = opts.get_int("orientations", 12)
            params["cpi"] = opts.get_list("cpi", float, (4.0, 8.0, 16.0, 32.0))
            params["phases"] = opts.get_int("phases", 4)
            params["contrast"] = opts.get_list("contrast", float, (1.0,))
        elif kind in ("noise", "pink"):
            params["exponent"] = opts.get_float("exponent", 1.0) if kind == "pink" else 0.0
            params["contrast"] = opts.get_float("contrast", 0.15)
            params["color"] = opts.get_bool("color", False)
        else:
            params["feature"] = opts.get_str("feature", "orientation")
            params["cell"] = opts.get_int("cell", 1)
            params["delta"] = opts.get_float("delta")
            params["cycles"] = opts.get_float("cycles", 3.0)
        opts.finish(_COMMON + _KIND_OPTIONS[kind])
        if n is not None and n < 1:
            raise ImageSourceError(f"stimuli:{kind}: n must be >= 1")
        catalog = cls(kind, params, n or 64, size, patch, explicit)
        if kind == "odd-one-out":
            catalog.sample_meta(0)  # fail now, not in a worker, if the geometry is impossible
        return catalog

    def with_geometry(self, size: tuple[int, int], patch: int | None) -> StimulusCatalog:
        """This catalogue at the model's input size and patch size (same ids)."""
        patch = self.patch if patch is None else patch
        if (self.explicit[0] and tuple(size) != tuple(self.size)) or (
            self.explicit[1] and patch != self.patch
        ):
            raise ImageSourceError(
                f"stimuli:{self.stim_kind} were requested at size {self.size}, patch "
                f"{self.patch}, but the model takes {tuple(size)}, patch {patch}; "
                "stimuli must be generated at the model's input resolution"
            )
        if tuple(size) == tuple(self.size) and patch == self.patch:
            return self
        return StimulusCatalog(
            self.stim_kind, self.params, self.n, tuple(size), patch, self.explicit
        )

    def _grating_grid(self) -> list[tuple[float, float, float, float]]:
        p = self.params
        orientations = [180.0 * i / p["orientations"] for i in range(p["orientations"])]
        phases = [360.0 * i / p["phases"] for i in range(p["phases"])]
        return list(itertools.product(orientations, p["cpi"], phases, p["contrast"]))

    def _rng(self, position: int) -> np.random.Generator:
        return np.random.default_rng([self.params["gen_seed"], position])

    def __len__(self) -> int:
        return self.n

    def sample_id(self, position: int) -> str:
        return f"stimuli:{self.stim_kind}:{position}"

    def _grating_params(self, position: int) -> tuple[float, float, float, float]:
        if self._grid is not None:
            return self._grid[position]
        rng, cpi = self._rng(position), self.params["cpi"]
        orientation = float(rng.uniform(0.0, 180.0))
        log_lo, log_hi = np.log(min(cpi)), np.log(max(cpi))
        frequency = float(np.exp(rng.uniform(log_lo, log_hi)))
        phase = float(rng.uniform(0.0, 360.0))
        contrast = float(self.params["contrast"][int(rng.integers(len(self.params["contrast"])))])
        return orientation, frequency, phase, contrast

    def _odd_params(self, position: int) -> dict[str, Any]:
        rng = self._rng(position)
        period = 180.0 if self.params["feature"] == "orientation" else 360.0
        p = self.params
        return {
            "feature": p["feature"],
            "cell": p["cell"],
            "delta": p["delta"],
            "cycles": p["cycles"],
            "background": float(rng.uniform(0.0, period)),
            "rng": rng,
        }

    def sample_meta(self, position: int) -> dict[str, Any]:
        base = {"stimulus": self.stim_kind, "size": self.size, "patch_size": self.patch}
        if self.stim_kind == "gratings":
            orientation, frequency, phase, contrast = self._grating_params(position)
            return {
                **base,
                "orientation_deg": orientation,
                "cycles_per_image": frequency,
                "phase_deg": phase,
                "contrast": contrast,
            }
        if self.stim_kind in ("noise", "pink"):
            p = self.params
            return {
                **base,
                "exponent": p["exponent"],
                "contrast": p["contrast"],
                "color": p["color"],
                "noise_seed": [p["gen_seed"], position],
            }
        _, meta = stimuli.odd_one_out(self.size, self.patch, **self._odd_params(position))
        return {**base, **meta}

    def load(self, position: int) -> np.ndarray:
        if self.stim_kind == "gratings":
            return stimuli.grating(self.size, *self._grating_params(position))
        if self.stim_kind in ("noise", "pink"):
            p = self.params
            return stimuli.power_law_noise(
                self.size,
                p["exponent"],
                self._rng(position),
                contrast=p["contrast"],
                color=p["color"],
            )
        image, _ = stimuli.odd_one_out(self.size, self.patch, **self._odd_params(position))
        return image

    def describe(self) -> str:
        h, w = self.size
        names = {
            "gratings": "sinusoidal gratings",
            "noise": "white noise",
            "pink": f"1/f^{self.params.get('exponent', 1.0):g} noise",
            "odd-one-out": f"odd-one-out arrays ({self.params.get('feature')})",
        }
        return (
            f"generated stimuli: {len(self)} {names[self.stim_kind]} at {h}x{w} px, "
            f"patch {self.patch} (model input resolution, no resize/crop)"
        )
