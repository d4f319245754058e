"""WebDataset-style tar shards: grouping, labels, patterns, random access, bad members."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from vitprobe.data import make_loader, open_images
from vitprobe.errors import ImageSourceError
from vitprobe.models.preprocess import PreprocessConfig

from .conftest import jpeg_bytes, noise_rgb

SMALL = PreprocessConfig(input_size=(32, 32), resize_size=36)


def add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_shard(
    path: Path, keys: list[str], reverse: bool = False, extra: dict | None = None
) -> None:
    members = []
    for key in keys:
        members.append((f"{key}.jpg", jpeg_bytes(noise_rgb(20, 24, seed=len(key)))))
        members.append((f"{key}.cls", str(len(key) % 5).encode()))
    members += list((extra or {}).items())
    with tarfile.open(path, "w") as archive:
        for name, data in members[::-1] if reverse else members:
            add(archive, name, data)


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    for index in range(3):
        keys = [f"s{index}/img_{k:02d}" for k in range(index * 4, index * 4 + 4)]
        write_shard(folder / f"train-{index:03d}.tar", keys)
    return folder


def test_shard_folder_pattern_and_single_file_agree(shards):
    from_folder = open_images(shards)
    from_braces = open_images(f"{shards}/train-{{000..002}}.tar")
    from_glob = open_images(f"{shards}/train-*.tar")
    assert from_folder.ids == from_braces.ids == from_glob.ids
    assert len(from_folder) == 12 and from_folder.kind == "tar"
    assert from_folder.ids[0] == "train-000.tar/s0/img_00"
    single = open_images(shards / "train-001.tar")
    assert len(single) == 4 and single[0].meta == {"label": len("s1/img_04") % 5}


def test_loads_any_subset_in_any_order_and_skips_bad_members(tmp_path):
    bad = {"bad/empty.jpg": b"", "bad/text.jpg": b"hello", "label_only.cls": b"3"}
    write_shard(tmp_path / "a.tar", [f"k{i}" for i in range(6)], extra=bad)
    source = open_images(tmp_path / "a.tar")
    assert len(source) == 8  # 6 good + 2 bad images; the label-only sample is counted apart
    assert "1 samples without an image ignored" in source.description
    loader = make_loader(source.subset(7, seed=4), SMALL, batch_size=3)
    loaded = [i for batch in loader for i in batch["ids"]]
    reasons = {s.id: s.reason for s in loader.skipped}
    assert len(loaded) + len(reasons) == 7
    assert reasons.get("a.tar/bad/empty", "empty").startswith("empty")
    assert all(i.startswith("a.tar/k") for i in loaded)


def test_member_order_inside_shards_does_not_matter(tmp_path):
    keys = [f"x{i:02d}" for i in range(10)]
    (tmp_path / "f").mkdir()
    (tmp_path / "r").mkdir()
    write_shard(tmp_path / "f" / "d.tar", keys)
    write_shard(tmp_path / "r" / "d.tar", keys, reverse=True)
    forward = open_images(tmp_path / "f" / "d.tar", n_images=4, seed=9)
    backward = open_images(tmp_path / "r" / "d.tar", n_images=4, seed=9)
    assert forward.ids == backward.ids


def test_shard_errors_are_clear(tmp_path, shards):
    with pytest.raises(ImageSourceError, match="not found"):
        open_images(f"{shards}/train-{{000..005}}.tar")
    with pytest.raises(ImageSourceError, match="no tar shards match"):
        open_images(f"{shards}/valid-*.tar")
    (tmp_path / "c.tar.gz").write_bytes(b"")
    with pytest.raises(ImageSourceError, match="compressed"):
        open_images(f"{tmp_path}/c.tar*")


def test_damaged_shard_keeps_what_it_can_and_says_so(tmp_path):
    write_shard(tmp_path / "good.tar", ["a", "b"])
    data = (tmp_path / "good.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1536] + b"\x07" * 512)  # a header of garbage
    with pytest.warns(UserWarning, match="tar shard problem"):
        source = open_images(f"{tmp_path}/{{good,cut}}.tar")
    assert "shard problems" in source.description
    assert "good.tar/a" in source.ids
