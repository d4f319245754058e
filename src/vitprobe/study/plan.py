"""The plan of a run: in which order images are processed, in which batches, in how
many passes.

Order. The selected subset (canonical order, listed in ``images.txt``) is processed
in a seeded random permutation, the same on every machine and for any number of
processes. So every prefix of the order is a random sample (the calibration images
are the first ones), and the images of one batch are independent draws (statistics
that pair two images of a batch, like the shuffled-pair null, pair independent
images). A folder sorted by class would otherwise give calibration edges from five
classes of fish and a null built from pairs of the same class.

Chunks. The order is cut into chunks of ``batch_size`` images; a chunk is one batch
for the model, it is counted all at once, and it is what checkpoints list as done.
Chunks go to ranks round-robin, so the batches are the same for 1 process or many,
and for an interrupted run or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from vitprobe.data.catalog import processing_order

__all__ = ["RunPlan"]


@dataclass(frozen=True)
class RunPlan:
    """Batches and passes of one run.

    Attributes:
        n_images: images in the selection.
        batch_size: images per chunk (the last chunk may be shorter).
        seed: the run's seed (fixes the order).
        n_passes: passes over the images (the MI counts of a large model may need several).
        calibration_chunks: how many leading chunks calibrate each pass.
    """

    n_images: int
    batch_size: int
    seed: int
    n_passes: int = 1
    calibration_chunks: int = 1

    @classmethod
    def make(cls, n_images: int, batch_size: int, seed: int, *, n_passes: int = 1,
             calibration_images: int = 0) -> RunPlan:
        n_chunks = -(-n_images // batch_size)
        wanted = -(-calibration_images // batch_size) if calibration_images else 0
        return cls(n_images, batch_size, seed, n_passes, min(wanted, n_chunks))

    @cached_property
    def order(self) -> np.ndarray:
        """Selection indices in processing order (:meth:`ImageSource.processing_order`)."""
        return processing_order(self.n_images, self.seed)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_images // self.batch_size)

    def chunk(self, index: int) -> np.ndarray:
        """Selection indices (into the canonical subset) of chunk ``index``."""
        start = index * self.batch_size
        return self.order[start:start + self.batch_size]

    def chunks(self, indices: list[int] | range) -> np.ndarray:
        """Selection indices of several chunks, concatenated in the given order."""
        parts = [self.chunk(i) for i in indices]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def calibration(self) -> list[int]:
        """Chunks that calibrate a pass (a random sample of the images)."""
        return list(range(self.calibration_chunks))

    def for_rank(self, remaining: list[int], rank: int, world_size: int) -> list[int]:
        """The chunks of ``remaining`` that rank ``rank`` counts (round-robin)."""
        return remaining[rank::world_size]
