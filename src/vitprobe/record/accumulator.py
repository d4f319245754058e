"""The protocol every streaming statistic follows.

An accumulator consumes recorded batches (``dict`` site name -> tensor, as handed
out by :meth:`vitprobe.models.ProbedViT.stream`) and keeps only fixed-size state,
so memory is constant in the number of images. States merge exactly (counts add,
moments combine with Chan et al.'s pairwise formulas), which is what resuming,
sharding over workers and ``torch.distributed`` reductions are built on.

Life cycle::

    acc = SomeAccumulator(model_info, ...)
    if acc.needs_calibration:           # e.g. quantile bin edges
        for cache in calibration_batches: acc.calibrate(cache)
        acc.end_calibration()
    for cache in batches: acc.update(cache)
    acc.merge(other_shard)              # same config, disjoint images
    ds = acc.result()                   # xarray.Dataset, saved as netCDF
    state = acc.state_dict()            # numpy arrays only: checkpoint / all-gather

One pass instead of two: an accumulator with ``counts_calibration = True`` counts the
images it is given in :meth:`~Accumulator.calibrate` itself (at the latest inside
:meth:`~Accumulator.end_calibration`), exactly as if :meth:`~Accumulator.update` had been
called on the same batches afterwards: same batch boundaries, same pairs within a batch,
same split halves. The caller then feeds the calibration batches to ``calibrate()`` of
such accumulators, to ``update()`` of the accumulators that need no calibration, and
never forwards those images again::

    for cache in first_batches:
        for acc in accs:
            if acc.needs_calibration: acc.calibrate(cache)   # buffered, later counted
            else: acc.update(cache)
    for acc in accs:
        if acc.needs_calibration: acc.end_calibration()
    for cache in remaining_batches: ...                       # update() as usual

Other shards (processes) must start from :meth:`~Accumulator.calibration_state_dict`
(the calibration without the counts of the calibration images), not from
:meth:`~Accumulator.state_dict`, or those images would be counted once per shard.
"""

from __future__ import annotations

import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np


class Accumulator(ABC):
    """Base class of streaming statistics. Subclasses set ``name`` and ``sites``."""

    #: short identifier, used for file names (``<name>.nc``) and checkpoints
    name: str = "accumulator"
    #: recording sites (or globs) this accumulator reads from each batch
    sites: tuple[str, ...] = ()
    #: whether :meth:`calibrate` must see data before :meth:`update`
    needs_calibration: bool = False
    #: whether the images given to :meth:`calibrate` are counted too (by the end of
    #: :meth:`end_calibration`), so that they must not be passed to :meth:`update` again
    counts_calibration: bool = False

    def calibrate(self, cache: Mapping[str, Any]) -> None:  # pragma: no cover - optional
        """Consume one batch of the calibration pass."""

    def end_calibration(self) -> None:  # pragma: no cover - optional
        """Freeze what calibration learned (bin edges, mean token...)."""

    def calibration_state_dict(self) -> dict[str, np.ndarray]:
        """The calibrated state without any counted images: what every other shard loads
        (:meth:`load_state_dict`) before streaming its own images. The default is
        :meth:`state_dict`, right for accumulators that count nothing during calibration;
        those with ``counts_calibration`` return their counts zeroed."""
        return self.state_dict()

    @abstractmethod
    def update(self, cache: Mapping[str, Any]) -> None:
        """Consume one recorded batch: ``cache[site]`` is a tensor with batch first."""

    @abstractmethod
    def merge(self, other: Self) -> Self:
        """Add ``other``'s state (same config, disjoint images) into ``self``; return self."""

    @abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """All state as numpy arrays (counts int64, moments float64)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (exactly)."""

    @abstractmethod
    def result(self):  # -> xarray.Dataset
        """The finished statistics as a labelled :class:`xarray.Dataset`."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments, stored beside saved states."""
        return {}

    # -- persistence: atomic, so an interrupted save never corrupts a checkpoint
    def save_state(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        state["__config__"] = np.frombuffer(json.dumps(self.config()).encode(), dtype=np.uint8)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez(tmp, **state)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def load_state(self, path: str | os.PathLike) -> None:
        with np.load(path, allow_pickle=False) as data:
            state = {k: data[k] for k in data.files if k != "__config__"}
        self.load_state_dict(state)
