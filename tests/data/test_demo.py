"""The built-in demo set: offline photos, stable random crops, labelled as a demo."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vitprobe.data import make_loader, open_images
from vitprobe.data.demo import PHOTOS, photo_path
from vitprobe.errors import ImageSourceError
from vitprobe.models.preprocess import PreprocessConfig


def test_demo_is_labelled_as_demo_not_imagenet():
    source = open_images("demo")
    assert source.is_demo and source.kind == "demo"
    assert source.description.startswith("demo set: 16 photos from scikit-image/scikit-learn")
    assert "8 random crops each" in source.description and "not ImageNet" in source.description
    assert len(source) == 16 * 8
    assert all(photo_path(name) for name in PHOTOS)  # shipped in the wheels, no network
    assert all(s.meta["demo"] for s in source)


def test_crops_are_stable_and_inside_the_photo():
    ids = open_images("demo", crops=3).ids
    assert ids == open_images("demo?crops=3").ids and len(ids) == 48
    assert len(set(ids)) == len(ids)
    more = open_images("demo?crops=5").ids  # crops of a photo do not depend on the count
    assert set(ids) <= set(more)
    one = open_images("demo?photos=chelsea&crops=4&gen_seed=1")
    for sample in one:
        y, x, h, w = (int(v) for v in re.findall(r"\d+", sample.id))
        assert sample.meta["crop_box_yxhw"] == (y, x, h, w) and h == w
        assert 0 <= y and y + h <= 300 and 0 <= x and x + w <= 451 and h >= 150
    assert one.ids != open_images("demo?photos=chelsea&crops=4").ids


def test_demo_crops_load_as_their_box():
    source = open_images("demo?photos=coins&crops=2")
    crop = np.asarray(source.load(1))
    _, _, h, w = source[1].meta["crop_box_yxhw"]
    assert crop.shape == (h, w, 3)
    assert (crop[..., 0] == crop[..., 1]).all()  # a grey photo, replicated to RGB
    batch = next(iter(make_loader(source, PreprocessConfig(), batch_size=2)))
    assert batch["pixels"].shape == (2, 3, 224, 224) and batch["ids"] == source.ids


def test_demo_options_are_checked():
    with pytest.raises(ImageSourceError, match="unknown photos"):
        open_images("demo?photos=lena")
    with pytest.raises(ImageSourceError, match="only 128 are available"):
        open_images("demo", n_images=1000)


def test_opening_the_demo_set_imports_neither_photo_package():
    """The photos are found in their packages' folders without importing them
    (sklearn.datasets alone took 2.7 s of every default run's start)."""
    import subprocess
    import sys

    code = ("import sys; from vitprobe.data import open_images; s = open_images('demo'); "
            "assert len(s) == 128; print(sorted(m for m in ('sklearn', 'skimage') "
            "if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
