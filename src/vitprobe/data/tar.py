"""WebDataset-style tar shards, read with random access.

A sample is the group of members sharing a *key*: the member path up to the first
``.`` of its file name (``train/n0144_10026.jpg`` and ``train/n0144_10026.cls`` form
sample ``train/n0144_10026``), as WebDataset defines it. The sample's image is its
member with an image extension (``jpg`` preferred, then ``jpeg``, ``png``, ``webp``,
...; or the ``image_key`` option, e.g. ``image_key=seg.png``); a ``.cls`` member
becomes ``meta["label"]``, a ``.json`` member (<= 64 KiB) ``meta["json"]``.

Shards must be uncompressed ``.tar`` files: opening reads only the member headers
(plus the small label members), and workers read each image with one seek, so any
subset or shard of the samples can be loaded in any order. Ids are
``<shard path relative to the shards' common folder>/<key>``; shards are sorted by
that path, samples by id. A shard that cannot be read, or is cut short, keeps the
samples read before the damage, and the problem is named in the description.
"""

from __future__ import annotations

import glob
import json
import os
import tarfile
import warnings
from typing import Any, BinaryIO

from PIL import Image

from vitprobe.data.catalog import ListedCatalog
from vitprobe.data.decode import DecodeError, decode_image
from vitprobe.data.folder import IMAGE_EXTENSIONS
from vitprobe.data.spec import Options, expand_braces
from vitprobe.errors import ImageSourceError

_PREFERRED = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm", "pgm", "pnm")
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_MAX_JSON = 64 * 1024
# end-of-archive zeros plus record padding (10 KiB for tar's default blocking factor)
_MAX_PADDING = 1024 * 1024


def is_shard_pattern(path: str) -> bool:
    return any(ch in path for ch in "{*[?")


class TarCatalog(ListedCatalog):
    kind = "tar"

    def __init__(
        self,
        base: str,
        shards: list[str],
        ids: list[str],
        locations: list[tuple[int, int, int]],
        metas: list[dict[str, Any]],
        problems: list[str],
        n_no_image: int,
        max_pixels: int | None,
    ) -> None:
        self.base = base
        self.shards = shards
        self.ids = ids
        self.locations = locations  # (shard index, data offset, size in bytes)
        self.metas = metas
        self.problems = problems
        self.n_no_image = n_no_image
        self.max_pixels = max_pixels

    @staticmethod
    def dir_has_shards(path: str) -> bool:
        return any(name.lower().endswith(".tar") for name in os.listdir(path))

    @classmethod
    def from_pattern(cls, pattern: str, opts: Options) -> TarCatalog:
        image_key = opts.get_str("image_key")
        max_pixels = opts.get_int("max_pixels")
        shards = _resolve_shards(pattern)
        base = os.path.commonpath([os.path.dirname(s) for s in shards])
        named = sorted((os.path.relpath(s, base).replace(os.sep, "/"), s) for s in shards)
        samples: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        n_no_image = 0
        for index, (name, path) in enumerate(named):
            groups, problem = _read_headers(path)
            if problem:
                problems.append(f"{path}: {problem}")
            if not groups:
                continue
            with open(path, "rb") as handle:  # one handle per shard for the label members
                for key, members in groups.items():
                    chosen = _pick_image(members, image_key)
                    if chosen is None:
                        n_no_image += 1
                        continue
                    samples[f"{name}/{key}"] = {
                        "loc": (index, chosen[0], chosen[1]),
                        "meta": _read_meta(handle, members),
                    }
        for problem in problems:
            warnings.warn(f"tar shard problem: {problem}", stacklevel=2)
        ids = sorted(samples)
        return cls(
            base,
            [path for _, path in named],
            ids,
            [samples[i]["loc"] for i in ids],
            [samples[i]["meta"] for i in ids],
            problems,
            n_no_image,
            max_pixels,
        )

    def where(self, position: int) -> str:
        shard, offset, _ = self.locations[position]
        return f"{self.shards[shard]}:{self.ids[position].split('/')[-1]}@{offset}"

    def load(self, position: int) -> Image.Image:
        shard, offset, size = self.locations[position]
        try:
            # one open per image: handles must not be shared across forked workers
            with open(self.shards[shard], "rb") as handle:
                handle.seek(offset)
                data = handle.read(size)
        except OSError as err:
            raise DecodeError(f"cannot read shard: {err.strerror or err}") from None
        if len(data) < size:
            raise DecodeError(f"truncated member: {len(data)} of {size} bytes in shard")
        return decode_image(data, max_pixels=self.max_pixels)

    def describe(self) -> str:
        text = f"tar shards {self.base}: {len(self)} images in {len(self.shards)} shards"
        if self.n_no_image:
            text += f" ({self.n_no_image} samples without an image ignored)"
        if self.problems:
            text += f" ({len(self.problems)} shard problems: {'; '.join(self.problems)})"
        return text


def _resolve_shards(pattern: str) -> list[str]:
    if os.path.isdir(pattern):
        found = [
            os.path.join(pattern, n) for n in os.listdir(pattern) if n.lower().endswith(".tar")
        ]
    else:
        found = []
        for expanded in expand_braces(pattern):
            if is_shard_pattern(expanded):
                found.extend(glob.glob(expanded))
            elif os.path.exists(expanded):
                found.append(expanded)
            else:
                raise ImageSourceError(f"tar shard not found: {expanded}")
    compressed = [f for f in found if f.lower().endswith(_COMPRESSED)]
    if compressed:
        raise ImageSourceError(
            f"compressed tar shards are not supported (no random access): {compressed[0]}; "
            "use uncompressed .tar shards"
        )
    shards = sorted({os.path.abspath(f) for f in found if os.path.isfile(f)})
    if not shards:
        raise ImageSourceError(f"no tar shards match {pattern}")
    return shards


def _split_key(member_name: str) -> tuple[str, str]:
    folder, _, filename = member_name.rpartition("/")
    stem, dot, ext = filename.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _read_headers(path: str) -> tuple[dict[str, dict[str, tuple[int, int]]], str | None]:
    """{key: {extension: (data offset, size)}} for the regular files in one shard."""
    groups: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        file_size = os.path.getsize(path)
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if not member.isfile() or os.path.basename(member.name).startswith("."):
                    continue
                key, ext = _split_key(member.name)
                groups.setdefault(key, {})[ext] = (member.offset_data, member.size)
            end = archive.offset
        # tarfile stops quietly at a damaged header in mid-archive; only zero padding
        # may follow the last member, anything else is data we could not read
        with open(path, "rb") as handle:
            handle.seek(end)
            tail = handle.read(_MAX_PADDING)
        damaged = bool(tail.strip(b"\0")) or file_size - end > _MAX_PADDING
    except (tarfile.TarError, OSError, EOFError) as err:
        return groups, f"unreadable after {len(groups)} samples ({type(err).__name__}: {err})"
    if damaged:
        return groups, f"damaged at byte {end}: {len(groups)} samples read before it"
    cut = [k for k, m in groups.items() if any(o + n > file_size for o, n in m.values())]
    if cut:
        return groups, f"cut short: the last member of sample {cut[-1]} is truncated"
    return groups, None


def _pick_image(
    members: dict[str, tuple[int, int]], image_key: str | None
) -> tuple[int, int] | None:
    if image_key is not None:
        return members.get(image_key.lower())
    for ext in _PREFERRED:
        if ext in members:
            return members[ext]
    for ext, location in sorted(members.items()):
        if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            return location
    return None


def _read_meta(handle: BinaryIO, members: dict[str, tuple[int, int]]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for ext in ("cls", "json"):
        if ext not in members or members[ext][1] > _MAX_JSON:
            continue
        offset, size = members[ext]
        handle.seek(offset)
        text = handle.read(size).decode("utf-8", errors="replace").strip()
        if ext == "cls":
            meta["label"] = int(text) if text.lstrip("-").isdigit() else text
        else:
            try:
                meta["json"] = json.loads(text)
            except json.JSONDecodeError:
                pass  # metadata is optional; the image is still usable
    return meta
