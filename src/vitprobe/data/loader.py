"""Batches of preprocessed images, with worker processes, and a complete skip report.

Skipping across processes: a worker that cannot decode a sample returns a
:class:`SkippedImage` record instead of pixels; the collate function (which runs in
the worker) separates records from images and ships them inside the batch; the
:class:`ImageLoader` in the main process moves them to ``loader.skipped`` before
yielding the batch. So after a full iteration ``loader.skipped`` names every skipped
sample, whatever the number of workers, and ``n_loaded + len(skipped) == len(source)``.
A batch whose samples were all skipped is not yielded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vitprobe.data.catalog import ImageSource
from vitprobe.data.decode import DecodeError
from vitprobe.data.transforms import normalize, prepare
from vitprobe.errors import ImageSourceError
from vitprobe.models.preprocess import PreprocessConfig

__all__ = ["ImageLoader", "SkippedImage", "make_loader"]


@dataclass(frozen=True)
class SkippedImage:
    """A sample that could not be used. Unpacks as ``(path, reason)``.

    Attributes:
        id: the sample id (as in ``source.ids``).
        path: where it is: an absolute file path, ``shard.tar:key@offset``, or the id.
        reason: why, e.g. ``"truncated image data (JPEG): image file is truncated"``.
    """

    id: str
    path: str
    reason: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.path, self.reason))


class _SampleDataset(Dataset):
    """Map-style dataset over an ImageSource: (pixels HWC array, id, meta) or a skip."""

    def __init__(self, source: ImageSource, cfg: PreprocessConfig) -> None:
        self.source, self.cfg = source, cfg

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str, dict[str, Any]] | SkippedImage:
        sample = self.source[index]
        try:
            array = prepare(self.source.load(index), self.cfg)
        except DecodeError as err:
            return SkippedImage(sample.id, self.source.where(index), err.reason)
        except ImageSourceError:
            raise  # configuration error (e.g. stimulus size): stop, do not skip everything
        except Exception as err:
            # an image PIL decoded but cannot resample (exotic mode, absurd size, ...)
            reason = f"preprocessing failed: {type(err).__name__}: {err}"
            return SkippedImage(sample.id, self.source.where(index), reason)
        return array, sample.id, sample.meta


class _Collate:
    """Runs in the worker: stack the good samples, normalise, pass skip records on."""

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg

    def __call__(self, items: list) -> dict[str, Any]:
        skipped = [item for item in items if isinstance(item, SkippedImage)]
        good = [item for item in items if not isinstance(item, SkippedImage)]
        if good:
            arrays = [array for array, _, _ in good]
            if any(a.dtype != np.uint8 for a in arrays):
                arrays = [
                    a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a for a in arrays
                ]
            pixels = normalize(np.stack(arrays), self.cfg)
        else:
            pixels = torch.empty((0, 3, *self.cfg.input_size), dtype=torch.float32)
        return {
            "pixels": pixels,
            "ids": [sample_id for _, sample_id, _ in good],
            "meta": [meta for _, _, meta in good],
            "skipped": skipped,
        }


class ImageLoader:
    """Iterable of batches ``{"pixels": float32 (B, 3, H, W), "ids": list[str],
    "meta": list[dict]}``, in the source's order.

    Attributes:
        source: the ImageSource (for stimuli: at the model's resolution).
        skipped: :class:`SkippedImage` records, complete after a full iteration
            (reset when a new iteration starts).
        n_loaded: samples yielded so far in the current iteration.
    """

    def __init__(
        self,
        source: ImageSource,
        preprocess: PreprocessConfig,
        *,
        batch_size: int,
        workers: int,
        prefetch_factor: int = 2,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ImageSourceError(f"batch_size must be >= 1, got {batch_size}")
        if int(workers) < 0:
            raise ImageSourceError(f"workers must be >= 0 (0: load in this process), got "
                                   f"{workers}")
        self.source, self.preprocess = source, preprocess
        self.batch_size, self.workers = batch_size, int(workers)
        self.skipped: list[SkippedImage] = []
        self.n_loaded = 0
        self._loader = DataLoader(
            _SampleDataset(source, preprocess),
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.workers,
            collate_fn=_Collate(preprocess),
            prefetch_factor=prefetch_factor if self.workers else None,
            pin_memory=pin_memory,
        )

    def __len__(self) -> int:
        """Number of batches, before skips (an upper bound)."""
        return math.ceil(len(self.source) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = []
        self.n_loaded = 0
        for batch in self._loader:
            self.skipped.extend(batch.pop("skipped"))
            if not batch["ids"]:
                continue
            self.n_loaded += len(batch["ids"])
            yield batch

    def report(self) -> str:
        """Human summary of the last iteration, listing every skipped file and why."""
        total = len(self.source)
        lines = [f"{self.n_loaded} of {total} images loaded, {len(self.skipped)} skipped"]
        lines += [f"  skipped {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)


def make_loader(
    source: ImageSource | str,
    preprocess: PreprocessConfig,
    *,
    batch_size: int = 32,
    workers: int = 0,
    patch_size: int | None = None,
    prefetch_factor: int = 2,
    pin_memory: bool = False,
) -> ImageLoader:
    """Batches of model-ready pixels from ``source``.

    Args:
        source: an ImageSource (or a spec string, opened with default options).
        preprocess: the model's preprocessing (resize, crop, mean, std, interpolation).
        batch_size: images per batch (the last batch may be smaller, and batches lose
            their skipped samples).
        workers: DataLoader worker processes (0: load in this process).
        patch_size: the model's patch side in pixels; stimuli are rendered for it
            and for ``preprocess.input_size`` (see ``vitprobe.data.stimulus_source``).
        prefetch_factor: batches each worker prepares ahead.
        pin_memory: put batches in page-locked memory (for a CUDA device: the copy
            with ``non_blocking=True`` then overlaps the GPU's work);
            :func:`vitprobe.resources.loader_settings` chooses it and ``workers`` from
            the device.

    Returns:
        An :class:`ImageLoader`; after iterating, ``loader.skipped`` and
        ``loader.report()`` say which samples were skipped and why.
    """
    if not isinstance(source, ImageSource):
        from vitprobe.data.sources import open_images

        source = open_images(source)
    source = source.at_resolution(preprocess.input_size, patch_size)
    return ImageLoader(
        source, preprocess, batch_size=batch_size, workers=workers,
        prefetch_factor=prefetch_factor, pin_memory=pin_memory,
    )
