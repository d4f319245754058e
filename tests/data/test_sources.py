"""Folders and lists; deterministic subsets, shards and resume; spec strings; errors."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitprobe.data import make_loader, open_images
from vitprobe.data.folder import list_images, sample_id_for
from vitprobe.data.spec import expand_braces, parse_spec
from vitprobe.errors import ImageSourceError
from vitprobe.models.preprocess import PreprocessConfig

CLASSES = ("n02", "n01", "n10")


def make_imagenet_like(root: Path, order: int = 1, per_class: int = 7) -> list[str]:
    """Class subfolders of tiny PNGs, written in the given order (1 or -1)."""
    names = [f"{c}/img_{i:03d}.png" for c in CLASSES for i in range(per_class)]
    for name in names[::order]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), (len(name), 0, 0)).save(root / name)
    return sorted(names)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_imagenet_like(tmp_path / "val")
    return tmp_path / "val"


def test_folder_listing_is_recursive_sorted_and_labelled(folder):
    source = open_images(folder)
    assert source.ids == sorted(source.ids) and len(source) == 21
    assert source.kind == "folder"
    assert source[0].meta == {"class": "n01"}
    assert "21 images in 3 class folders" in source.description


def test_subset_does_not_depend_on_listing_order(tmp_path, monkeypatch):
    ids_written_forward = make_imagenet_like(tmp_path / "a", order=1)
    make_imagenet_like(tmp_path / "b", order=-1)
    a = open_images(tmp_path / "a", n_images=8, seed=5)
    b = open_images(tmp_path / "b", n_images=8, seed=5)
    assert a.ids == b.ids and set(a.ids) <= set(ids_written_forward)

    real_scandir = os.scandir

    def reversed_scandir(path):  # the file system could list in any order
        return iter(sorted(real_scandir(path), key=lambda e: e.name, reverse=True))

    monkeypatch.setattr(os, "scandir", reversed_scandir)
    assert open_images(tmp_path / "a", n_images=8, seed=5).ids == a.ids


def test_list_file_order_does_not_matter(folder, tmp_path):
    names = [str(p.relative_to(folder)) for p in folder.rglob("*.png")]
    forward, backward = tmp_path / "forward.txt", tmp_path / "backward.txt"
    forward.write_text("\n".join(f"{folder / n}" for n in sorted(names)))
    backward.write_text("\n".join(f"{folder / n}" for n in sorted(names, reverse=True)))
    assert (
        open_images(forward, n_images=5, seed=2).ids
        == open_images(backward, n_images=5, seed=2).ids
    )


def test_subsets_are_seeded_nested_and_checked(folder):
    source = open_images(folder)
    assert open_images(folder, n_images=10, seed=1).ids == source.subset(10, seed=1).ids
    assert source.subset(10, seed=1).ids != source.subset(10, seed=2).ids
    assert set(source.subset(4, seed=3).ids) <= set(source.subset(12, seed=3).ids)
    assert source.subset(None).ids == source.ids
    with pytest.raises(ImageSourceError, match="only 21 are available"):
        source.subset(22)
    assert "10 of 21 selected (seed 1)" in source.subset(10, seed=1).description
    with pytest.raises(ImageSourceError, match="seed must be >= 0, got -1"):
        open_images(folder, n_images=10, seed=-1)  # numpy: "expected non-negative integer"


def test_a_negative_worker_count_is_refused(folder):
    """It was taken as 0 without a word."""
    with pytest.raises(ImageSourceError, match="workers must be >= 0"):
        make_loader(open_images(folder), PreprocessConfig(), batch_size=2, workers=-2)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 30])
def test_shards_are_disjoint_and_complete(folder, world_size):
    source = open_images(folder, n_images=17, seed=0)
    shards = [source.shard(rank, world_size).ids for rank in range(world_size)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == sorted(source.ids) and len(set(flat)) == len(flat)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards == [source.shard(rank, world_size).ids for rank in range(world_size)]
    with pytest.raises(ImageSourceError):
        source.shard(world_size, world_size)


def test_exclude_drops_processed_ids(folder):
    source = open_images(folder, n_images=10, seed=0)
    done = source.ids[:4]
    rest = source.exclude(done)
    assert rest.ids == source.ids[4:]
    assert "4 already done, 6 left" in rest.description
    assert source.exclude([]).ids == source.ids
    taken = source.take(np.array([3, 1]), "two chunks")
    assert taken.ids == [source.ids[3], source.ids[1]] and taken.selection[-1] == "two chunks"


def test_list_file_paths_labels_comments_and_missing_files(folder, tmp_path):
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    first = sorted(folder.rglob("*.png"))[0]
    listing.write_text(
        "# header comment\n\n"
        f"{os.path.relpath(first, listing.parent)}\tcat\n"
        f"{first}\n"  # the same file, absolute: a different id, both kept
        "../val/n10/img_000.png\n"
        "../val/n10/img_000.png\n"  # repeated line: kept once
        "does/not/exist.png\n"
    )
    source = open_images(listing)
    assert len(source) == 4 and source.kind == "list"
    assert "1 repeated lines ignored" in source.description
    labelled = [s for s in source if s.meta.get("label") == "cat"]
    assert len(labelled) == 1
    loader = make_loader(source, PreprocessConfig(input_size=(16, 16), resize_size=16))
    assert sum(len(b["ids"]) for b in loader) == 3
    assert [(s.id, s.reason) for s in loader.skipped] == [("does/not/exist.png", "file not found")]


def test_ids_are_unicode_normalised():
    decomposed = unicodedata.normalize("NFD", "café/é.png")
    assert sample_id_for(decomposed) == unicodedata.normalize("NFC", "café/é.png")


def test_missing_and_empty_sources_fail_at_open(tmp_path):
    with pytest.raises(ImageSourceError, match=str(tmp_path / "nope")):
        open_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(ImageSourceError, match=r"no images found in .*empty"):
        open_images(tmp_path / "empty")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ImageSourceError, match="empty"):
        open_images(tmp_path / "empty.txt")
    with pytest.raises(ImageSourceError, match="unknown option"):
        open_images(f"{tmp_path}?colour=red")
    with pytest.raises(ImageSourceError, match="unknown stimuli"):
        open_images("stimuli:zebras")


def test_spec_grammar():
    spec = parse_spec("stimuli:gratings?n=64&size=224", {"size": 384})
    assert (spec.scheme, spec.target, spec.options) == (
        "stimuli",
        "gratings",
        {"n": "64", "size": 384},
    )
    assert parse_spec("hf:imagenet-1k:validation").target == "imagenet-1k:validation"
    assert parse_spec("demo?crops=4").scheme == "demo"
    # a glob's '?' is not an option separator
    assert parse_spec("shards/shard-?.tar").target == "shards/shard-?.tar"
    assert parse_spec("/data/val").scheme == "path"
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]


def test_symlink_loops_do_not_hang(folder):
    os.symlink(folder, folder / "n01" / "loop")
    files, _ = list_images(str(folder))
    assert len(files) == 21  # the link points back to a listed folder: not listed twice


@pytest.mark.parametrize(
    "spec", ["folder", "list", "demo?crops=1", "stimuli:odd-one-out?n=3", "stimuli:pink?n=2"]
)
def test_sources_survive_pickling_for_spawned_workers(spec, folder, tmp_path):
    import pickle

    if spec == "folder":
        spec = str(folder)
    elif spec == "list":
        (tmp_path / "l.txt").write_text("val/n01/img_000.png\nval/n02/img_001.png\n")
        spec = str(tmp_path / "l.txt")
    source = open_images(spec, n_images=2 if "pink" not in spec else None)
    copy = pickle.loads(pickle.dumps(source.shard(0, 1)))
    assert copy.ids == source.ids and copy.description.startswith(source.description)
    assert np.array_equal(np.asarray(copy.load(0)), np.asarray(source.load(0)))
