"""Fine bowtie histograms of selected neuron pairs, translation-pooled and central.

The MI study's joint counts (:class:`~vitprobe.stats.JointCounts`) have as many cells
as its quantile bins: 4 x 4 at 512 images. That is right for MI, but far too coarse
to show the shape of a conditional histogram, and quantile axes hide the tails where
a bowtie lives (Schwartz & Simoncelli 2001). This accumulator keeps separate,
fine histograms for a few pairs of neurons per (layer, sublayer):

* **Pairs.** From the calibration images, each channel's dependence on its
  neighbours is estimated as the quantile-binned MI between the central neuron and
  the four neurons at distance 1 (pooled, :func:`vitprobe.stats.mi.mutual_info`);
  the channels with the highest, the median and the lowest estimate are taken, plus
  ``n_random`` seeded random channels (same-channel pairs: the neuron at one position
  against the same channel elsewhere), plus ``n_cross`` seeded cross-channel pairs
  (channel ``a`` at one position against channel ``b`` at another). ``pairs=`` fixes
  them instead.
* **Bins.** ``bins`` (default 41) equal-width bins per neuron over a symmetric range
  ``mean +- R`` fixed at calibration, ``mean`` the channel's calibration mean and
  ``R`` the ``range_quantile`` (default 0.995) of ``|x - mean|``, both over every
  calibration image at a fixed set of positions (the centre, its distance-1
  neighbours and 16 evenly spaced ones). The range is per channel, not per
  position, so every position pair of a channel shares one grid. **Values beyond the
  range are counted in the outer bins** (about 0.5 % of values at the default).
  Bin id: ``clip(floor((x - (mean - R)) * B / (2R)), 0, B - 1)`` in float32.
* **Pooling.** ``translation``: every ordered pair of positions ``(p, q)`` whose
  Euclidean distance rounds to ``d``, for ``d`` in ``pooled_distances`` (default
  0, 1, 2, 4, 8: doubling distances, as the figures show them, at a third of the cost
  of every distance up to 8; at ``d = 0`` same-channel pairs would be a neuron against
  itself and are not counted, cross-channel pairs are the two channels at one
  position): x from
  ``p``, y from ``q`` (same-channel pairs count each unordered pair once and add the
  transpose when read: the same histogram for half the work). DINOv2-S/14's 16 x 16
  grid has 1860 such ordered pairs at ``d = 1``, so each image adds about a thousand
  samples per distance instead of the four of the central neuron. ``central``: x at
  the central patch (convention of :mod:`vitprobe.stats.layout`), y at every position,
  by rounded distance (the poster's Figure 3).
* **Folds.** Counts are kept separately for ``folds`` disjoint groups of images
  (image index modulo ``folds``; the cache's :data:`~vitprobe.stats.joint.IMAGE_INDEX`
  when present, else the stream order), for delete-one-group jackknife intervals
  (:mod:`vitprobe.stats.conditional`): positions of one image are dependent, so
  images are the units of resampling.

Counts are int32 (F, K, S, B, B) per group (S = pooled plus central distance slots):
for DINOv2-S/14 with the defaults, 8 x 7 x 17 x 41 x 41 x 4 bytes = 6.4 MB per group,
154 MB for all 24 sublayers; constant in the number of images. Merges add counts
exactly. Each image costs about 72k increments per group (same-channel pairs 7.8k
pooled position pairs each, cross pairs 15.8k, plus 256 central ones). The CPU update
is one compiled loop over images, pairs and position offsets
(:func:`vitprobe.stats._kernels.bowtie_update`); the torch reference path
(``VITPROBE_JIT=0``, and accelerators) gathers the same cell indices and uses
``bincount``; the tests check both against a brute-force histogram.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self

import numpy as np
import torch
import xarray as xr

from vitprobe._jit import jit_enabled
from vitprobe.errors import (
    AlreadyCalibratedError,
    ConfigurationError,
    InputShapeError,
    InsufficientDataError,
    NotCalibratedError,
    ResultsError,
)
from vitprobe.record.accumulator import (
    Accumulator,
    host_to_device,
    resolve_threads,
    run_parallel,
)
from vitprobe.stats._common import (
    LAYER_ATTRS,
    SUBLAYER_ATTRS,
    add_ones,
    group_axes,
    groups_attr,
    layout_attrs,
    patch_activations,
)
from vitprobe.stats._kernels import bowtie_update
from vitprobe.stats.conditional import MIN_COUNT, conditional_statistics, jackknife_interval
from vitprobe.stats.joint import IMAGE_INDEX
from vitprobe.stats.layout import Group, NeuronLayout
from vitprobe.stats.mi import mutual_info

__all__ = ["POOLINGS", "BowtieCounts", "bowtie_dataset", "position_pairs"]

#: the two ways position pairs are taken, in the order of the ``pooling`` dimension
POOLINGS = ("translation", "central")

#: statistics stored per (pooling, pair, distance), with jackknife intervals
_STATS = ("correlation", "bowtie_index", "sigma2", "w")


def position_pairs(layout: NeuronLayout, pooled_distances: Sequence[int]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Every counted position pair: ``(p, q, slot, n_slots)``.

    Slots ``0 .. len(pooled_distances) - 1`` hold the translation-pooled pairs (every
    ordered ``(p, q)`` whose distance rounds to ``pooled_distances[s]``), then one slot
    per rounded distance ``0 .. D`` of the central pairs (``p`` = the centre). Arrays
    are int64, sorted by slot then ``p``.
    """
    rows, cols = layout.rows, layout.cols
    dist = np.rint(np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None]))
    dist = dist.astype(np.int64)
    ps, qs, ss = [], [], []
    for s, d in enumerate(pooled_distances):
        p, q = np.nonzero(dist == int(d))
        ps.append(p)
        qs.append(q)
        ss.append(np.full(p.size, s))
    n_pooled = len(pooled_distances)
    dbin = layout.distance_bin
    q = np.argsort(dbin, kind="stable")
    ps.append(np.full(q.size, layout.centre_position))
    qs.append(q)
    ss.append(n_pooled + dbin[q])
    n_slots = n_pooled + int(dbin.max()) + 1
    return (np.concatenate(ps).astype(np.int64), np.concatenate(qs).astype(np.int64),
            np.concatenate(ss).astype(np.int64), n_slots)


def _offset_table(distances: Sequence[int], grid: tuple[int, int], cells: int, *,
                  half: bool) -> np.ndarray:
    """(n, 3) int64 rows (dr, dc, slot * cells): every grid offset whose length rounds to
    ``distances[slot]`` (with ``half``: one of each +- pair, and no zero offset)."""
    rows, cols = grid
    dr, dc = np.meshgrid(np.arange(-rows + 1, rows), np.arange(-cols + 1, cols), indexing="ij")
    dr, dc = dr.ravel(), dc.ravel()
    d = np.rint(np.hypot(dr, dc)).astype(np.int64)
    out = []
    for slot, dist in enumerate(distances):
        sel = d == int(dist)
        if half:
            sel &= (dr > 0) | ((dr == 0) & (dc > 0))
        out.append(np.column_stack([dr[sel], dc[sel], np.full(sel.sum(), slot * cells)]))
    return np.ascontiguousarray(np.concatenate(out).astype(np.int64)) if out else \
        np.zeros((0, 3), np.int64)


def _calibration_positions(layout: NeuronLayout) -> np.ndarray:
    """The centre, its distance-1 neighbours and 16 evenly spaced positions."""
    near = np.flatnonzero(layout.distance_bin == 1)
    spread = np.linspace(0, layout.n_positions - 1, min(16, layout.n_positions))
    return np.unique(np.concatenate([[layout.centre_position], near,
                                     spread.round().astype(np.int64)]))


class BowtieCounts(Accumulator):
    """Streaming fine joint histograms of selected neuron pairs (module docstring).

    Parameters
    ----------
    layout : NeuronLayout
    groups : (layer, sublayer) pairs, default all
    bins : int
        Equal-width bins per neuron (odd keeps a bin centred on the mean), 3..255.
    n_random, n_cross : int
        Seeded random same-channel pairs and cross-channel pairs per group.
    pairs : sequence of (channel_x, channel_y), optional
        Fixed pairs for every group instead of the MI-ranked selection.
    pooled_distances : ints, optional
        Rounded distances of the translation-pooled counts; default ``(0, 1, 2, 4, 8)``
        (those present on the grid). Each costs about ``2 pi d`` increments per
        position, pair and image.
    range_quantile : float
        Quantile of ``|x - mean|`` that sets the half-range ``R``.
    calibration_images : int
        Images of the calibration pass used (later ones are ignored).
    folds : int
        Disjoint image groups kept apart for jackknife intervals (>= 2).
    seed : int
        Seed of the random channels and cross pairs.
    threads : int, optional
        CPU threads over the groups of a batch (default ``torch.get_num_threads()``).
    device : torch device, optional
        Where counts live (default: the first batch's device).
    counts_calibration : bool
        Count the images given to :meth:`calibrate` too (the caller must not pass them to
        :meth:`update` again): the counts equal those of ``calibrate`` +
        ``end_calibration`` + ``update`` on the same batches, in one forward pass. The
        recorded tensors are kept until counted: do not modify them in place.
    """

    name = "bowtie"
    needs_calibration = True

    def __init__(self, layout: NeuronLayout, *, groups: Iterable[Group] | None = None,
                 bins: int = 41, n_random: int = 2, n_cross: int = 2,
                 pairs: Sequence[tuple[int, int]] | None = None,
                 pooled_distances: Sequence[int] | None = None,
                 range_quantile: float = 0.995, calibration_images: int = 256,
                 folds: int = 8, seed: int = 0, threads: int | None = None,
                 device: str | torch.device | None = None,
                 counts_calibration: bool = False) -> None:
        if not 3 <= bins <= 255:
            raise ConfigurationError(f"bins must be in [3, 255], got {bins}")
        if not 0.5 < range_quantile <= 1.0:
            raise ConfigurationError(f"range_quantile must be in (0.5, 1], got {range_quantile}")
        if folds < 2:
            raise ConfigurationError(f"folds must be at least 2, got {folds}")
        self.layout = layout
        self.groups = layout.check_groups(groups)
        self.sites = tuple(f"blocks.{layer}.{s}.out" for layer, s in self.groups)
        self.bins = int(bins)
        self.n_random = int(n_random)
        self.n_cross = int(n_cross)
        if pairs is not None:
            pa = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
            if pa.size == 0 or pa.min() < 0 or pa.max() >= layout.d_model:
                raise ConfigurationError(f"pairs must be channel indices below d_model="
                                 f"{layout.d_model}, got {pa.tolist()}")
            self.fixed_pairs: np.ndarray | None = pa
            self.pair_kind = ["given"] * pa.shape[0]
        else:
            self.fixed_pairs = None
            if layout.d_model < 3 + self.n_random or (self.n_cross and layout.d_model < 2):
                raise ConfigurationError(f"d_model={layout.d_model} is too small for 3 ranked and "
                                 f"{self.n_random} random channels")
            self.pair_kind = (["highest", "median", "lowest"] + ["random"] * self.n_random
                              + ["cross"] * self.n_cross)
        max_d = int(np.rint(np.hypot(layout.grid[0] - 1, layout.grid[1] - 1)))
        pd = [0, 1, 2, 4, 8] if pooled_distances is None else [int(d) for d in
                                                                pooled_distances]
        if any(d < 0 for d in pd) or len(set(pd)) != len(pd):
            raise ConfigurationError(f"pooled_distances must be distinct and >= 0, got {pd}")
        self.pooled_distances = [d for d in pd if d <= max_d]
        self.range_quantile = float(range_quantile)
        self.calibration_images = int(calibration_images)
        self.folds = int(folds)
        self.seed = int(seed)
        self.threads = threads
        self.device = None if device is None else torch.device(device)
        pp, qq, slot, n_slots = position_pairs(layout, self.pooled_distances)
        self.n_slots = n_slots
        # same-channel pairs count each unordered pair of pooled positions once (the
        # readout adds the transpose: (p, q) and (q, p) give the transposed cell) and
        # skip p == q (a neuron against itself): half the work of the ordered pairs
        pooled = slot < len(self.pooled_distances)
        half = ~pooled | (pp < qq)
        cells = self.bins * self.bins
        self._lists = {"full": (pp, qq, slot * cells),
                       "half": (pp[half], qq[half], slot[half] * cells)}
        npool = len(self.pooled_distances)
        # the compiled kernel walks offsets instead of position lists
        self._offsets = {name: _offset_table(self.pooled_distances, layout.grid, cells,
                                             half=name == "half") for name in ("full", "half")}
        central = slot >= npool
        self._central = (np.ascontiguousarray(qq[central]),
                         np.ascontiguousarray(slot[central] * cells))
        self._cal_pos = _calibration_positions(layout)
        self._reservoir: list[list[torch.Tensor]] = [[] for _ in self.groups]
        self._res_n = 0
        self.counts_calibration = bool(counts_calibration)
        #: calibration batches still to be counted: (per-group activations, image order)
        self._pending: list[tuple[list[torch.Tensor], np.ndarray]] = []
        self._pending_n = 0
        self.calibration_n = 0
        self.n = 0
        #: (G, K, 2) channel of x and y of each pair; None before calibration
        self.channel: np.ndarray | None = None
        #: (G, K, 2) float32 bin-range centre (calibration mean) and half-range R
        self.centre: np.ndarray | None = None
        self.half_range: np.ndarray | None = None
        #: (G, C) float64 calibration MI at distance 1 that ranked the channels
        self.ranking_mi: np.ndarray | None = None
        self.counts: list[torch.Tensor] = []  # (F, K, S * B * B) int32 per group
        #: (G, K) bool: pairs of one channel (counted on the half table)
        self.same: np.ndarray | None = None
        #: host tables copied to the device once (:meth:`_device_tables`)
        self._torch_tables: dict[str, tuple[torch.Tensor, ...]] = {}

    @property
    def n_pairs(self) -> int:
        return len(self.pair_kind)

    @property
    def calibrated(self) -> bool:
        return self.channel is not None

    # -- calibration ----------------------------------------------------------------------
    def calibrate(self, cache: Mapping[str, Any]) -> None:
        """Keep the batch's values at the calibration positions (every channel), up to
        ``calibration_images``; with ``counts_calibration`` keep the batch to be counted
        (count it at once when the ranges are already fixed)."""
        if self.calibrated:
            if self.counts_calibration:
                self.update(cache)
                return
            raise AlreadyCalibratedError("the ranges are already fixed (end_calibration)")
        xs = [patch_activations(cache, self.layout, group) for group in self.groups]
        nb = xs[0].shape[0] if xs else 0
        if self.counts_calibration and nb:
            self._pending.append((xs, self._image_order(cache, nb, self._pending_n)))
            self._pending_n += nb
        room = self.calibration_images - self._res_n
        if room <= 0:
            return
        pos = torch.as_tensor(self._cal_pos)
        for gi, x in enumerate(xs):
            if self.device is None:
                self.device = x.device
            self._reservoir[gi].append(x[:room].index_select(1, pos.to(x.device)).float().cpu())
        self._res_n += min(room, nb)

    def end_calibration(self) -> None:
        """Rank the channels, choose the pairs, fix the ranges, allocate the counts."""
        if self._res_n < 2:
            raise InsufficientDataError(f"calibration saw {self._res_n} images; need at least 2")
        g, c, k = len(self.groups), self.layout.d_model, self.n_pairs
        channel = np.zeros((g, k, 2), np.int64)
        centre = np.zeros((g, k, 2), np.float32)
        half = np.zeros((g, k, 2), np.float32)
        ranking = np.full((g, c), np.nan)
        cp = int(np.flatnonzero(self._cal_pos == self.layout.centre_position)[0])
        near = [int(np.flatnonzero(self._cal_pos == p)[0])
                for p in np.flatnonzero(self.layout.distance_bin == 1)]
        for gi, (layer, sub) in enumerate(self.groups):
            res = torch.cat(self._reservoir[gi]).numpy().astype(np.float64)  # (R, S, C)
            self._reservoir[gi] = []
            if self.fixed_pairs is None:
                ranking[gi] = self._rank(res, cp, near)
                channel[gi] = self._choose(ranking[gi], layer, sub)
            else:
                channel[gi] = self.fixed_pairs
            # ranges of the chosen channels only: the quantile of all C channels' values
            # cost 1.3 s per model in the default study, for 14 of 384 used
            used, where = np.unique(channel[gi], return_inverse=True)
            flat = res.reshape(-1, c)[:, used]
            mean = flat.mean(0)
            r = np.quantile(np.abs(flat - mean), self.range_quantile, axis=0)
            # a channel that never varies still gets a usable grid
            r = np.where(np.isfinite(r) & (r > 0), r, 1.0)
            centre[gi] = mean[where].reshape(k, 2)
            half[gi] = r[where].reshape(k, 2)
        self.calibration_n = self._res_n
        self._res_n = 0
        self.ranking_mi = ranking
        self.set_calibration(channel, centre, half)
        pending, self._pending, self._pending_n = self._pending, [], 0
        while pending:
            xs, order = pending.pop(0)
            self._count(xs, order)

    def _rank(self, res: np.ndarray, cp: int, near: list[int]) -> np.ndarray:
        """(C,) MI between the central neuron and its distance-1 neighbours, pooled."""
        if not near:  # a grid too small for neighbours: no ranking, channel order
            return np.zeros(res.shape[-1])
        x = np.concatenate([res[:, cp]] * len(near)).T  # (C, R * 4)
        y = np.concatenate([res[:, p] for p in near]).T
        return np.asarray(mutual_info(x, y))

    def _choose(self, mi: np.ndarray, layer: int, sub: str) -> np.ndarray:
        """(K, 2) channels: highest, median, lowest MI; random; cross pairs."""
        score = np.where(np.isfinite(mi), mi, -np.inf)
        order = np.argsort(score, kind="stable")
        ranked = [int(order[-1]), int(order[len(order) // 2]), int(order[0])]
        rng = np.random.default_rng([self.seed, layer, ("attn", "mlp").index(sub)])
        rest = np.setdiff1d(np.arange(mi.size), ranked)
        rand = rng.choice(rest, size=self.n_random, replace=False).tolist()
        rows = [(ch, ch) for ch in ranked + rand]
        for _ in range(self.n_cross):
            a, b = rng.choice(mi.size, size=2, replace=False)
            rows.append((int(a), int(b)))
        return np.asarray(rows, np.int64)

    def set_calibration(self, channel: np.ndarray, centre: np.ndarray,
                        half_range: np.ndarray) -> None:
        """Install the pairs (G, K, 2) and their bin ranges, and zero the counts."""
        g, k = len(self.groups), self.n_pairs
        ch = np.asarray(channel, np.int64)
        if ch.shape != (g, k, 2):
            raise InputShapeError(f"channel must have shape {(g, k, 2)}, got {ch.shape}")
        self.channel = ch
        self.same = ch[..., 0] == ch[..., 1]
        self.centre = np.asarray(centre, np.float32).reshape(g, k, 2).copy()
        self.half_range = np.asarray(half_range, np.float32).reshape(g, k, 2).copy()
        if not np.all(self.half_range > 0):
            raise ConfigurationError("half ranges must be positive")
        dev = self.device or torch.device("cpu")
        self.device = dev
        size = self.n_slots * self.bins * self.bins
        # one tensor, so that the accelerator path counts several groups with one add;
        # per group a view of it
        self._counts_all = torch.zeros((g, self.folds, k, size), dtype=torch.int32, device=dev)
        self.counts = list(self._counts_all.unbind(0))
        self._torch_tables = {}
        self.n = 0

    # -- streaming ------------------------------------------------------------------------
    def _bin_ids(self, groups: slice, x: torch.Tensor) -> torch.Tensor:
        """(b, n, 2K, P) uint8 bin ids of every pair's x and y channel at every position,
        for the n groups ``groups`` whose (n, b, P, C) activations ``x`` holds."""
        assert self.channel is not None and self.centre is not None
        assert self.half_range is not None
        ch, lo_t, sc_t = self._binning_tables(groups, x.device)  # (n, 1, 1, 2K)
        n, b, p, _ = x.shape
        v = torch.gather(x, 3, ch.expand(n, b, p, ch.shape[-1])).float()  # (n, b, P, 2K)
        z = ((v - lo_t) * sc_t).floor_().clamp_(0, self.bins - 1)
        # NaN (never reaches here in a study, which drops non-finite images) -> bin 0
        z = torch.nan_to_num(z, nan=0.0)
        return z.to(torch.uint8).permute(1, 0, 3, 2).contiguous()

    def _device_tables(self, key: str, device: torch.device,
                       build: Callable[[], tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
        """The host arrays ``build()`` returns, on ``device``: copied once (until the next
        calibration), not once per batch, since each copy from the host is a wait on a
        GPU."""
        held = self._torch_tables.get(key)
        if held is None or held[0].device != device:
            held = self._torch_tables[key] = tuple(
                torch.as_tensor(a, device=device) for a in build())
        return held

    def _binning_tables(self, groups: slice, device: torch.device,
                        ) -> tuple[torch.Tensor, ...]:
        """The (n, 1, 1, 2K) channels, lower edges and bins per unit of the n groups
        ``groups``, on ``device``."""

        def build() -> tuple[np.ndarray, ...]:
            assert self.channel is not None and self.centre is not None
            assert self.half_range is not None
            half = self.half_range[groups]
            scale = np.float32(self.bins) / (np.float32(2) * half)
            shape = (len(half), 1, 1, -1)
            return (self.channel[groups].reshape(shape),
                    (self.centre[groups] - half).reshape(shape),
                    scale.astype(np.float32).reshape(shape))

        return self._device_tables(f"binning/{groups.start}/{groups.stop}", device, build)

    def update(self, cache: Mapping[str, Any]) -> None:
        if not self.calibrated:
            raise NotCalibratedError("BowtieCounts needs calibrate() / end_calibration() first")
        xs = [patch_activations(cache, self.layout, g) for g in self.groups]
        nb = xs[0].shape[0] if xs else 0
        if nb == 0:
            return
        self._count(xs, self._image_order(cache, nb, self.n))

    @staticmethod
    def _image_order(cache: Mapping[str, Any], nb: int, start: int) -> np.ndarray:
        """(nb,) the images' places in the study's order (folds), else a running count."""
        index = cache.get(IMAGE_INDEX)
        if index is None:
            return start + np.arange(nb)
        return np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index, np.int64)

    def _count(self, xs: list[torch.Tensor], order: np.ndarray) -> None:
        """Count one batch: ``xs`` per group (b, P, C), ``order`` (b,) image places."""
        nb = xs[0].shape[0]
        if any(x.shape[0] != nb for x in xs):
            raise InputShapeError("all sites of a batch must hold the same images")
        fold = (order % self.folds).astype(np.int64)
        dev = self.device
        assert dev is not None
        if not self.uses_device_path(dev):
            run_parallel(lambda gi: self._update_group(gi, xs[gi], fold), len(xs),
                         resolve_threads(self.threads))
        else:
            fold_t = host_to_device(fold, dev)  # once per batch, for every group
            k2, p, c = 2 * self.n_pairs, self.layout.n_positions, self.layout.d_model
            n_cells = sum(len(lst[0]) for lst in self._lists.values())
            for part in self.steps(  # stacked input, values, ids; cells of the pairs
                    len(xs), nb * (4 * p * c + 9 * p * k2 + 16 * k2 * n_cells), dev):
                x = torch.stack([x.to(dev) for x in xs[part]])
                self._update_groups_torch(part, self._bin_ids(part, x), fold_t)
        self.n += nb

    def _update_group(self, gi: int, x: torch.Tensor, fold: np.ndarray) -> None:
        """CPU path: the compiled kernel, or the torch path (``VITPROBE_JIT=0``)."""
        part = slice(gi, gi + 1)
        ids = self._bin_ids(part, x.to(self.device)[None])
        assert self.same is not None
        if jit_enabled():
            bowtie_update(ids[:, 0].numpy(), fold, self.same[gi], self._offsets["full"],
                          self._offsets["half"], self.layout.grid[1], *self._central,
                          self.layout.centre_position, self.bins, self.counts[gi].numpy())
            return
        self._update_groups_torch(part, ids, torch.as_tensor(fold))

    def _update_groups_torch(self, groups: slice, ids: torch.Tensor, fold: torch.Tensor,
                             ) -> None:
        """Reference (and accelerator) path: gather every position pair's cell and add
        one there. ``ids``: (b, n, 2K, P) of the n groups ``groups``; ``fold``: (b,)
        int64 on the ids' device. The pairs of one table (same-channel pairs on the half
        table, the others on the full one) of every group are gathered together: a few
        large ops rather than a few small ones per pair and group, which on a GPU are
        each a kernel launch the host pays for."""
        dev = ids.device
        b = self.bins
        size = self.n_slots * b * b
        k = self.n_pairs
        rows_of_images = ids.reshape(ids.shape[0], -1, ids.shape[-1])  # (b, n 2K, P)
        for name, same in (("full", False), ("half", True)):
            rows, group, pair = self._pairs_on_table(groups, same, dev)  # (m,) each
            if rows.numel() == 0:
                continue
            pp, qq, off = self._position_pairs(name, dev)
            xi = rows_of_images.index_select(1, rows).index_select(2, pp).long()  # (b, m, T)
            yi = rows_of_images.index_select(1, rows + 1).index_select(2, qq).long()
            pair_base = ((group * self.folds + fold[:, None]) * k + pair) * size  # (b, m)
            add_ones(self._counts_all, pair_base[:, :, None] + off + xi * b + yi)

    def _position_pairs(self, name: str, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Table ``name``'s (T,) positions p and q of each pair and their cells' offsets."""
        return self._device_tables(f"positions/{name}", device, lambda: self._lists[name])

    def _pairs_on_table(self, groups: slice, same: bool, device: torch.device,
                        ) -> tuple[torch.Tensor, ...]:
        """The pairs of the groups ``groups`` counted on the half table (``same``: one
        channel with itself) or on the full one, on ``device``: (m,) int64 rows of their
        x channel among the groups' 2K rows each, their groups and their pair indices."""
        assert self.same is not None
        same_of_groups = self.same[groups]  # (n, K)

        def build() -> tuple[np.ndarray, ...]:
            local, pair = np.nonzero(same_of_groups == same)
            rows = local * 2 * self.n_pairs + 2 * pair
            return (rows.astype(np.int64), (local + groups.start).astype(np.int64),
                    pair.astype(np.int64))

        return self._device_tables(f"pairs-on/{groups.start}/{groups.stop}/{same}", device,
                                   build)

    def folded_counts(self, gi: int) -> np.ndarray:
        """(F, K, S, B, B) int64 counts of group ``gi`` as ordered position pairs:
        same-channel pairs' pooled slots get their transpose added (they were counted
        once per unordered pair)."""
        assert self.same is not None
        b, npool = self.bins, len(self.pooled_distances)
        c = self.counts[gi].cpu().numpy().reshape(self.folds, self.n_pairs, self.n_slots, b,
                                                  b).astype(np.int64)
        s = np.flatnonzero(self.same[gi])
        c[:, s, :npool] += c[:, s, :npool].swapaxes(-1, -2)
        return c

    # -- access ---------------------------------------------------------------------------
    def pair_counts(self, layer: int, sublayer: str, pair: int, distance: int, *,
                    pooling: str = "translation", fold: int | None = None) -> np.ndarray:
        """(B, B) int64 counts [bin_x, bin_y] of one pair at one rounded distance."""
        if pooling not in POOLINGS:
            raise ConfigurationError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        gi = self.groups.index((layer, sublayer))
        if pooling == "translation":
            if distance not in self.pooled_distances:
                raise ConfigurationError(f"distance {distance} not pooled; pooled: "
                                 f"{self.pooled_distances}")
            s = self.pooled_distances.index(distance)
        else:
            if not 0 <= distance < self.n_slots - len(self.pooled_distances):
                raise ConfigurationError(f"no central pairs at distance {distance} on a "
                                 f"{self.layout.grid} grid")
            s = len(self.pooled_distances) + int(distance)
        c = self.folded_counts(gi)[:, pair, s]
        return c.sum(0) if fold is None else c[fold]

    def bin_centres(self, gi: int) -> np.ndarray:
        """(K, 2, B) float64 bin centres of every pair's x and y, in activation units."""
        assert self.centre is not None and self.half_range is not None
        r = self.half_range[gi].astype(np.float64)[..., None]
        lo = self.centre[gi].astype(np.float64)[..., None] - r
        return lo + (np.arange(self.bins) + 0.5) * (2 * r / self.bins)

    # -- state ----------------------------------------------------------------------------
    def merge(self, other: Self) -> Self:
        self.check_mergeable(other)
        if not (self.calibrated and other.calibrated):
            raise NotCalibratedError("merge calibrated accumulators only")
        assert other.channel is not None and other.centre is not None
        if not (np.array_equal(self.channel, other.channel)
                and np.array_equal(self.centre, other.centre)
                and np.array_equal(self.half_range, other.half_range)):
            raise ResultsError("shards were calibrated differently: calibrate once and "
                               "load_state_dict the calibrated (empty) state into every shard")
        for a, b in zip(self.counts, other.counts, strict=True):
            a += b.to(a.device)
        self.n += other.n
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """``n``, ``calibration_n``; after calibration ``channel``, ``centre``,
        ``half_range``, ``ranking_mi`` and ``counts_{g}`` (F, K, S, B, B) int32; before it,
        ``reservoir_{g}``."""
        if self._pending:
            raise NotCalibratedError("BowtieCounts holds calibration batches still to be "
                                     "counted: call end_calibration() before state_dict()")
        out: dict[str, np.ndarray] = {"n": np.asarray(self.n, np.int64),
                                      "calibration_n": np.asarray(self.calibration_n, np.int64)}
        if not self.calibrated:
            if self._res_n:
                for gi in range(len(self.groups)):
                    out[f"reservoir_{gi}"] = torch.cat(self._reservoir[gi]).numpy()
            return out
        assert self.centre is not None and self.half_range is not None
        out["channel"] = self.channel.copy()
        out["centre"] = self.centre.copy()
        out["half_range"] = self.half_range.copy()
        out["ranking_mi"] = (np.full((len(self.groups), self.layout.d_model), np.nan)
                             if self.ranking_mi is None else self.ranking_mi.copy())
        shape = (self.folds, self.n_pairs, self.n_slots, self.bins, self.bins)
        for gi, c in enumerate(self.counts):
            out[f"counts_{gi}"] = c.cpu().numpy().reshape(shape).copy()
        return out

    def calibration_state_dict(self) -> dict[str, np.ndarray]:
        """:meth:`state_dict` with the counts zeroed (``n = 0``): the fixed pairs and
        ranges, for other shards to start from."""
        state = self.state_dict()
        for gi in range(len(self.counts)):
            state[f"counts_{gi}"] = np.zeros_like(state[f"counts_{gi}"])
        state["n"] = np.asarray(0, np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.calibration_n = int(state["calibration_n"])
        self._pending, self._pending_n = [], 0
        if "channel" not in state:
            self.channel = self.centre = self.half_range = None
            self._reservoir = [[] for _ in self.groups]
            self._res_n = 0
            for gi in range(len(self.groups)):
                key = f"reservoir_{gi}"
                if key in state:
                    self._reservoir[gi] = [torch.as_tensor(np.asarray(state[key]))]
                    self._res_n = int(state[key].shape[0])
            self.n = int(state["n"])
            return
        self.set_calibration(state["channel"], state["centre"], state["half_range"])
        self.ranking_mi = np.asarray(state["ranking_mi"], np.float64).copy()
        for gi, c in enumerate(self.counts):
            src = np.asarray(state[f"counts_{gi}"])
            if src.size and (src.min() < 0 or src.max() >= 2**31):
                raise ResultsError(f"counts_{gi} out of int32 range")
            c.copy_(torch.as_tensor(src.reshape(c.shape)))
        self.n = int(state["n"])

    def config(self) -> dict[str, Any]:
        return {"layout": self.layout.to_config(), "groups": [list(g) for g in self.groups],
                "bins": self.bins, "n_random": self.n_random, "n_cross": self.n_cross,
                "pairs": None if self.fixed_pairs is None else self.fixed_pairs.tolist(),
                "pooled_distances": self.pooled_distances,
                "range_quantile": self.range_quantile,
                "calibration_images": self.calibration_images, "folds": self.folds,
                "seed": self.seed}

    # -- results --------------------------------------------------------------------------
    def result(self, *, statistics: bool = True, min_count: int = MIN_COUNT) -> xr.Dataset:
        """The counts and (``statistics=True``) the conditional statistics as a Dataset;
        see :func:`bowtie_dataset`."""
        return bowtie_dataset(self, statistics=statistics, min_count=min_count)


def bowtie_dataset(acc: BowtieCounts, *, statistics: bool = True,
                   min_count: int = MIN_COUNT) -> xr.Dataset:
    """The labelled result of a :class:`BowtieCounts`.

    Dims: ``layer``, ``sublayer``, ``pooling`` (``translation``, ``central``),
    ``pair``, ``distance`` (rounded, patch units, ``0 .. D``), ``bin_x``, ``bin_y``.

    Variables
    ---------
    counts [layer, sublayer, pooling, pair, distance, bin_x, bin_y] int32
        All folds summed; zero at distances a pooling did not count (and for
        same-channel pairs at distance 0, a neuron against itself).
    x_value, y_value [layer, sublayer, pair, bin_x | bin_y] (coordinates)
        Bin centres in activation units.
    channel_x, channel_y [layer, sublayer, pair], pair_kind [pair]
        The neurons of each pair.
    half_range_x, half_range_y, centre_x, centre_y [layer, sublayer, pair]
        The binned ranges (``centre +- half_range``).
    ranking_mi [layer, sublayer, channel]
        The calibration MI at distance 1 that ranked the channels (nats; NaN for
        fixed pairs).
    column_n, cond_mean, cond_sd [layer, sublayer, pooling, pair, distance, bin_x]
        Samples per x column, E[y | x], SD[y | x] (activation units).
    correlation, bowtie_index, sigma2, w [..., distance] with ``_se``, ``_lo``,
        ``_hi`` (delete-one-fold jackknife, 95 % t interval): module
        :mod:`vitprobe.stats.conditional`.
    mi_before, mi_after, mi_remaining [..., distance]
        MI of the pair before / after dividing y by its predicted SD, and their ratio.
    layer_correlation, layer_bowtie_index, layer_sigma2, layer_w with ``_lo``, ``_hi``
    [layer, sublayer, pooling, distance]
        Means over the same-channel pairs of a layer, with jackknife intervals of the
        mean; ``layer_mi_remaining``: mean MI after over mean MI before.
    n_samples [layer, sublayer, pooling, pair, distance]
        Samples per histogram.
    edge_fraction [layer, sublayer, pooling, pair, distance]
        Share of the samples whose x or y fell in an outer bin (holds every value
        beyond the range).

    Same-channel pairs at distance 0 (a neuron against itself) get NaN statistics.
    """
    if not acc.calibrated:
        raise NotCalibratedError("not calibrated")
    assert acc.channel is not None and acc.centre is not None and acc.half_range is not None
    layers, subs = group_axes(acc.groups)
    nl, ns, k, b, f = len(layers), len(subs), acc.n_pairs, acc.bins, acc.folds
    npool = len(acc.pooled_distances)
    nd = acc.n_slots - npool  # central distances 0 .. D
    dists = np.arange(max(nd, max(acc.pooled_distances, default=0) + 1))
    ndist = dists.size
    counts = np.zeros((nl, ns, 2, k, ndist, b, b), np.int64)
    fold_counts_of: dict[int, np.ndarray] = {}
    xv = np.full((nl, ns, k, b), np.nan)
    yv = np.full((nl, ns, k, b), np.nan)
    meta = {name: np.full((nl, ns, k), np.nan) for name in
            ("centre_x", "centre_y", "half_range_x", "half_range_y")}
    chx = np.full((nl, ns, k), -1, np.int64)
    chy = np.full((nl, ns, k), -1, np.int64)
    ranking = np.full((nl, ns, acc.layout.d_model), np.nan)
    for gi, (layer, s) in enumerate(acc.groups):
        li, si = layers.index(layer), subs.index(s)
        c = acc.folded_counts(gi)
        fc = np.zeros((f, 2, k, ndist, b, b), np.int64)
        fc[:, 0][:, :, acc.pooled_distances] = c[:, :, :npool]
        fc[:, 1, :, :nd] = c[:, :, npool:]
        fold_counts_of[gi] = fc
        counts[li, si] = fc.sum(0)
        centres = acc.bin_centres(gi)
        xv[li, si], yv[li, si] = centres[:, 0], centres[:, 1]
        chx[li, si], chy[li, si] = acc.channel[gi, :, 0], acc.channel[gi, :, 1]
        meta["centre_x"][li, si], meta["centre_y"][li, si] = acc.centre[gi].T
        meta["half_range_x"][li, si], meta["half_range_y"][li, si] = acc.half_range[gi].T
        if acc.ranking_mi is not None:
            ranking[li, si] = acc.ranking_mi[gi]

    base = ("layer", "sublayer", "pooling", "pair", "distance")
    if counts.max(initial=0) >= 2**31:
        raise ResultsError("bowtie counts exceed int32; use fewer images per shard")
    dv: dict[str, Any] = {
        "counts": ((*base, "bin_x", "bin_y"), counts.astype(np.int32),
                   {"long_name": "joint counts of (x, y)", "units": "count",
                    "description": "x: the first neuron of the pair; y: the second at the "
                                   "given rounded distance; all folds; values beyond the "
                                   "binned range are counted in the outer bins"}),
        "channel_x": (("layer", "sublayer", "pair"), chx, {"long_name": "channel of x"}),
        "channel_y": (("layer", "sublayer", "pair"), chy, {"long_name": "channel of y"}),
        "ranking_mi": (("layer", "sublayer", "channel"), ranking,
                       {"long_name": "calibration MI at distance 1 (channel ranking)",
                        "units": "nats"}),
    }
    for name, arr in meta.items():
        dv[name] = (("layer", "sublayer", "pair"), arr,
                    {"long_name": name.replace("_", " "), "units": "activation"})
    n_samples = counts.sum((-2, -1), dtype=np.int64)
    outer = counts[..., [0, -1], :].sum((-2, -1), dtype=np.int64) \
        + counts[..., 1:-1, [0, -1]].sum((-2, -1), dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        edge = np.where(n_samples > 0, outer / n_samples, np.nan)
    dv["n_samples"] = (base, n_samples, {"long_name": "samples", "units": "count"})
    dv["edge_fraction"] = (base, edge, {
        "long_name": "share of samples in an outer bin",
        "description": "x or y in the first or last bin, which also holds every value "
                       "beyond the binned range"})
    if statistics:
        dv.update(_statistics(acc, fold_counts_of, layers, subs, xv, yv, chx, chy, dists,
                              min_count))
    coords = {
        "layer": ("layer", np.asarray(layers), LAYER_ATTRS),
        "sublayer": ("sublayer", np.asarray(subs), SUBLAYER_ATTRS),
        "pooling": ("pooling", np.asarray(POOLINGS), {
            "long_name": "position pairs",
            "description": "translation: every ordered position pair at the rounded "
                           "distance, pooled; central: x at the central patch"}),
        "pair": ("pair", np.arange(k), {"long_name": "neuron pair"}),
        "pair_kind": ("pair", np.asarray(acc.pair_kind), {
            "long_name": "how the pair was chosen",
            "description": "highest / median / lowest: same-channel pairs of the channels "
                           "with that calibration MI at distance 1; random: a seeded random "
                           "channel; cross: a seeded random pair of two channels; given: "
                           "fixed by the caller"}),
        "distance": ("distance", dists, {"long_name": "distance between the neurons",
                                         "units": "patches",
                                         "description": "Euclidean distance rounded to the "
                                                        "nearest integer"}),
        "bin_x": ("bin_x", np.arange(b), {"long_name": "bin of x"}),
        "bin_y": ("bin_y", np.arange(b), {"long_name": "bin of y"}),
        "channel": ("channel", np.arange(acc.layout.d_model), {"long_name": "channel"}),
        "x_value": (("layer", "sublayer", "pair", "bin_x"), xv,
                    {"long_name": "bin centre of x", "units": "activation"}),
        "y_value": (("layer", "sublayer", "pair", "bin_y"), yv,
                    {"long_name": "bin centre of y", "units": "activation"}),
    }
    ds = xr.Dataset(dv, coords=coords)
    ds.attrs.update(layout_attrs(acc.layout))
    ds.attrs.update({
        "statistic": "bowtie histograms (fine linear bins) and conditional statistics",
        "groups": groups_attr(acc.groups), "n_images": int(acc.n),
        "calibration_images": int(acc.calibration_n), "bins": b, "folds": f,
        "pooled_distances": np.asarray(acc.pooled_distances, np.int64),
        "range_quantile": acc.range_quantile, "min_count": int(min_count),
        "binning": (f"{b} equal-width bins per neuron over channel mean +- R, R the "
                    f"{acc.range_quantile} quantile of |x - mean| over the calibration "
                    "images (pooled over the centre, its distance-1 neighbours and 16 "
                    "evenly spaced positions); values beyond the range are counted in the "
                    "outer bins"),
        "pair_selection": ("fixed by the caller" if acc.fixed_pairs is not None else
                           "per layer and sublayer: the channels with the highest, median "
                           "and lowest calibration MI between the central neuron and its "
                           "distance-1 neighbours (quantile-binned, pooled over the four), "
                           f"{acc.n_random} seeded random channels and {acc.n_cross} seeded "
                           f"cross-channel pairs (seed {acc.seed})"),
        "interval": (f"delete-one-fold jackknife over {f} disjoint image folds (image index "
                     "modulo folds), 95 % Student-t interval"),
        "reference": "Schwartz & Simoncelli 2001 Nat Neurosci 4:819",
    })
    return ds


def _statistics(acc: BowtieCounts, fold_counts_of: dict[int, np.ndarray], layers: list[int],
                subs: list[str], xv: np.ndarray, yv: np.ndarray, chx: np.ndarray,
                chy: np.ndarray, dists: np.ndarray, min_count: int) -> dict[str, Any]:
    """Conditional statistics with jackknife intervals, per group (bounded memory)."""
    nl, ns, k, b, f = len(layers), len(subs), acc.n_pairs, acc.bins, acc.folds
    nd = dists.size
    shape = (nl, ns, 2, k, nd)
    est = {name: np.full(shape, np.nan) for name in (*_STATS, "mi_before", "mi_after")}
    se = {name: np.full(shape, np.nan) for name in _STATS}
    lo = {name: np.full(shape, np.nan) for name in _STATS}
    hi = {name: np.full(shape, np.nan) for name in _STATS}
    col = {name: np.full((*shape, b), np.nan) for name in ("cond_mean", "cond_sd")}
    coln = np.zeros((*shape, b), np.int64)
    lshape = (nl, ns, 2, nd)
    layer_est = {name: np.full(lshape, np.nan) for name in (*_STATS, "mi_remaining")}
    layer_lo = {name: np.full(lshape, np.nan) for name in _STATS}
    layer_hi = {name: np.full(lshape, np.nan) for name in _STATS}
    for gi, (layer, s) in enumerate(acc.groups):
        li, si = layers.index(layer), subs.index(s)
        fc = fold_counts_of[gi]  # (F, 2, K, D, B, B)
        tot = fc.sum(0)
        x = xv[li, si][None, :, None, :]  # (1, K, 1, B) against (2, K, D, B, B)
        y = yv[li, si][None, :, None, :]
        st = conditional_statistics(tot, x, y, min_count=min_count)
        # replicates: all data but one fold; folds that saw no image are left out
        used = fc.reshape(f, -1).sum(1) > 0
        reps = [conditional_statistics(tot - fc[j], x, y, min_count=min_count, with_mi=False)
                for j in range(f) if used[j]]
        same_pair = chx[li, si] == chy[li, si]
        same = same_pair[None, :, None] & (dists == 0)[None, None, :]

        def pair_mean(v: np.ndarray, axis: int = 1, same_pair: np.ndarray = same_pair
                      ) -> np.ndarray:
            """Mean over the same-channel pairs (axis ``axis``), NaN-aware."""
            sel = np.compress(same_pair, v, axis=axis)
            ok = np.isfinite(sel)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(ok, sel, 0.0).sum(axis) / ok.sum(axis)

        for name in (*_STATS, "mi_before", "mi_after"):
            v = np.where(same, np.nan, st[name])
            est[name][li, si] = v
            if name in _STATS:
                rep = np.stack([r[name] for r in reps]) if reps else np.full((0, *v.shape),
                                                                              np.nan)
                rep = np.where(same, np.nan, rep)
                e, lo_, hi_ = jackknife_interval(v, rep)
                se[name][li, si], lo[name][li, si], hi[name][li, si] = e, lo_, hi_
                if same_pair.any():  # the layer's summary: mean over same-channel pairs
                    lv = pair_mean(v)
                    _, llo, lhi = jackknife_interval(lv, pair_mean(rep, axis=2))
                    layer_est[name][li, si], layer_lo[name][li, si] = lv, llo
                    layer_hi[name][li, si] = lhi
        if same_pair.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                before = pair_mean(est["mi_before"][li, si])
                layer_est["mi_remaining"][li, si] = np.where(
                    before > 0, pair_mean(est["mi_after"][li, si]) / before, np.nan)
        coln[li, si] = st["column_n"]
        for name in ("cond_mean", "cond_sd"):
            col[name][li, si] = np.where(same[..., None], np.nan, st[name])
    base = ("layer", "sublayer", "pooling", "pair", "distance")
    long = {"correlation": ("correlation of x and y", "1"),
            "bowtie_index": ("bowtie index: slope of SD[y~|x~] on |x~| (standardised)", "1"),
            "sigma2": ("divisive normalization: sigma^2 of var(y~|x~) = sigma^2 + w x~^2", "1"),
            "w": ("divisive normalization weight w of var(y~|x~) = sigma^2 + w x~^2", "1")}
    out: dict[str, Any] = {}
    for name in _STATS:
        ln, units = long[name]
        out[name] = (base, est[name], {"long_name": ln, "units": units})
        out[f"{name}_se"] = (base, se[name], {"long_name": f"jackknife standard error of "
                                                           f"{name}"})
        out[f"{name}_lo"] = (base, lo[name], {"long_name": f"95 % interval of {name}, lower"})
        out[f"{name}_hi"] = (base, hi[name], {"long_name": f"95 % interval of {name}, upper"})
    with np.errstate(invalid="ignore", divide="ignore"):
        remaining = np.where(est["mi_before"] > 0, est["mi_after"] / est["mi_before"], np.nan)
    mi_desc = ("Miller-Madow plug-in MI of 8 x 8 re-binned (about equal-frequency) counts; "
               "see vitprobe.stats.conditional")
    out["mi_before"] = (base, est["mi_before"], {"long_name": "MI of the pair", "units": "nats",
                                                 "description": mi_desc})
    out["mi_after"] = (base, est["mi_after"], {
        "long_name": "MI after dividing y by its predicted SD sqrt(sigma^2 + w x~^2)",
        "units": "nats", "description": mi_desc})
    out["mi_remaining"] = (base, remaining, {
        "long_name": "share of the MI left after divisive normalization",
        "description": "mi_after / mi_before (NaN where mi_before <= 0)"})
    lbase = ("layer", "sublayer", "pooling", "distance")
    for name in _STATS:
        ln, units = long[name]
        out[f"layer_{name}"] = (lbase, layer_est[name], {
            "long_name": f"{ln}, mean over the same-channel pairs", "units": units})
        out[f"layer_{name}_lo"] = (lbase, layer_lo[name], {
            "long_name": f"95 % jackknife interval of layer_{name}, lower"})
        out[f"layer_{name}_hi"] = (lbase, layer_hi[name], {
            "long_name": f"95 % jackknife interval of layer_{name}, upper"})
    out["layer_mi_remaining"] = (lbase, layer_est["mi_remaining"], {
        "long_name": "share of the MI left after divisive normalization, same-channel pairs",
        "description": "mean mi_after / mean mi_before over the same-channel pairs"})
    out["column_n"] = ((*base, "bin_x"), coln, {"long_name": "samples per x column",
                                                "units": "count"})
    out["cond_mean"] = ((*base, "bin_x"), col["cond_mean"],
                        {"long_name": "E[y | x]", "units": "activation"})
    out["cond_sd"] = ((*base, "bin_x"), col["cond_sd"], {
        "long_name": "SD[y | x]", "units": "activation",
        "description": "Sheppard- and c4-corrected; see vitprobe.stats.conditional"})
    return out
