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

Besides the protocol, this module holds what every accumulator (in
:mod:`vitprobe.stats` and :mod:`vitprobe.attention`) and the study runner share:
:func:`run_parallel` / :func:`resolve_threads` (groups or images of a batch on
threads), :func:`nonfinite_rows` (the images of a batch that hold NaN or inf) and
:func:`all_finite` (whether a whole cache is finite, with one device synchronisation),
:func:`host_to_device` (host arrays to the device without waiting for it) and
:attr:`Accumulator.device_path_on_cpu` (the accelerator code path on CPU tensors, for
tests; :class:`vitprobe.record.HostWaits` finds the calls on it that would wait).
Errors follow :mod:`vitprobe.errors`: :class:`~vitprobe.errors.NotCalibratedError`,
:class:`~vitprobe.errors.AlreadyCalibratedError`,
:class:`~vitprobe.errors.IncompatibleStateError` (merge and load), and so on.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

from vitprobe.errors import IncompatibleStateError
from vitprobe.resources import device_step_bytes

__all__ = ["Accumulator", "all_finite", "host_to_device", "nonfinite_rows", "resolve_threads",
           "run_parallel", "torch_threads"]


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
    #: run the accelerator code path (torch ops only, no host synchronisation) on CPU
    #: tensors too: how the tests check it, against the CPU path and for waits on the
    #: device, on machines without a GPU
    device_path_on_cpu: bool = False
    #: bytes of per-step temporaries on the accelerator path: accumulators that can stack
    #: layers or groups into one set of kernels take as many per step as fit, so that the
    #: host queueing the kernels keeps up with the device (each call costs the host
    #: microseconds, whatever the size of the tensors); None: by the device
    #: (:func:`vitprobe.resources.device_step_bytes`)
    device_step_bytes: int | None = None

    def uses_device_path(self, device: torch.device | str) -> bool:
        """Whether tensors on ``device`` take the accelerator code path."""
        return torch.device(device).type != "cpu" or self.device_path_on_cpu

    def items_per_step(self, n_items: int, bytes_per_item: int,
                       device: torch.device | str) -> int:
        """How many of ``n_items`` (layers, groups) one step of the accelerator path on
        ``device`` stacks: as many as keep ``bytes_per_item`` each within
        :attr:`device_step_bytes` (at least one), spread evenly over the steps."""
        budget = self.device_step_bytes
        if budget is None:
            budget = device_step_bytes(str(torch.device(device)))
        most = max(1, min(n_items, budget // max(bytes_per_item, 1)))
        n_steps = -(-n_items // most)
        return -(-n_items // n_steps)

    def steps(self, n_items: int, bytes_per_item: int,
              device: torch.device | str) -> list[slice]:
        """The items of each step of the accelerator path, as slices
        (:meth:`items_per_step` at a time)."""
        size = self.items_per_step(n_items, bytes_per_item, device)
        return [slice(first, min(first + size, n_items)) for first in range(0, n_items, size)]

    def calibrate(self, cache: Mapping[str, Any]) -> None:  # pragma: no cover - optional
        """Consume one batch of the calibration pass.

        Raises ``AlreadyCalibratedError`` after :meth:`end_calibration`, and the input
        errors of :meth:`update`.
        """

    def end_calibration(self) -> None:  # pragma: no cover - optional
        """Freeze what calibration learned (bin edges, mean token...).

        Raises ``InsufficientDataError`` when calibration saw fewer images than the
        statistic needs (e.g. fewer than ``bins`` for quantile edges).
        """

    def calibration_state_dict(self) -> dict[str, np.ndarray]:
        """The calibrated state without any counted images: what every other shard loads
        (:meth:`load_state_dict`) before streaming its own images. The default is
        :meth:`state_dict`, right for accumulators that count nothing during calibration;
        those with ``counts_calibration`` return their counts zeroed."""
        return self.state_dict()

    @abstractmethod
    def update(self, cache: Mapping[str, Any]) -> None:
        """Consume one recorded batch: ``cache[site]`` is a tensor with batch first.

        Raises (every accumulator, the same type for the same mistake)
        ``NotCalibratedError`` before calibration ends, ``MissingSiteError`` for a site
        not in ``cache``, ``InputShapeError`` for a tensor of the wrong shape or sites
        holding different numbers of images, ``NonFiniteInputError`` for NaN or inf
        where the statistic refuses them. A refused batch changes nothing.
        """

    @abstractmethod
    def merge(self, other: Self) -> Self:
        """Add ``other``'s state (same config, disjoint images) into ``self``; return self.

        Raises ``IncompatibleStateError`` for another type, configuration or
        calibration (see :meth:`check_mergeable`).
        """

    @abstractmethod
    def state_dict(self) -> dict[str, np.ndarray]:
        """All state as numpy arrays (counts int64, moments float64)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned (exactly).

        Raises ``IncompatibleStateError`` when the arrays do not fit this accumulator's
        configuration.
        """

    @abstractmethod
    def result(self):  # -> xarray.Dataset
        """The finished statistics as a labelled :class:`xarray.Dataset`.

        Raises ``NotCalibratedError`` before calibration ends and
        ``InsufficientDataError`` before any image.
        """

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments, stored beside saved states."""
        return {}

    def check_mergeable(self, other: Accumulator) -> None:
        """Refuse to merge ``other`` unless it is the same type with the same :meth:`config`.

        Raises
        ------
        IncompatibleStateError
            ``other`` is another type of accumulator or was configured differently.
        """
        if type(other) is not type(self) or other.config() != self.config():
            raise IncompatibleStateError(
                f"cannot merge {type(other).__name__} with a different configuration "
                f"into {type(self).__name__}"
            )

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


# -- shared by the accumulators -----------------------------------------------------------

_POOLS: dict[int, ThreadPoolExecutor] = {}


def _shutdown_pools() -> None:
    for pool in _POOLS.values():
        pool.shutdown(wait=False)


atexit.register(_shutdown_pools)


def resolve_threads(threads: int | None) -> int:
    """Worker threads for CPU accumulation: ``threads``, or torch's intra-op count if None/0."""
    return max(1, int(threads) if threads else torch.get_num_threads())


def run_parallel(fn: Callable[[int], None], n: int, threads: int) -> None:
    """Call ``fn(i)`` for ``i < n`` on up to ``threads`` threads; exceptions propagate.

    numpy, torch and the compiled kernels release the GIL in their loops, so the
    groups (or image chunks) of a batch are accumulated in parallel, as the forward
    pass itself uses torch's intra-op threads. One pool per thread count is kept for
    the life of the process (shut down at exit).
    """
    if threads <= 1 or n <= 1:
        for i in range(n):
            fn(i)
        return
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="vitprobe-acc")
    for f in [pool.submit(fn, i) for i in range(n)]:
        f.result()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops with ``n`` intra-op threads inside the block (restored after).
    Process-wide: use it from the thread that drives the batch, not from workers."""
    before = torch.get_num_threads()
    if before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def host_to_device(values: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``values`` (host memory) as a tensor on ``device``, without waiting for the device.

    A plain copy from pageable host memory (``torch.as_tensor(a, device=...)``) makes
    the host wait until the device has finished all queued work; with
    ``non_blocking=True`` CUDA copies the bytes to a staging buffer at once and queues
    the transfer behind that work, so the host goes on queueing the batch's kernels.
    """
    t = torch.as_tensor(values)
    return t if t.device == torch.device(device) else t.to(device, non_blocking=True)


def _finite_sum(t: torch.Tensor) -> torch.Tensor:
    """``t``'s sum (0-d): NaN or inf anywhere in ``t`` makes it non-finite, and
    activations never come near overflowing a float32 sum."""
    return t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite, deciding with one host
    synchronisation per device: the tensors' sums are stacked and checked at once.

    Checking each recorded site on its own (:func:`nonfinite_rows`) makes the host wait
    for a GPU once per site, 60 times per batch and model for DINOv2-S/14, and the
    device idles while the host catches up; the common all-finite case needs one wait.
    """
    tensors = list(tensors)
    sums: dict[torch.device, list[torch.Tensor]] = {}
    # one intra-op thread on a CPU, as in nonfinite_rows
    with (torch_threads(1) if any(t.device.type == "cpu" for t in tensors)
          else contextlib.nullcontext()):
        for t in tensors:
            sums.setdefault(t.device, []).append(_finite_sum(t).double())
    return all(bool(torch.isfinite(torch.stack(v)).all()) for v in sums.values())


def nonfinite_rows(t: torch.Tensor) -> torch.Tensor | None:
    """None when every value of ``t`` is finite, else a (batch,) bool mask of the rows
    (images) holding NaN or inf. One sum decides the common case (about 50x cheaper than
    ``isfinite`` on every value): NaN and inf propagate into it, and activations never
    come near overflowing a float32 sum.

    On CPU the sum runs on one intra-op thread: it is memory-bound (about 0.5 ms for a
    (32, 257, 384) float32 site), while a two-thread reduction waits at torch's barrier
    for the other thread, which on a busy 2-core machine costs a scheduler slice: 34 ms
    median against 0.8 ms measured side by side (60 sites are checked per batch)."""
    with torch_threads(1) if t.device.type == "cpu" else contextlib.nullcontext():
        if bool(torch.isfinite(_finite_sum(t))):
            return None
        return ~torch.isfinite(t).flatten(1).all(1)
