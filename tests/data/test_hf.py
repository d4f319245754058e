"""Hugging Face ``datasets`` sources, tested with local datasets (no hub access)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vitprobe.data import make_loader, open_images
from vitprobe.errors import ImageSourceError
from vitprobe.models.preprocess import PreprocessConfig

datasets = pytest.importorskip("datasets")

SMALL = PreprocessConfig(input_size=(32, 32), resize_size=36)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for label, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        (root / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (40 + i, 30), colour).save(root / label / f"{i}.png")
    return root


def hf_spec(path: Path, tmp_path: Path, extra: str = "") -> str:
    return f"hf:{path}:train?cache_dir={tmp_path / 'hf-cache'}{extra}"


def test_local_imagefolder_with_labels(image_folder, tmp_path):
    source = open_images(hf_spec(image_folder, tmp_path), n_images=5, seed=1)
    assert len(source) == 5 and source.kind == "hf"
    assert all(i.startswith(f"hf:{image_folder}:train:") for i in source.ids)
    meta = source[0].meta
    assert meta["label_name"] in ("cat", "dog") and meta["label"] in (0, 1)
    batches = list(make_loader(source, SMALL, batch_size=2))
    assert [i for b in batches for i in b["ids"]] == source.ids
    assert batches[0]["pixels"].shape[1:] == (3, 32, 32)


def test_save_to_disk_with_a_broken_row(tmp_path):
    good = Image.new("RGB", (20, 20), (0, 255, 0))
    rows = {"image": [good, good, good], "label": [0, 1, 0]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict(rows, features=features)
    ds = ds.cast_column("image", datasets.Image(decode=False))
    ds = ds.map(
        lambda row, i: {"image": {"bytes": b"junk", "path": None}} if i == 1 else row,
        with_indices=True,
    )
    ds.save_to_disk(tmp_path / "saved")
    source = open_images(f"hf:{tmp_path / 'saved'}")
    assert len(source) == 3 and source[2].meta == {"label": 0}
    loader = make_loader(source, SMALL, batch_size=4)
    assert [i for b in loader for i in b["ids"]] == [source.ids[0], source.ids[2]]
    assert [(s.id, "not an image" in s.reason) for s in loader.skipped] == [(source.ids[1], True)]


def test_streaming_selects_the_same_rows(image_folder, tmp_path):
    mapped = open_images(hf_spec(image_folder, tmp_path), n_images=4, seed=3)
    streamed = open_images(hf_spec(image_folder, tmp_path, "&streaming=1"), n_images=4, seed=3)
    assert streamed.ids == mapped.ids
    assert [s.meta for s in streamed] == [s.meta for s in mapped]
    assert "streaming" in streamed.description
    assert sum(len(b["ids"]) for b in make_loader(streamed, SMALL)) == 4
    with pytest.raises(ImageSourceError, match="streaming needs n_images"):
        open_images(hf_spec(image_folder, tmp_path, "&streaming=1"))


def test_hf_errors(image_folder, tmp_path):
    with pytest.raises(ImageSourceError, match="no split 'test'"):
        open_images(f"hf:{image_folder}:test?cache_dir={tmp_path / 'c'}")
    with pytest.raises(ImageSourceError, match="no column"):
        open_images(hf_spec(image_folder, tmp_path, "&image_column=pixels"))
    with pytest.raises(ImageSourceError, match="unknown option"):
        open_images(hf_spec(image_folder, tmp_path, "&stream=1"))
