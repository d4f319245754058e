"""Joint counts of each central neuron against its channel at every patch position.

For every (layer, sublayer, channel) the central neuron ``x`` (the channel at the
centre patch, convention in :mod:`vitprobe.stats.layout`) is paired with the same
channel ``y`` at every patch position, over images. Each activation is turned into
an equal-frequency bin id once per image (edges fixed from a calibration reservoir,
:mod:`vitprobe.stats.binning`) and the pair's ``B x B`` integer histogram is
incremented; mutual information then comes from the counts with the Miller-Madow
correction and bin-width extrapolation of :mod:`vitprobe.stats.mi`. Memory is constant
in the number of images.

Counts kept per (layer, sublayer) group
---------------------------------------
* ``counts``, canonically (halves, P, C, B_x, B_y) (:meth:`JointCounts.canonical`):
  halves = 2 with ``split_half`` (even / odd image index in this accumulator's
  stream), else 1. Their sum is the full-data histogram; the two halves give
  split-half error bars. int16 on CPU while no half can exceed 32767 images (then
  promoted to int32), int32 on accelerators. Stored as (halves, C, B_x, P, B_y): on CPU
  every increment is a cache miss into gigabytes of counts, and in this order one
  image's increments for a channel stream through one (P, B_y) row (about 2x faster
  than neuron-major order).
* ``null`` (C_null, B_x, P, B_y) int32, stored and saved in that order (the
  main counts' channel-major order, for the same reason): the shuffled pairing ``x``
  from image ``i`` with ``y`` from image ``i + 1`` of the same batch (the last image
  pairs with the first), for an evenly spaced subset of ``null_channels`` channels
  (``C_null = len(null_idx)``; :func:`null_channel_subset`). Only batches of two or
  more images add to it; ``n_null`` counts their images. Its MI is the null level
  (0 up to the estimator's bias and noise; Panzeri et al. 2007); the result
  (:mod:`vitprobe.stats.joint_result`) reads it as (P, C_null, B_x, B_y). Pairing
  within the batch makes the counts a function of the batches alone, so any split of
  the batches over processes, or over an interruption, gives the same counts.
* ``cross`` (halves, K, B_x, B_y) int32: optional cross-channel pairs, a
  deterministic sample (``seed``) of ``cross_pairs_per_distance`` triples (central
  channel ``a``, channel ``b != a``, position) at every rounded distance 0, 1, 2, ...

Split halves follow the images' global index when the cache carries one under
:data:`IMAGE_INDEX` (the study runner puts each image's position in the seeded subset
there), else their position in this accumulator's stream.

The calibration phase holds a reservoir of the first ``calibration_images`` images
(float32, ``R x P x C`` per group) and is freed when the edges are fixed.

With ``counts_calibration=True`` the calibration images are counted too, so the study
forwards them once (:class:`~vitprobe.record.Accumulator`): :meth:`JointCounts.calibrate`
keeps the whole batches it is given (references to the recorded tensors, no copy when
every channel is studied: the reservoir is their first ``R`` images), and as soon as the
reservoir is full it fixes the edges and counts the kept batches, group by group, freeing
each group's batches once counted; later ``calibrate`` batches are counted at once. The
peak is that of the two-pass path (the reservoir, then the counts) plus, when ``R`` is not
a multiple of the batch, the rest of the last batch, and the counts of one group per
thread. Kept activations at ``R = 256``, float32, all channels: DINOv2-S/14 (24 groups,
257 tokens, 384 channels) 2.43 GB, ViT-B/16 (197 tokens, 768 channels) 3.72 GB; the
two-pass path copied 2.42 GB and 3.70 GB into its reservoir. They are the recorded tensors
themselves, so :class:`~vitprobe.stats.NeuronHistograms` counting its calibration too
keeps the same memory, not a second copy. Use
:func:`vitprobe.stats.planning.plan_passes` to split the (layer, sublayer) groups into
passes that fit a memory budget.

Joint-count axes: ``bin_x`` is the central neuron's bin, ``bin_y`` the other neuron's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch
import xarray as xr

from vitprobe._jit import jit_enabled
from vitprobe.errors import (
    AlreadyCalibratedError,
    ConfigurationError,
    CountOverflowError,
    IncompatibleStateError,
    InputShapeError,
    InsufficientDataError,
    NotCalibratedError,
)
from vitprobe.record.accumulator import (
    Accumulator,
    host_to_device,
    resolve_threads,
    run_parallel,
)
from vitprobe.stats._common import (
    add_ones,
    as_float32_numpy,
    patch_activations,
)
from vitprobe.stats._kernels import joint_update
from vitprobe.stats.binning import digitize, edge_ranks
from vitprobe.stats.layout import Group, NeuronLayout

__all__ = ["IMAGE_INDEX", "JointCounts", "cross_pair_sample", "null_channel_subset"]

#: optional cache entry: (batch,) int64 global image indices, for split-half parity
IMAGE_INDEX = "image_index"

_INT16_MAX = 32767


def null_channel_subset(n_channels: int, n: int | None) -> np.ndarray:
    """Indices of ``n`` evenly spaced channels out of ``n_channels`` (all when ``n`` is
    None or larger, none when 0)."""
    if n is None or n >= n_channels:
        return np.arange(n_channels)
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, n_channels - 1, n).round().astype(np.int64))


def cross_pair_sample(layout: NeuronLayout, n_channels: int, per_distance: int,
                      seed: int = 0) -> np.ndarray:
    """Deterministic cross-channel pairs: (K, 3) rows (channel_x idx, channel_y idx, position).

    For every rounded distance ``d`` present on the grid, ``per_distance`` triples with
    a position at distance ``d`` and two different channel indices (into the
    accumulator's channel list), drawn with ``numpy.random.default_rng(seed)``.
    """
    if per_distance <= 0 or n_channels < 2:
        return np.zeros((0, 3), dtype=np.int64)
    rng = np.random.default_rng(seed)
    dbin = layout.distance_bin
    rows = []
    for d in np.unique(dbin):
        pos = np.flatnonzero(dbin == d)
        p = rng.choice(pos, size=per_distance, replace=True)
        a = rng.integers(0, n_channels, size=per_distance)
        b = (a + rng.integers(1, n_channels, size=per_distance)) % n_channels
        rows.append(np.column_stack([a, b, p]))
    return np.concatenate(rows).astype(np.int64)


class JointCounts(Accumulator):
    """Streaming joint histograms of central neurons vs. their channel at every position.

    Parameters
    ----------
    layout : NeuronLayout
    bins : int
        Equal-frequency bins per neuron ``B`` (even; keep ``N / B^2 >= 12``, e.g.
        :func:`~vitprobe.stats.binning.choose_bins` of the planned number of images).
    groups : (layer, sublayer) pairs, default all
    channels : channel indices to study, default all ``d_model``
    calibration_images : int
        Reservoir size (first images) that fixes each neuron's ``B - 1`` quantile
        edges; images beyond it passed to :meth:`calibrate` are ignored.
    split_half : bool
        Keep even- and odd-image counts separately (doubles the count memory).
    null_channels : int or None
        Channels (evenly spaced) with shuffled-pair null counts; None = all, 0 = none.
    cross_pairs_per_distance : int
        Cross-channel pairs per rounded distance (0 = off).
    seed : int
        Seed of the cross-pair sample.
    count_dtype : ``"auto"`` (int16 on CPU, promoted to int32 before a half could
        exceed 32767 images; int32 on accelerators), ``"int16"`` or ``"int32"``.
    threads : int, optional
        CPU worker threads over the (layer, sublayer) groups of a batch; default
        ``torch.get_num_threads()`` (the forward's own intra-op thread count).
    device : torch device, optional
        Where counts live (default: the first batch's device). On CUDA, binning is
        ``torch.searchsorted`` and counting ``index_add_``; on CPU, numpy kernels.
    counts_calibration : bool
        Count the images given to :meth:`calibrate` as well (see the module notes): the
        caller must not pass them to :meth:`update` again. The counts equal those of
        ``calibrate`` + ``end_calibration`` + ``update`` on the same batches. The
        recorded tensors are kept until counted: do not modify them in place.
    """

    name = "neuron_mi"
    needs_calibration = True

    def __init__(self, layout: NeuronLayout, bins: int = 32, *,
                 groups: Iterable[Group] | None = None, channels: Sequence[int] | None = None,
                 calibration_images: int = 1024, split_half: bool = True,
                 null_channels: int | None = 32, cross_pairs_per_distance: int = 0,
                 seed: int = 0, count_dtype: str = "auto", threads: int | None = None,
                 device: str | torch.device | None = None,
                 counts_calibration: bool = False) -> None:
        if bins < 2 or bins % 2 or bins > 256:
            raise ConfigurationError(f"bins must be even and in [2, 256], got {bins}")
        self.layout = layout
        self.bins = int(bins)
        self.groups = layout.check_groups(groups)
        self.sites = tuple(f"blocks.{layer}.{s}.out" for layer, s in self.groups)
        ch = np.arange(layout.d_model) if channels is None else np.asarray(channels, np.int64)
        if ch.ndim != 1 or ch.size == 0 or ch.min() < 0 or ch.max() >= layout.d_model \
                or np.unique(ch).size != ch.size:
            raise ConfigurationError("channels must be distinct indices below d_model")
        self.channels = ch
        self.calibration_images = int(calibration_images)
        if self.calibration_images < self.bins:
            raise ConfigurationError("calibration_images must be at least bins")
        self.split_half = bool(split_half)
        self.null_channels = null_channels
        #: indices into ``channels`` of the channels with null counts
        self.null_idx = null_channel_subset(ch.size, null_channels)
        self.cross_pairs_per_distance = int(cross_pairs_per_distance)
        self.seed = int(seed)
        self.cross = cross_pair_sample(layout, ch.size, self.cross_pairs_per_distance, self.seed)
        self.device = None if device is None else torch.device(device)
        self.threads = threads
        self.n = 0
        self.n_null = 0
        self._reservoir: list[list[torch.Tensor]] = [[] for _ in self.groups]
        self._res_n = 0
        self.counts_calibration = bool(counts_calibration)
        #: calibration batches kept to be counted: (per-group activations, image order);
        #: a group's entry becomes None once counted
        self._pending: list[tuple[list[torch.Tensor | None], np.ndarray]] = []
        self._pending_n = 0
        self.calibration_n = 0
        self.edges: torch.Tensor | None = None  # (G, B-1, P, C) float32
        if count_dtype not in ("auto", "int16", "int32"):
            raise ConfigurationError("count_dtype must be 'auto', 'int16' or 'int32'")
        self.count_dtype = count_dtype
        self.counts: list[torch.Tensor] = []  # (H, C, B_x, P, B_y) int16 / int32
        self._scratch_bufs: dict[int, dict[str, np.ndarray]] = {}  # group -> name -> buffer
        self.null: list[torch.Tensor] = []  # (C_null, B_x, P, B_y) int32
        self.cross_counts: list[torch.Tensor] = []  # (H, K, B_x, B_y) int32
        self._device_arrays: dict[str, tuple[np.ndarray, torch.Tensor]] = {}
        #: the edges in searchsorted's layout per step of groups (accelerator path)
        self._edges_t: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        #: (G, P, C) float32 range of each neuron over the calibration reservoir
        self.vmin: torch.Tensor | None = None
        self.vmax: torch.Tensor | None = None
        self._chan_t: torch.Tensor | None = None

    # -- geometry helpers -----------------------------------------------------------------
    def canonical(self, gi: int) -> torch.Tensor:
        """Group ``gi``'s counts as a (halves, P, C, B_x, B_y) view (no copy)."""
        return self.counts[gi].permute(0, 3, 1, 2, 4)

    def _scratch(self, gi: int, name: str, n: int, dtype: type) -> np.ndarray:
        """Per-group reusable CPU buffer ``name`` of at least ``n`` values: no large
        allocation, and so no page faults, per batch. One group is handled by one thread
        at a time. Bin ids (``"ids"``) serve both paths; flat count indices (``"flat"``)
        only the numpy reference, so the compiled path never allocates them."""
        bufs = self._scratch_bufs.setdefault(gi, {})
        buf = bufs.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = bufs[name] = np.empty(n, dtype=dtype)
        return buf[:n]

    @property
    def n_halves(self) -> int:
        return 2 if self.split_half else 1

    @property
    def calibrated(self) -> bool:
        return self.edges is not None

    def _channels_tensor(self, device: torch.device) -> torch.Tensor | None:
        if self.channels.size == self.layout.d_model and np.all(self.channels == np.arange(
                self.layout.d_model)):
            return None
        if self._chan_t is None or self._chan_t.device != device:
            self._chan_t = torch.as_tensor(self.channels, device=device)
        return self._chan_t

    def _activations(self, cache: Mapping[str, Any], group: Group) -> torch.Tensor:
        # a missing site is reported (MissingSiteError) by patch_activations
        t = cache.get(f"blocks.{group[0]}.{group[1]}.out")
        dev = t.device if isinstance(t, torch.Tensor) else torch.device("cpu")
        x = patch_activations(cache, self.layout, group, self._channels_tensor(dev))
        if self.device is None:
            self.device = x.device
        return x.to(self.device)

    # -- calibration ----------------------------------------------------------------------
    def calibrate(self, cache: Mapping[str, Any]) -> None:
        """Add the batch to the reservoir (until ``calibration_images`` images); with
        ``counts_calibration``, keep it to be counted (count it at once when the edges
        are already fixed)."""
        if self.counts_calibration:
            self._calibrate_counting(cache)
            return
        if self.calibrated:
            raise AlreadyCalibratedError("the bin edges are already frozen (end_calibration)")
        room = self.calibration_images - self._res_n
        if room <= 0:
            return
        nb = 0
        for gi, group in enumerate(self.groups):
            x = self._activations(cache, group)[:room]
            nb = x.shape[0]
            self._reservoir[gi].append(x.float().contiguous())
        self._res_n += nb

    def _calibrate_counting(self, cache: Mapping[str, Any]) -> None:
        if self.calibrated:  # the reservoir filled up in an earlier batch
            self.update(cache)
            return
        xs: list[torch.Tensor | None] = [self._activations(cache, g) for g in self.groups]
        nb = xs[0].shape[0] if xs else 0
        if any(x.shape[0] != nb for x in xs):
            raise InputShapeError("all sites of a batch must hold the same images")
        if nb == 0:
            return
        self._pending.append((xs, self._order(cache, nb, self._pending_n)))
        self._pending_n += nb
        take = min(self.calibration_images - self._res_n, nb)
        for gi, x in enumerate(xs):
            self._reservoir[gi].append(x[:take])
        self._res_n += take
        if self._res_n >= self.calibration_images:
            self._freeze_and_count()

    def _order(self, cache: Mapping[str, Any], nb: int, start: int) -> np.ndarray:
        """Each image's index for the split halves: the cache's :data:`IMAGE_INDEX`, else
        its position ``start + i`` in this accumulator's stream."""
        index = cache.get(IMAGE_INDEX)
        if index is None:
            return start + np.arange(nb, dtype=np.int64)
        order = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, np.int64)
        if order.shape != (nb,):
            raise InputShapeError(f"{IMAGE_INDEX} holds {order.shape} indices for a batch of {nb}")
        return order

    def _freeze_and_count(self) -> None:
        """Counting calibration: fix the edges from the reservoir, then count the kept
        batches group by group (a group's counts are allocated just before its batches
        are counted, and its batches released just after: the peak stays near the larger
        of reservoir and counts)."""
        if self._res_n < self.bins:
            raise InsufficientDataError(f"calibration saw {self._res_n} images; need at least "
                             f"bins={self.bins}")
        ranks = edge_ranks(self._res_n, self.bins)
        g = len(self.groups)
        edges: list[Any] = [None] * g
        lo: list[Any] = [None] * g
        hi: list[Any] = [None] * g

        def fix(gi: int) -> None:
            edges[gi], lo[gi], hi[gi] = _order_statistics(self._reservoir[gi], ranks)
            self._reservoir[gi] = []

        assert self.device is not None
        threads = 1 if self.uses_device_path(self.device) else resolve_threads(self.threads)
        run_parallel(fix, g, threads)
        self.calibration_n = self._res_n
        self._res_n = 0
        self.set_edges(torch.stack(edges), torch.stack(lo), torch.stack(hi), allocate=False)
        pending, self._pending, self._pending_n = self._pending, [], 0
        total = sum(order.size for _, order in pending)
        self._ensure_capacity(total)

        def count(gi: int) -> None:
            self._allocate(gi, total)
            for xs, order in pending:
                x = xs[gi]
                assert x is not None
                xs[gi] = None
                self._update_group(gi, x, order % self.n_halves)

        run_parallel(count, g, threads)
        for _, order in pending:
            self.n += order.size
            if self.null_idx.size and order.size >= 2:
                self.n_null += order.size

    def end_calibration(self) -> None:
        """Fix the edges (order statistics of the reservoir), free it, allocate counts;
        with ``counts_calibration``, also count the calibration batches (unless that
        happened when the reservoir filled up)."""
        if self.counts_calibration:
            if not self.calibrated:
                self._freeze_and_count()
            return
        if self._res_n < self.bins:
            raise InsufficientDataError(f"calibration saw {self._res_n} images; need at "
                                        f"least bins={self.bins}")
        ranks = torch.as_tensor(edge_ranks(self._res_n, self.bins))
        edges, lo, hi = [], [], []
        for gi in range(len(self.groups)):
            e, low, high = _order_statistics(self._reservoir[gi], ranks.numpy())
            self._reservoir[gi] = []
            edges.append(e)
            lo.append(low)
            hi.append(high)
        self.calibration_n = self._res_n
        self._res_n = 0
        self.set_edges(torch.stack(edges), torch.stack(lo), torch.stack(hi))

    def set_edges(self, edges: torch.Tensor | np.ndarray, vmin: Any = None,
                  vmax: Any = None, *, allocate: bool = True) -> None:
        """Install calibrated edges (G, B-1, P, C) and allocate zeroed counts.

        ``vmin`` / ``vmax`` (G, P, C): the calibration range of each neuron (the outer
        cells of bowtie plots); default the first / last edge. ``allocate=False`` leaves
        the counts to :meth:`_allocate` (group by group).
        """
        dev = self.device or torch.device("cpu")
        self.device = dev
        g, p, c, b = len(self.groups), self.layout.n_positions, self.channels.size, self.bins
        e = torch.as_tensor(edges, dtype=torch.float32).to(dev).contiguous()
        if tuple(e.shape) != (g, b - 1, p, c):
            raise IncompatibleStateError(
                f"edges must have shape {(g, b - 1, p, c)}, got {tuple(e.shape)}")
        self.edges = e
        self._edges_t = {}
        self._edges_np: np.ndarray | None = e.numpy() if dev.type == "cpu" else None
        self.counts = [None] * g  # type: ignore[list-item]
        self.null = [None] * g  # type: ignore[list-item]
        self.cross_counts = [None] * g  # type: ignore[list-item]
        if allocate:
            for gi in range(g):
                self._allocate(gi)
        self.vmin = (e[:, 0] if vmin is None else torch.as_tensor(vmin)).to(
            dev, torch.float32).contiguous().clone()
        self.vmax = (e[:, -1] if vmax is None else torch.as_tensor(vmax)).to(
            dev, torch.float32).contiguous().clone()
        self.n = self.n_null = 0

    def _allocate(self, gi: int, n_images: int = 0) -> None:
        """Zeroed counts of group ``gi`` (int32 at once when ``n_images`` need it)."""
        dev = self.device
        assert dev is not None
        p, c, b = self.layout.n_positions, self.channels.size, self.bins
        h, cn, k = self.n_halves, self.null_idx.size, self.cross.shape[0]
        dtype = self._initial_dtype(dev)
        if dtype == torch.int16 and self._max_per_half(n_images) > _INT16_MAX:
            dtype = torch.int32
        self.counts[gi] = torch.zeros((h, c, b, p, b), dtype=dtype, device=dev)
        self.null[gi] = torch.zeros((cn, b, p, b), dtype=torch.int32, device=dev)
        self.cross_counts[gi] = torch.zeros((h, k, b, b), dtype=torch.int32, device=dev)

    def _initial_dtype(self, dev: torch.device) -> torch.dtype:
        if self.count_dtype == "int32" or (self.count_dtype == "auto" and dev.type != "cpu"):
            return torch.int32
        return torch.int16

    # -- streaming ------------------------------------------------------------------------
    def update(self, cache: Mapping[str, Any]) -> None:
        if not self.calibrated:
            raise NotCalibratedError("JointCounts needs calibrate() / end_calibration() first")
        xs = [self._activations(cache, group) for group in self.groups]
        nb = xs[0].shape[0] if xs else 0
        if nb == 0:
            return
        if any(x.shape[0] != nb for x in xs):
            raise InputShapeError("all sites of a batch must hold the same images")
        self._ensure_capacity(nb)
        half = self._order(cache, nb, self.n) % self.n_halves
        if not self.uses_device_path(xs[0].device):
            run_parallel(lambda gi: self._update_group(gi, xs[gi], half), len(xs),
                         resolve_threads(self.threads))
        else:  # groups stacked, as many per step as fit
            p, c = self.layout.n_positions, self.channels.size
            for part in self.steps(len(xs), 48 * nb * p * c, self.device):
                self._update_groups_torch(part, torch.stack([x.to(self.device)
                                                             for x in xs[part]]), half)
        if self.null_idx.size and nb >= 2:
            self.n_null += nb
        self.n += nb

    def _max_per_half(self, n: int) -> int:
        return (n + 1) // 2 if self.split_half else n

    def _ensure_capacity(self, more: int) -> None:
        """Promote int16 counts to int32 before a half could exceed 32767 images."""
        if self.counts and self.counts[0] is not None and self.counts[0].dtype == torch.int16 \
                and self._max_per_half(self.n + more) > _INT16_MAX:
            self.counts = [c.to(torch.int32) for c in self.counts]

    def _update_group(self, gi: int, x: torch.Tensor, half: np.ndarray) -> None:
        """Count one group's (b, P, C) activations; ``half`` (b,) is each image's half."""
        x = x.to(self.device)
        if not self.uses_device_path(x.device):
            self._update_group_numpy(gi, x, half)
        else:
            self._update_group_torch(gi, x, half)

    def _update_group_numpy(self, gi: int, x: torch.Tensor, half: np.ndarray) -> None:
        """CPU path: the compiled kernel, or numpy index arithmetic and torch
        ``index_add_`` for the scatter (the reference, ``VITPROBE_JIT=0``)."""
        assert self._edges_np is not None
        b, p, c = x.shape
        nb = self.bins
        xn = as_float32_numpy(x).reshape(b, p * c)
        cp = self.layout.centre_position
        main = self.counts[gi]
        e = self._edges_np[gi].reshape(nb - 1, p * c)
        ids = self._scratch(gi, "ids", b * p * c, np.uint8).reshape(b, p * c)
        if jit_enabled():
            joint_update(xn, e, half, cp, main.numpy(), self.null_idx, self.null[gi].numpy(),
                         self.cross, self.cross_counts[gi].numpy(), ids)
            return
        idt = np.int64 if main.numel() >= 2**31 else np.int32
        idn = digitize(xn, e, layout="col", out=ids).reshape(b, p, c)
        xc = idn[:, cp, :].astype(idt)  # (b, C) central bins
        # layout (H, C, B_x, P, B_y): flat = (((h C + c) B + x) P + p) B + y, enumerated
        # in (image, c, p) order: one image's increments for a channel stream through
        # one (P, B_y) row of the counts
        base = ((half.astype(idt)[:, None] * c + np.arange(c, dtype=idt)) * nb + xc) \
            * (p * nb)
        flat = self._scratch(gi, "flat", b * p * c, idt).reshape(b, c, p)
        np.add(base[:, :, None], np.arange(p, dtype=idt) * nb, out=flat)
        np.add(flat, idn.transpose(0, 2, 1), out=flat)
        add_ones(main, torch.from_numpy(flat))
        if self.null_idx.size and b >= 2:  # layout (C_null, B_x, P, B_y)
            ni = self.null_idx
            cn = ni.size
            xs = xc[:, ni].astype(np.int64)  # (b, Cn)
            # y from the next image of the batch (the last pairs with the first)
            ys = np.roll(idn[:, :, ni].transpose(0, 2, 1), -1, axis=0)  # (b, Cn, P)
            flat = ((np.arange(cn) * nb + xs)[:, :, None] * p + np.arange(p)) * nb + ys
            add_ones(self.null[gi], torch.from_numpy(flat))
        if self.cross.shape[0]:  # layout (H, K, B_x, B_y)
            cr = self.cross
            k = cr.shape[0]
            xk = xc[:, cr[:, 0]].astype(np.int64)
            yk = idn[:, cr[:, 2], cr[:, 1]]
            flat = ((half[:, None] * k + np.arange(k)) * nb + xk) * nb + yk
            add_ones(self.cross_counts[gi], torch.from_numpy(flat))

    def _update_group_torch(self, gi: int, x: torch.Tensor, half: np.ndarray) -> None:
        """Accelerator path of one group's (b, P, C) activations."""
        self._update_groups_torch(slice(gi, gi + 1), x[None], half)

    def _update_groups_torch(self, groups: slice, x: torch.Tensor, half: np.ndarray) -> None:
        """Accelerator path: searchsorted binning and ``index_add_``, all on device, for
        the n groups ``groups`` whose (n, b, P, C) activations ``x`` holds: the bins and
        the count cells of all of them at once, then one add per group and table."""
        assert self.edges is not None
        n, b, p, c = x.shape
        nb = self.bins
        dev = x.device
        # (n, P C) rows of edges, one per neuron: the edges' transpose is kept per step
        edges = self._edges_by_neuron(groups, dev)  # (n, P C, B - 1)
        ids = digitize(x.float().reshape(n, b, p * c).transpose(1, 2), edges)
        ids = ids.transpose(1, 2).view(n, b, p, c)
        cp = self.layout.centre_position
        ht = self._on_device("half", half, dev)
        xc = ids[:, :, cp, :]  # (n, b, C)
        base = ((ht[:, None] * c + torch.arange(c, device=dev)) * nb + xc) * (p * nb)
        flat = base[..., None] + torch.arange(p, device=dev) * nb + ids.transpose(2, 3)
        for i, gi in enumerate(range(groups.start, groups.stop)):
            add_ones(self.counts[gi], flat[i])
        if self.null_idx.size and b >= 2:
            ni = self._on_device("null_idx", self.null_idx, dev)
            cn = ni.numel()
            xs = xc.index_select(2, ni)
            ys = ids.index_select(3, ni).transpose(2, 3).roll(-1, dims=1)
            flat = ((torch.arange(cn, device=dev) * nb + xs)[..., None] * p
                    + torch.arange(p, device=dev)) * nb + ys
            for i, gi in enumerate(range(groups.start, groups.stop)):
                add_ones(self.null[gi], flat[i])
        if self.cross.shape[0]:
            cr = self._on_device("cross", self.cross, dev)
            k = cr.shape[0]
            xk = xc.index_select(2, cr[:, 0])
            yk = ids[:, :, cr[:, 2], cr[:, 1]]  # (n, b, K)
            flat = ((ht[:, None] * k + torch.arange(k, device=dev)) * nb + xk) * nb + yk
            for i, gi in enumerate(range(groups.start, groups.stop)):
                add_ones(self.cross_counts[gi], flat[i])

    def _edges_by_neuron(self, groups: slice, device: torch.device) -> torch.Tensor:
        """(n, P C, B - 1) contiguous edges of the groups ``groups`` (searchsorted's
        layout), formed once per calibration and step of groups: as much device memory
        again as the edges (0.45 GB for ViT-B/16 at 32 bins, beside 29 GB of counts)."""
        assert self.edges is not None
        key = (groups.start, groups.stop, device)
        held = self._edges_t.get(key)
        if held is None:
            e = self.edges[groups]
            held = self._edges_t[key] = e.reshape(e.shape[0], e.shape[1], -1).transpose(
                1, 2).contiguous().to(device)
        return held

    def _on_device(self, key: str, values: np.ndarray, device: torch.device) -> torch.Tensor:
        """``values`` as a tensor on ``device``, copied once per array rather than once per
        group (:func:`~vitprobe.record.accumulator.host_to_device`: the host does not wait
        for the device). Keyed by the array's identity (a batch's ``half`` is one array
        for all groups; groups of a batch are counted one after the other on
        accelerators)."""
        held = self._device_arrays.get(key)
        if held is None or held[0] is not values or held[1].device != device:
            held = (values, host_to_device(values, device))
            self._device_arrays[key] = held
        return held[1]

    # -- access ---------------------------------------------------------------------------
    def pair_counts(self, layer: int, sublayer: str, channel: int, position: int,
                    *, half: int | None = None) -> np.ndarray:
        """(B, B) int64 counts [bin_x (central), bin_y] of one channel's centre vs position."""
        gi = self.groups.index((layer, sublayer))
        ci = int(np.flatnonzero(self.channels == channel)[0])
        c = self.canonical(gi)[:, position, ci].to(torch.int64)
        c = c.sum(0) if half is None else c[half]
        return c.cpu().numpy()

    # -- state ----------------------------------------------------------------------------
    def merge(self, other: Self) -> Self:
        self.check_mergeable(other)
        if not (self.calibrated and other.calibrated):
            raise IncompatibleStateError("merge calibrated accumulators only: calibrate once "
                                         "and share the state before streaming")
        assert self.edges is not None and other.edges is not None
        if not torch.equal(self.edges, other.edges.to(self.device)):
            raise IncompatibleStateError("shards were calibrated differently: calibrate once "
                                         "and load_state_dict the calibrated (empty) state "
                                         "into every shard")
        self._ensure_capacity(other.n)
        if self.counts and other.counts and other.counts[0].dtype == torch.int32:
            self.counts = [c.to(torch.int32) for c in self.counts]
        for mine, theirs in ((self.counts, other.counts), (self.null, other.null),
                             (self.cross_counts, other.cross_counts)):
            for a, b in zip(mine, theirs, strict=True):
                a += b.to(self.device, a.dtype)
        self.n += other.n
        self.n_null += other.n_null
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state: ``edges`` (G, B-1, P, C) float32, ``vmin`` / ``vmax``,
        ``counts_{g}`` (H, P, C, B_x, B_y) int16 or int32, ``null_{g}`` (C_null, B_x, P,
        B_y) int64, ``cross_{g}`` (H, K, B_x, B_y) int64, ``n``, ``n_null``,
        ``calibration_n``; before calibration ends, ``reservoir_{g}`` instead."""
        out: dict[str, np.ndarray] = {"n": np.asarray(self.n, np.int64),
                                      "n_null": np.asarray(self.n_null, np.int64),
                                      "calibration_n": np.asarray(self.calibration_n, np.int64)}
        if not self.calibrated:
            if self._pending:
                raise NotCalibratedError("JointCounts holds calibration batches still to be "
                                   "counted: call end_calibration() before state_dict()")
            if self._res_n:
                for gi in range(len(self.groups)):
                    out[f"reservoir_{gi}"] = torch.cat(self._reservoir[gi]).cpu().numpy()
            return out
        assert self.edges is not None and self.vmin is not None and self.vmax is not None
        out["edges"] = self.edges.cpu().numpy().copy()
        out["vmin"] = self.vmin.cpu().numpy().copy()
        out["vmax"] = self.vmax.cpu().numpy().copy()
        for gi in range(len(self.groups)):
            # layouts: counts canonical (H, P, C, B_x, B_y); null (C_null, B_x, P, B_y);
            # cross (H, K, B_x, B_y). The main counts keep their own integer type (int16
            # until a half could exceed 32767 images, then int32): int64 copies of them
            # would take 4x the memory of the live state (9.7 GB for DINOv2-S, B = 16)
            out[f"counts_{gi}"] = np.ascontiguousarray(self.canonical(gi).cpu().numpy())
            out[f"null_{gi}"] = self.null[gi].cpu().numpy().astype(np.int64)
            out[f"cross_{gi}"] = self.cross_counts[gi].cpu().numpy().astype(np.int64)
        return out

    def calibration_state_dict(self) -> dict[str, np.ndarray]:
        """:meth:`state_dict` with every count zeroed (``n = n_null = 0``): the edges
        and ranges, for other shards to start from (see
        :class:`~vitprobe.record.Accumulator`)."""
        state = self.state_dict()
        if not self.calibrated:
            return state
        for key, value in state.items():
            if key.startswith(("counts_", "null_", "cross_")):
                state[key] = np.zeros_like(value)
        state["n"] = np.asarray(0, np.int64)
        state["n_null"] = np.asarray(0, np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self._pending, self._pending_n = [], 0
        if "edges" not in state:
            self.edges = None
            self._reservoir = [[] for _ in self.groups]
            self._res_n = 0
            for gi in range(len(self.groups)):
                key = f"reservoir_{gi}"
                if key in state:
                    dev = self.device or torch.device("cpu")
                    self.device = dev
                    self._reservoir[gi] = [torch.as_tensor(state[key]).to(dev)]
                    self._res_n = int(state[key].shape[0])
            self.n = int(state["n"])
            self.n_null = int(state["n_null"])
            self.calibration_n = int(state["calibration_n"])
            return
        self.set_edges(torch.as_tensor(state["edges"]), state["vmin"], state["vmax"])
        self.n = int(state["n"])
        if self.counts and self.counts[0].dtype == torch.int16 \
                and self._max_per_half(self.n) > _INT16_MAX:
            self.counts = [c.to(torch.int32) for c in self.counts]
        for gi in range(len(self.groups)):
            for key in ("counts", "null", "cross"):
                src = np.asarray(state[f"{key}_{gi}"])
                if src.size and src.max(initial=0) >= 2**31:
                    raise CountOverflowError(f"{key} exceed int32; use fewer images per shard")
                dst = {"counts": self.canonical(gi), "null": self.null[gi],
                       "cross": self.cross_counts[gi]}[key]
                dst.copy_(torch.as_tensor(src))
        self.n = int(state["n"])
        self.n_null = int(state["n_null"])
        self.calibration_n = int(state["calibration_n"])

    def config(self) -> dict[str, Any]:
        return {"layout": self.layout.to_config(), "bins": self.bins,
                "groups": [list(g) for g in self.groups], "channels": self.channels.tolist(),
                "calibration_images": self.calibration_images, "split_half": self.split_half,
                "null_channels": self.null_channels,
                "cross_pairs_per_distance": self.cross_pairs_per_distance, "seed": self.seed,
                "count_dtype": self.count_dtype}

    # -- results --------------------------------------------------------------------------
    def result(self, *, keep_channels: int | Sequence[int] = 2,
               method: str = "extrapolated") -> xr.Dataset:
        """MI Dataset; see :func:`vitprobe.stats.joint_result.joint_dataset`."""
        from vitprobe.stats.joint_result import joint_dataset

        return joint_dataset(self, keep_channels=keep_channels, method=method)


def _order_statistics(reservoir: list[torch.Tensor], ranks: np.ndarray,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Edges (B-1, P, C), minimum and maximum (P, C) of the reservoir's (R, P, C) pieces
    (float32 order statistics along the images).

    The pieces are copied once into neuron-major rows (N, R) and each row is sorted
    where it is contiguous (numpy's SIMD sort on CPU, ``torch.sort`` elsewhere): on the
    CPU 2.3x faster than sorting the (R, N) reservoir along its strided first axis,
    which dominated the counting pass's calibration (0.58 against 0.25 s per
    (256, 256, 384) group)."""
    shape = reservoir[0].shape[1:]
    n_neurons = int(np.prod(shape))
    rows = torch.empty((n_neurons, sum(p.shape[0] for p in reservoir)), dtype=torch.float32,
                       device=reservoir[0].device)
    start = 0
    for piece in reservoir:
        b = piece.shape[0]
        rows[:, start : start + b].copy_(piece.reshape(b, n_neurons).T)
        start += b
    if rows.device.type == "cpu":
        rows.numpy().sort(axis=1)
    else:
        rows = torch.sort(rows, dim=1).values
    idx = torch.as_tensor(ranks, dtype=torch.int64, device=rows.device)
    return (rows[:, idx].T.reshape(len(idx), *shape).contiguous(),
            rows[:, 0].reshape(shape).clone(), rows[:, -1].reshape(shape).clone())
