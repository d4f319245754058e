"""The built-in demo set: natural photographs shipped inside the scikit-image and
scikit-learn wheels (no network), with several random square crops per photo.

This is a *demo set*, not ImageNet: 16 photos cannot stand in for ImageNet's
statistics; the description and every id (``demo:<photo>:crop(y,x,h,w)``) say so.

Crops: for photo ``p``, ``crops`` square boxes are drawn with
``numpy.random.default_rng([gen_seed, crc32(p)])``: side uniform in
``[min_frac * shorter side, shorter side]`` pixels, position uniform. The boxes depend
only on the photo name and the options, never on which other photos are present or
on the subset seed, so ids are stable. Each crop then goes through the model's
ordinary preprocessing (resize + centre crop). Grayscale photos (camera, coins, moon,
clock, brick, grass, gravel) are replicated to three channels.

Options: ``crops`` (per photo, default 8), ``photos`` (comma list, default all),
``min_frac`` (default 0.5), ``gen_seed`` (default 0).
"""

from __future__ import annotations

import importlib.util
import os
import zlib
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from vitprobe.data.catalog import Catalog
from vitprobe.data.decode import decode_image
from vitprobe.data.spec import Options
from vitprobe.errors import ImageSourceError

# photo name -> (package, file name inside the package's data folder)
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "astronaut.png"),
    "brick": ("skimage", "brick.png"),
    "camera": ("skimage", "camera.png"),
    "chelsea": ("skimage", "chelsea.png"),
    "china": ("sklearn", "china.jpg"),
    "clock": ("skimage", "clock_motion.png"),
    "coffee": ("skimage", "coffee.png"),
    "coins": ("skimage", "coins.png"),
    "flower": ("sklearn", "flower.jpg"),
    "grass": ("skimage", "grass.png"),
    "gravel": ("skimage", "gravel.png"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    "moon": ("skimage", "moon.png"),
    "motorcycle_left": ("skimage", "motorcycle_left.png"),
    "motorcycle_right": ("skimage", "motorcycle_right.png"),
    "rocket": ("skimage", "rocket.jpg"),
}
_PACKAGE_NAMES = {"skimage": "scikit-image", "sklearn": "scikit-learn"}
_OPTIONS = ("crops", "photos", "min_frac", "gen_seed")


def photo_path(name: str) -> str | None:
    """Absolute path of a demo photo in its installed package, or None if absent.

    The package is found, not imported: importing ``sklearn.datasets`` for the folder of
    two photos took 2.7 s of every default run's start."""
    package, filename = PHOTOS[name]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = next(iter(spec.submodule_search_locations))
    folder = os.path.join(root, "data") if package == "skimage" else \
        os.path.join(root, "datasets", "images")
    path = os.path.join(folder, filename)
    return path if os.path.isfile(path) else None


@lru_cache(maxsize=len(PHOTOS))
def _photo(path: str) -> Image.Image:
    # cached per process (worker): a few MB per photo, decoded once
    return decode_image(path)


class DemoCatalog(Catalog):
    kind = "demo"

    def __init__(
        self,
        entries: list[tuple[str, str, tuple[int, int, int, int]]],
        n_photos: int,
        crops: int,
        missing: list[str],
    ) -> None:
        self.entries = entries  # (photo name, path, (y, x, h, w))
        self.n_photos, self.crops, self.missing = n_photos, crops, missing

    @classmethod
    def from_options(cls, opts: Options) -> DemoCatalog:
        crops = opts.get_int("crops", 8)
        names = opts.get_list("photos", default=sorted(PHOTOS))
        min_frac = opts.get_float("min_frac", 0.5)
        gen_seed = opts.get_int("gen_seed", 0)
        opts.finish(_OPTIONS)
        unknown = sorted(set(names) - set(PHOTOS))
        if unknown:
            raise ImageSourceError(f"demo: unknown photos {unknown}; available: {sorted(PHOTOS)}")
        if crops < 1 or not 0 < min_frac <= 1:
            raise ImageSourceError("demo: crops must be >= 1 and 0 < min_frac <= 1")
        entries, missing = [], []
        for name in sorted(set(names)):
            path = photo_path(name)
            if path is None:
                missing.append(name)
                continue
            with Image.open(path) as img:  # header only: the size
                width, height = img.size
            rng = np.random.default_rng([gen_seed, zlib.crc32(name.encode())])
            short = min(width, height)
            for _ in range(crops):
                side = int(rng.integers(max(1, round(min_frac * short)), short + 1))
                y = int(rng.integers(0, height - side + 1))
                x = int(rng.integers(0, width - side + 1))
                entries.append((name, path, (y, x, side, side)))
        if not entries:
            raise ImageSourceError(
                "demo: no photos found (are scikit-image and scikit-learn installed?)"
            )
        return cls(entries, len(set(names)) - len(missing), crops, missing)

    def __len__(self) -> int:
        return len(self.entries)

    def sample_id(self, position: int) -> str:
        name, _, (y, x, h, w) = self.entries[position]
        return f"demo:{name}:crop({y},{x},{h},{w})"

    def sample_meta(self, position: int) -> dict[str, Any]:
        name, _, box = self.entries[position]
        package = _PACKAGE_NAMES[PHOTOS[name][0]]
        return {"photo": name, "package": package, "crop_box_yxhw": box, "demo": True}

    def where(self, position: int) -> str:
        return f"{self.entries[position][1]} {self.sample_id(position)}"

    def load(self, position: int) -> Image.Image:
        _, path, (y, x, h, w) = self.entries[position]
        return _photo(path).crop((x, y, x + w, y + h))

    def describe(self) -> str:
        text = (
            f"demo set: {self.n_photos} photos from scikit-image/scikit-learn, "
            f"{self.crops} random crops each ({len(self)} samples) — not ImageNet"
        )
        if self.missing:
            text += f" (missing from this install: {', '.join(self.missing)})"
        return text
