"""Hugging Face ``datasets`` sources: ``hf:<name>[:<split>][?options]``.

``name`` is a local folder written by ``Dataset.save_to_disk`` (opened with
``load_from_disk``), any other local folder (opened with the ``imagefolder``
builder: class subfolders become a ``label``), or a hub dataset name (needs the
``datasets`` package, network access and, for gated sets such as ImageNet-1k, a
logged-in account). Without a split, ``validation`` is preferred, then ``val``,
``test``, ``train``, or the only split there is.

Options: ``streaming=1`` (iterate instead of downloading; hub or local),
``image_column=<col>`` (default: the first ``Image`` column), ``config=<name>``,
``revision=<git ref>``, ``cache_dir=<folder>``, ``max_pixels=<int>``.

Images are read as encoded bytes (``Image(decode=False)``) and decoded by
``vitprobe.data.decode`` so that broken rows are skipped and reported like broken
files. ``ClassLabel`` columns become ``meta["label"]`` (int) and
``meta[<col>_name]``; other numeric and boolean columns are copied into ``meta``.
Ids are ``hf:<name>:<split>:<row index>``; canonical order is row order.

Determinism in streaming mode: rows have no random access, so the selection is
fetched at open time and kept in memory (``n_images`` is required; allow roughly
the encoded size of the selected images, ~110 kB each for ImageNet). When the split's
length is known from the dataset's metadata, the selected rows are exactly those of
the non-streaming ``subset(n_images, seed)`` (same ids), read in one pass over the
stream up to the last selected row. When the length is unknown, the selection is the
first ``n_images`` rows in stream order: reproducible for a fixed dataset revision
(pin it with ``revision=``), but ``seed`` cannot apply, and the description says so.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from vitprobe.data.catalog import Catalog, ImageSource, ListedCatalog
from vitprobe.data.decode import DecodeError, decode_image
from vitprobe.data.spec import Options
from vitprobe.errors import ImageSourceError

_SPLIT_PREFERENCE = ("validation", "val", "test", "train")
_OPTIONS = ("streaming", "image_column", "config", "revision", "cache_dir", "max_pixels")


def parse_target(target: str) -> tuple[str, str | None]:
    """``"org/name:validation"`` -> ("org/name", "validation"); a local path keeps
    its separators; an existing path containing ``:`` is taken whole."""
    if not target:
        raise ImageSourceError("hf: needs a dataset name or path, e.g. hf:imagenet-1k:validation")
    if os.path.exists(target) or ":" not in target:
        return target, None
    name, _, split = target.rpartition(":")
    if "/" in split or "\\" in split or not split:
        return target, None
    return name, split


def open_hf(target: str, opts: Options, *, n_images: int | None, seed: int) -> ImageSource:
    try:
        import datasets
    except ImportError:
        raise ImageSourceError(
            "hf: sources need the 'datasets' package: pip install 'vitprobe[hf-datasets]'"
        ) from None
    name, split = parse_target(target)
    streaming = opts.get_bool("streaming")
    image_column = opts.get_str("image_column")
    config = opts.get_str("config")
    revision = opts.get_str("revision")
    cache_dir = opts.get_str("cache_dir")
    max_pixels = opts.get_int("max_pixels")
    opts.finish(_OPTIONS)
    label = name.rstrip("/\\")
    try:
        dataset, split = _load(datasets, name, split, config, revision, cache_dir, streaming)
    except ImageSourceError:
        raise
    except Exception as err:  # hub/network/format errors of many types
        raise ImageSourceError(
            f"hf:{name}: cannot load dataset ({type(err).__name__}: {err})"
        ) from None
    column = _image_column(datasets, dataset, image_column, name)
    dataset = dataset.cast_column(column, datasets.Image(decode=False))
    meta_columns = _meta_columns(datasets, dataset.features, column)
    if streaming:
        return _open_streaming(
            dataset, label, split, column, meta_columns, n_images, seed, max_pixels
        )
    if len(dataset) == 0:
        raise ImageSourceError(f"hf:{name}:{split} is empty")
    catalog = HFCatalog(dataset, label, split, column, meta_columns, max_pixels)
    return ImageSource(catalog).subset(n_images, seed)


def _load(
    datasets: Any,
    name: str,
    split: str | None,
    config: str | None,
    revision: str | None,
    cache_dir: str | None,
    streaming: bool,
) -> tuple[Any, str]:
    if os.path.isdir(name):
        is_saved = any(
            os.path.exists(os.path.join(name, f)) for f in ("dataset_dict.json", "state.json")
        )
        if is_saved:
            if streaming:
                raise ImageSourceError(
                    f"hf:{name}: a save_to_disk folder is read without streaming"
                )
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(
                "imagefolder", data_dir=name, cache_dir=cache_dir, streaming=streaming
            )
        if isinstance(loaded, datasets.DatasetDict | datasets.IterableDatasetDict):
            split = _choose_split(list(loaded), split, name)
            return loaded[split], split
        return loaded, split or "train"
    if os.path.exists(name):
        raise ImageSourceError(f"hf:{name}: a local hf: source must be a folder")
    if split is None:
        split = _choose_split(
            datasets.get_dataset_split_names(name, config, revision=revision), None, name
        )
    loaded = datasets.load_dataset(
        name, config, split=split, revision=revision, cache_dir=cache_dir, streaming=streaming
    )
    return loaded, split


def _choose_split(available: list[str], split: str | None, name: str) -> str:
    if not available:
        raise ImageSourceError(f"hf:{name}: dataset has no splits")
    if split is not None:
        if split not in available:
            raise ImageSourceError(f"hf:{name}: no split {split!r}; splits: {', '.join(available)}")
        return split
    if len(available) == 1:
        return available[0]
    for preferred in _SPLIT_PREFERENCE:
        if preferred in available:
            return preferred
    raise ImageSourceError(f"hf:{name}: choose a split, e.g. hf:{name}:{available[0]}")


def _image_column(datasets: Any, dataset: Any, wanted: str | None, name: str) -> str:
    features = dataset.features or {}
    if wanted is not None:
        if wanted not in features:
            raise ImageSourceError(
                f"hf:{name}: no column {wanted!r}; columns: {', '.join(features)}"
            )
        return wanted
    for column, feature in features.items():
        if isinstance(feature, datasets.Image):
            return column
    raise ImageSourceError(
        f"hf:{name}: no Image column (columns: {', '.join(features)}); use ?image_column=<col>"
    )


def _meta_columns(datasets: Any, features: Any, image_column: str) -> dict[str, list[str] | None]:
    """{column: ClassLabel names or None} for the scalar columns worth keeping."""
    keep: dict[str, list[str] | None] = {}
    for column, feature in (features or {}).items():
        if column == image_column:
            continue
        if isinstance(feature, datasets.ClassLabel):
            keep[column] = list(feature.names)
        elif isinstance(feature, datasets.Value) and feature.dtype.startswith(
            ("int", "uint", "float", "bool")
        ):
            keep[column] = None
    return keep


def _row_meta(row: dict[str, Any], meta_columns: dict[str, list[str] | None]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for column, names in meta_columns.items():
        value = row.get(column)
        meta[column] = value
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            meta[f"{column}_name"] = names[value]
    return meta


def _decode_cell(cell: Any, max_pixels: int | None) -> Image.Image:
    if not isinstance(cell, dict):
        raise DecodeError(f"image cell is {type(cell).__name__}, not encoded bytes")
    if cell.get("bytes"):
        return decode_image(cell["bytes"], max_pixels=max_pixels)
    if cell.get("path"):
        return decode_image(cell["path"], max_pixels=max_pixels)
    raise DecodeError("empty image cell (no bytes, no path)")


class HFCatalog(Catalog):
    """A map-style (non-streaming) ``datasets.Dataset``: random access by row."""

    kind = "hf"

    def __init__(
        self,
        dataset: Any,
        name: str,
        split: str,
        column: str,
        meta_columns: dict[str, list[str] | None],
        max_pixels: int | None,
    ) -> None:
        self.name, self.split, self.column, self.max_pixels = name, split, column, max_pixels
        self.images = dataset.select_columns([column])
        self.meta_columns = meta_columns
        # metadata columns are small: read them once rather than per sample
        self.meta_values = (
            dataset.select_columns(list(meta_columns)).to_dict() if meta_columns else {}
        )
        self.length = len(dataset)

    def __len__(self) -> int:
        return self.length

    def sample_id(self, position: int) -> str:
        return f"hf:{self.name}:{self.split}:{position}"

    def sample_meta(self, position: int) -> dict[str, Any]:
        row = {c: values[position] for c, values in self.meta_values.items()}
        return _row_meta(row, self.meta_columns)

    def load(self, position: int) -> Image.Image:
        try:
            cell = self.images[int(position)][self.column]
        except Exception as err:  # a damaged arrow row must cost one sample, not the run
            raise DecodeError(f"cannot read row: {type(err).__name__}: {err}") from None
        return _decode_cell(cell, self.max_pixels)

    def describe(self) -> str:
        return f"Hugging Face dataset {self.name} ({self.split}): {len(self)} images"


class MaterialisedCatalog(ListedCatalog):
    """Rows fetched from a stream and kept in memory (encoded, not decoded)."""

    kind = "hf"

    def __init__(
        self,
        ids: list[str],
        cells: list[Any],
        metas: list[dict[str, Any]],
        text: str,
        max_pixels: int | None,
    ) -> None:
        self.ids, self.cells, self.metas = ids, cells, metas
        self.text, self.max_pixels = text, max_pixels

    def load(self, position: int) -> Image.Image:
        return _decode_cell(self.cells[position], self.max_pixels)

    def describe(self) -> str:
        return self.text


def _open_streaming(
    stream: Any,
    name: str,
    split: str,
    column: str,
    meta_columns: dict[str, list[str] | None],
    n_images: int | None,
    seed: int,
    max_pixels: int | None,
) -> ImageSource:
    if n_images is None or n_images <= 0:
        raise ImageSourceError(f"hf:{name}: streaming needs n_images (how many rows to fetch)")
    total = _stream_length(stream, split)
    if total is not None:
        if n_images > total:
            raise ImageSourceError(f"asked for {n_images} images but hf:{name}:{split} has {total}")
        wanted = set(np.random.default_rng(seed).permutation(total)[:n_images].tolist())
        note = f"{n_images} of {total} selected (seed {seed}), fetched by streaming"
    else:
        wanted = set(range(n_images))
        note = f"first {n_images} rows in stream order (streaming, length unknown: seed not used)"
    last = max(wanted)
    ids, cells, metas = [], [], []
    try:
        for index, row in enumerate(stream):
            if index in wanted:
                ids.append(f"hf:{name}:{split}:{index}")
                cells.append(row[column])
                metas.append(_row_meta(row, meta_columns))
            if index >= last:
                break
    except Exception as err:
        raise ImageSourceError(
            f"hf:{name}: streaming failed ({type(err).__name__}: {err})"
        ) from None
    if not ids:
        raise ImageSourceError(f"hf:{name}:{split} is empty")
    if len(ids) < n_images:
        note += f"; the stream ended early: only {len(ids)} rows"
    text = f"Hugging Face dataset {name} ({split}, streaming): {note}"
    return ImageSource(MaterialisedCatalog(ids, cells, metas, text, max_pixels))


def _stream_length(stream: Any, split: str) -> int | None:
    splits = getattr(getattr(stream, "info", None), "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    count = getattr(info, "num_examples", None)
    return int(count) if count else None
