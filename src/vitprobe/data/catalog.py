"""Image sources: a catalogue of samples in a canonical order, and a selection of it.

A :class:`Catalog` knows every sample a source offers (its *universe*), in a
canonical order that does not depend on the file system: folders, lists and tar
shards are sorted by sample id (relative path, NFC-normalised, compared by code
point); Hugging Face datasets by row index; the demo set by photo name and crop
number; stimuli by their index. :class:`ImageSource` is a catalogue plus an array of
selected positions; ``subset``, ``shard`` and ``exclude`` return new sources and never
touch the files, so they are cheap even for 50k-image folders.

Determinism of ``subset(n, seed)``: positions ``numpy.random.default_rng(seed)
.permutation(len(self))[:n]``, then sorted back into canonical order. It depends only
on the set of ids and on ``(n, seed)``, not on listing order, file system, or machine.
Subsets are nested: with the same seed, the first 100 are inside the first 1000.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vitprobe.errors import ImageSourceError

__all__ = ["Catalog", "ImageSource", "ListedCatalog", "Sample", "processing_order"]

#: second key of the processing order's RNG, so the order is not the subset's permutation
_ORDER_STREAM = 0x0D0E


def processing_order(n_images: int, seed: int = 0) -> np.ndarray:
    """Indices 0..n-1 in the seeded random processing order (see
    :meth:`ImageSource.processing_order`)."""
    return np.random.default_rng([seed, _ORDER_STREAM]).permutation(n_images)


@dataclass(frozen=True, slots=True)
class Sample:
    """One selected sample: ``id`` is its stable identity (relative path,
    ``hf:name:split:index``, ``demo:astronaut:crop(y,x,h,w)``, ...); ``meta`` holds
    labels, crop boxes or stimulus parameters; ``position`` is its index in the
    catalogue's canonical order."""

    id: str
    meta: dict[str, Any] = field(default_factory=dict)
    position: int = -1


class Catalog:
    """All samples a source offers, in canonical order. Subclasses implement
    ``__len__``, ``sample_id``, ``load`` and usually ``sample_meta`` / ``where``.

    Catalogues travel to DataLoader worker processes, so they must be picklable and
    must not hold open file handles.
    """

    kind: str = "images"
    #: True for generated stimuli: images come at the model input size, no resize/crop
    native_resolution: bool = False

    def __len__(self) -> int:
        raise NotImplementedError

    def sample_id(self, position: int) -> str:
        raise NotImplementedError

    def sample_meta(self, position: int) -> dict[str, Any]:
        return {}

    def load(self, position: int) -> Image.Image | np.ndarray:
        """Decoded RGB ``PIL.Image``, or for stimuli a float (H, W, 3) array in [0, 1].

        Raises:
            vitprobe.data.decode.DecodeError: the sample cannot be decoded (skipped).
        """
        raise NotImplementedError

    def where(self, position: int) -> str:
        """Where to find the sample (an absolute path for files), for skip reports."""
        return self.sample_id(position)

    def describe(self) -> str:
        raise NotImplementedError


class ListedCatalog(Catalog):
    """A catalogue that holds its sample ids and metadata as lists (``self.ids``,
    ``self.metas``, same order)."""

    ids: list[str]
    metas: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.ids)

    def sample_id(self, position: int) -> str:
        return self.ids[position]

    def sample_meta(self, position: int) -> dict[str, Any]:
        return dict(self.metas[position])


class ImageSource:
    """A selection of samples from a :class:`Catalog`.

    Attributes:
        catalog: the underlying catalogue (the whole universe of samples).
        positions: int64 array of selected catalogue positions, in canonical order.
    """

    def __init__(
        self,
        catalog: Catalog,
        positions: np.ndarray | None = None,
        selection: tuple[str, ...] = (),
    ) -> None:
        self.catalog = catalog
        if positions is None:
            positions = np.arange(len(catalog), dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.int64)
        self._selection = selection

    # -- identity ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Sample:
        position = int(self.positions[index])
        return Sample(
            self.catalog.sample_id(position), self.catalog.sample_meta(position), position
        )

    def __iter__(self) -> Iterator[Sample]:
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return f"ImageSource({self.description!r})"

    @property
    def ids(self) -> list[str]:
        """Stable string identity of each selected sample, in order."""
        return [self.catalog.sample_id(int(p)) for p in self.positions]

    @property
    def kind(self) -> str:
        """``"folder"``, ``"list"``, ``"tar"``, ``"hf"``, ``"demo"`` or ``"stimuli"``."""
        return self.catalog.kind

    @property
    def is_demo(self) -> bool:
        return self.catalog.kind == "demo"

    @property
    def native_resolution(self) -> bool:
        return self.catalog.native_resolution

    @property
    def description(self) -> str:
        """Human description, e.g. "folder /data/val: 50000 images in 1000 class
        folders; 1000 selected (seed 0); shard 2/4: 250 images"."""
        parts = [self.catalog.describe(), *self._selection]
        return "; ".join(parts)

    def metadata(self, index: int) -> dict[str, Any]:
        """Metadata dict of the ``index``-th selected sample."""
        return self.catalog.sample_meta(int(self.positions[index]))

    def load(self, index: int) -> Image.Image | np.ndarray:
        """Decode the ``index``-th selected sample (see :meth:`Catalog.load`)."""
        return self.catalog.load(int(self.positions[index]))

    def where(self, index: int) -> str:
        return self.catalog.where(int(self.positions[index]))

    def at_resolution(self, input_size: tuple[int, int], patch_size: int | None) -> ImageSource:
        """For generated stimuli: the same selection rendered at the model's input size
        and patch size (see ``vitprobe.data.stimulus_source``); other sources are
        returned unchanged (the loader resizes them)."""
        rebind = getattr(self.catalog, "with_geometry", None)
        if rebind is None:
            return self
        catalog = rebind(tuple(input_size), patch_size)
        if catalog is self.catalog:
            return self
        return type(self)(catalog, self.positions, self._selection)

    # -- selection -----------------------------------------------------------------
    @property
    def selection(self) -> tuple[str, ...]:
        """The selection steps applied to the catalogue, as human notes."""
        return self._selection

    def take(self, indices: Iterable[int] | np.ndarray, note: str = "") -> ImageSource:
        """The samples at ``indices`` (into this source, in the given order)."""
        index = np.asarray(
            list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64
        )
        chosen = self.positions[index]
        return self._derive(chosen, note or f"{len(chosen)} taken")

    def _derive(self, positions: np.ndarray, note: str) -> ImageSource:
        return type(self)(self.catalog, positions, (*self._selection, note))

    def subset(self, n_images: int | None, seed: int = 0) -> ImageSource:
        """``n_images`` samples picked with ``numpy.random.default_rng(seed)``,
        returned in canonical order; ``None`` keeps all.

        Raises:
            ImageSourceError: ``n_images`` is not positive or exceeds ``len(self)``.
        """
        if n_images is None:
            return self
        n_images = int(n_images)
        if n_images <= 0:
            raise ImageSourceError(f"n_images must be positive, got {n_images}")
        if n_images > len(self):
            raise ImageSourceError(
                f"asked for {n_images} images, but only {len(self)} are available "
                f"({self.description})"
            )
        order = np.random.default_rng(seed).permutation(len(self))[:n_images]
        chosen = self.positions[np.sort(order)]
        return self._derive(chosen, f"{n_images} of {len(self)} selected (seed {seed})")

    def processing_order(self, seed: int = 0) -> np.ndarray:
        """Indices 0..len-1 of this selection in a seeded random order.

        A source lists its samples in canonical order (an ImageNet folder: one class at
        a time), so a prefix is not a random sample. Process in this order instead:
        every prefix is then a random sample (calibration), and neighbours are
        independent draws (statistics that pair images of a batch). It depends only on
        ``len(self)`` and ``seed``: the same on every machine and for any process count.
        """
        return processing_order(len(self), seed)

    def shard(self, rank: int, world_size: int) -> ImageSource:
        """Every ``world_size``-th sample starting at ``rank``: shards are disjoint,
        their union is this source, sizes differ by at most one."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ImageSourceError(f"invalid shard {rank} of {world_size}")
        chosen = self.positions[rank::world_size]
        return self._derive(chosen, f"shard {rank + 1}/{world_size}: {len(chosen)} images")

    def exclude(self, ids: Iterable[str]) -> ImageSource:
        """Drop samples whose id is in ``ids`` (already processed, when resuming)."""
        drop = set(ids)
        if not drop:
            return self
        keep = np.array(
            [self.catalog.sample_id(int(p)) not in drop for p in self.positions], dtype=bool
        )
        removed = int((~keep).sum())
        return self._derive(self.positions[keep], f"{removed} already done, {int(keep.sum())} left")
