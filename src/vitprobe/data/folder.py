"""Image folders (flat or ImageNet-style class subfolders) and text file lists.

Listing is recursive and sorted by id = the path relative to the root, with ``/``
separators and Unicode NFC normalisation (macOS stores names decomposed, Linux as
given), compared by code point: the same folder gives the same order, hence the same
seeded subset, on every machine. Hidden files and folders (names starting with ``.``,
e.g. macOS ``._photo.jpg`` resource forks) are not images and are not listed; other
files without an image extension are counted and reported in the description.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Any

from PIL import Image

from vitprobe.data.catalog import Catalog
from vitprobe.data.decode import decode_image
from vitprobe.data.spec import Options
from vitprobe.errors import ImageSourceError

IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm".split()
)
LIST_EXTENSIONS = (".txt", ".lst")


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_list_file(path: str) -> bool:
    return path.lower().endswith(LIST_EXTENSIONS)


def sample_id_for(relative_path: str) -> str:
    """Canonical id of a relative path: ``/`` separators, NFC-normalised."""
    return unicodedata.normalize("NFC", relative_path.replace(os.sep, "/"))


def list_images(root: str) -> tuple[list[str], int]:
    """Recursively list image files under ``root``.

    Returns:
        (relative paths as stored on disk, sorted by their canonical id; number of
        non-hidden files skipped for not having an image extension).
    """
    found: list[str] = []
    other = 0
    seen_dirs: set[str] = set()
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir)
        real = os.path.realpath(abs_dir)
        if real in seen_dirs:  # symlink loop
            continue
        seen_dirs.add(real)
        try:
            entries = list(os.scandir(abs_dir))
        except OSError as err:
            raise ImageSourceError(f"cannot list {abs_dir}: {err.strerror or err}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=True):
                stack.append(rel)
            elif is_image_name(entry.name):
                found.append(rel)
            else:
                other += 1
    found.sort(key=sample_id_for)
    return found, other


class FolderCatalog(Catalog):
    """A folder of images; ``meta["class"]`` is the first subfolder (ImageNet-style)."""

    kind = "folder"

    def __init__(self, root: str, files: list[str], n_other: int, max_pixels: int | None) -> None:
        self.root = os.path.abspath(root)
        self.files = files
        self.ids = [sample_id_for(f) for f in files]
        self.n_other = n_other
        self.max_pixels = max_pixels

    @classmethod
    def from_options(cls, root: str, opts: Options) -> FolderCatalog:
        max_pixels = opts.get_int("max_pixels")
        files, n_other = list_images(root)
        return cls(root, files, n_other, max_pixels)

    def __len__(self) -> int:
        return len(self.files)

    def sample_id(self, position: int) -> str:
        return self.ids[position]

    def sample_meta(self, position: int) -> dict[str, Any]:
        head, sep, _ = self.ids[position].partition("/")
        return {"class": head} if sep else {}

    def where(self, position: int) -> str:
        return os.path.join(self.root, self.files[position])

    def load(self, position: int) -> Image.Image:
        return decode_image(self.where(position), max_pixels=self.max_pixels)

    def describe(self) -> str:
        classes = {i.partition("/")[0] for i in self.ids if "/" in i}
        text = f"folder {self.root}: {len(self)} images"
        if classes:
            text += f" in {len(classes)} class folders"
        if self.n_other:
            text += f" ({self.n_other} non-image files ignored)"
        return text

    def describe_empty(self) -> str:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        return f"{self.n_other} other files; looked for {exts}"


class ListCatalog(Catalog):
    """A text file with one image path per line.

    Relative paths are relative to the list's folder (or the ``root`` option). A line
    may end in ``<TAB>label``, stored as ``meta["label"]``. Blank lines and lines
    starting with ``#`` are ignored; repeated paths are kept once (ids must be
    unique) and counted in the description. Listed files that do not exist are not
    an error at open time: they are skipped and reported by the loader like any
    unreadable file.
    """

    kind = "list"

    def __init__(
        self,
        list_path: str,
        root: str,
        ids: list[str],
        entries: list[tuple[str, str | None]],
        n_duplicates: int,
        max_pixels: int | None,
    ) -> None:
        self.list_path = os.path.abspath(list_path)
        self.root = os.path.abspath(root)
        self.ids = ids
        self.entries = entries
        self.n_duplicates = n_duplicates
        self.max_pixels = max_pixels

    @classmethod
    def from_options(cls, path: str, opts: Options) -> ListCatalog:
        root = opts.get_str("root") or os.path.dirname(os.path.abspath(path))
        max_pixels = opts.get_int("max_pixels")
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ImageSourceError(f"cannot read image list {path}: {err}") from None
        by_id: dict[str, tuple[str, str | None]] = {}
        n_duplicates = 0
        for line in lines:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, _, label = line.partition("\t")
            name = name.strip()
            key = sample_id_for(os.path.normpath(name))
            if key in by_id:
                n_duplicates += 1
                continue
            by_id[key] = (name, label.strip() or None)
        if not by_id:
            raise ImageSourceError(f"image list {path} is empty")
        ids = sorted(by_id)
        return cls(path, root, ids, [by_id[k] for k in ids], n_duplicates, max_pixels)

    def __len__(self) -> int:
        return len(self.entries)

    def sample_id(self, position: int) -> str:
        return self.ids[position]

    def sample_meta(self, position: int) -> dict[str, Any]:
        label = self.entries[position][1]
        return {} if label is None else {"label": label}

    def where(self, position: int) -> str:
        return os.path.join(self.root, os.path.expanduser(self.entries[position][0]))

    def load(self, position: int) -> Image.Image:
        return decode_image(self.where(position), max_pixels=self.max_pixels)

    def describe(self) -> str:
        text = f"image list {self.list_path}: {len(self)} images"
        if self.n_duplicates:
            text += f" ({self.n_duplicates} repeated lines ignored)"
        return text
