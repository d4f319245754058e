"""Per-neuron activation histograms for distribution plots.

Each neuron's activations are standardised with a mean and standard deviation fixed
during calibration (the first batches, typically the same ~1k images that fix the
MI bin edges), ``z = (x - mu) / sigma``, and counted in ``n_bins`` equal bins over
``[-z_range, z_range]`` plus an underflow and an overflow bin. Standardising per
neuron makes histograms of different neurons comparable and poolable, so the
accumulator keeps, per (layer, sublayer, channel):

* ``histogram``: all patch positions pooled (the channel's shape of distribution),
* ``histogram_centre``: the central neuron alone (the neuron of the MI study),
* optionally (``per_position=True``) every neuron separately.

Activation units are recovered as ``x = mu + sigma z`` (``calibration_mean``,
``calibration_std`` are in the result). Counts are exact integers, so shards merge
exactly; memory is ``(n_bins + 2)`` int64 per channel and sublayer (per neuron with
``per_position``), independent of the number of images. Heavy tails show as mass in
the outer bins and as excess kurtosis (:class:`~vitprobe.stats.NeuronMoments`).

With ``counts_calibration=True`` the calibration images are counted too (one forward
pass instead of two, :class:`~vitprobe.record.Accumulator`): the batches given to
:meth:`NeuronHistograms.calibrate` are kept (references to the recorded tensors, no
copy) until the standardisation is frozen, then counted. Memory: the kept batches, at
most ``calibration_images`` images rounded up to a whole batch (all batches given when it
is None); for DINOv2-S/14 (24 sites x 257 tokens x 384 channels, float32) 9.5 MB per
image, 2.43 GB at 256 images, the same tensors :class:`~vitprobe.stats.JointCounts`
keeps for its reservoir (shared, not doubled, when both read the same batches and have
the same ``calibration_images``); ViT-B/16 14.5 MB per image, 3.72 GB. The study keeps
them only within its memory budget (:func:`vitprobe.analyses.base.one_pass_calibration`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Self

import numpy as np
import torch
import xarray as xr

from vitprobe._jit import jit_enabled
from vitprobe.errors import (
    AlreadyCalibratedError,
    ConfigurationError,
    IncompatibleStateError,
    InsufficientDataError,
    NotCalibratedError,
)
from vitprobe.record.accumulator import Accumulator, resolve_threads, run_parallel
from vitprobe.stats._common import (
    LAYER_ATTRS,
    SUBLAYER_ATTRS,
    add_ones,
    as_float32_numpy,
    group_axes,
    groups_attr,
    layout_attrs,
    patch_activations,
    position_coords,
)
from vitprobe.stats._kernels import histogram_update
from vitprobe.stats.layout import Group, NeuronLayout
from vitprobe.stats.moments import batch_moments, combine_moments

__all__ = ["NeuronHistograms"]


class NeuronHistograms(Accumulator):
    """Standardised activation histograms per channel (pooled and central neuron).

    Parameters
    ----------
    layout : NeuronLayout
    groups : (layer, sublayer) pairs, default all
    n_bins : int
        Equal bins over ``[-z_range, z_range]`` standard deviations (plus two open
        outer bins).
    z_range : float
        Half-width of the binned range, in calibration standard deviations.
    per_position : bool
        Also keep one histogram per neuron (positions x channels x (n_bins + 2)).
    threads : int, optional
        CPU worker threads over the groups of a batch (default
        ``torch.get_num_threads()``).
    device : torch device, optional
    calibration_images : int, optional
        Images whose moments fix the standardisation: the first ones given to
        :meth:`calibrate` (default: all of them).
    counts_calibration : bool
        Count the images given to :meth:`calibrate` too (the caller must not pass them to
        :meth:`update` again); the histograms equal those of ``calibrate`` +
        ``end_calibration`` + ``update`` on the same batches. The recorded tensors are
        kept until counted: do not modify them in place.
    """

    name = "neuron_histograms"
    needs_calibration = True

    def __init__(self, layout: NeuronLayout, *, groups: Iterable[Group] | None = None,
                 n_bins: int = 96, z_range: float = 12.0, per_position: bool = False,
                 threads: int | None = None, device: str | torch.device | None = None,
                 calibration_images: int | None = None,
                 counts_calibration: bool = False) -> None:
        self.layout = layout
        self.threads = threads
        self.groups = layout.check_groups(groups)
        self.sites = tuple(f"blocks.{layer}.{s}.out" for layer, s in self.groups)
        self.n_bins = int(n_bins)
        self.z_range = float(z_range)
        self.per_position = bool(per_position)
        self.device = None if device is None else torch.device(device)
        self.n = 0
        self._calib: list[Any] | None = None  # per group moments during calibration
        self._calib_n = 0
        if calibration_images is not None and calibration_images < 2:
            raise ConfigurationError(
                f"calibration_images must be at least 2, got {calibration_images}")
        self.calibration_images = calibration_images
        self.counts_calibration = bool(counts_calibration)
        self._pending: list[list[torch.Tensor]] = []  # calibration batches to count
        self.mu: torch.Tensor | None = None  # (G, P, C) float32
        self.inv_sigma: torch.Tensor | None = None
        self.hist: torch.Tensor | None = None  # (G, C, nb + 2) int64
        self.hist_centre: torch.Tensor | None = None
        self.hist_neuron: torch.Tensor | None = None  # (G, P, C, nb + 2)
        # the binning's folded scale and offset, per calibration: on the host, on the device
        self._np_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._device_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def calibrated(self) -> bool:
        return self.mu is not None

    # -- calibration ----------------------------------------------------------------------
    def calibrate(self, cache: Mapping[str, Any]) -> None:
        """Add the batch's moments (up to ``calibration_images`` images); with
        ``counts_calibration`` keep the batch to be counted (count it at once when the
        standardisation is already frozen)."""
        if self.calibrated:
            if self.counts_calibration:
                self.update(cache)
                return
            raise AlreadyCalibratedError("the standardisation is already frozen (end_calibration)")
        if self._calib is None:
            self._calib = [None] * len(self.groups)
        xs = [patch_activations(cache, self.layout, group) for group in self.groups]
        nb = xs[0].shape[0] if xs else 0
        if self.counts_calibration and nb:
            self._pending.append(xs)
        room = nb if self.calibration_images is None else self.calibration_images - self._calib_n
        take = max(0, min(room, nb))
        if take:
            dev = self.device = self.device or xs[0].device
            calib = self._calib

            def add(gi: int) -> None:
                # float64 inside batch_moments (on CPU chunk by chunk: no float64 copy)
                bm = batch_moments(xs[gi][:take].to(dev))
                calib[gi] = bm if calib[gi] is None else combine_moments(calib[gi], bm)

            # groups are independent: on CPU they run in parallel like the counting
            run_parallel(add, len(xs),
                         1 if self.uses_device_path(dev) else resolve_threads(self.threads))
            self._calib_n += take
        if self.counts_calibration and self.calibration_images is not None \
                and self._calib_n >= self.calibration_images:
            self.end_calibration()

    def end_calibration(self) -> None:
        """Freeze the standardisation (and, with ``counts_calibration``, count the kept
        calibration batches, unless that happened when ``calibration_images`` was
        reached)."""
        if self.counts_calibration and self.calibrated:
            return
        if self._calib is None or self._calib_n < 2:
            raise InsufficientDataError("calibration needs at least 2 images")
        mus, invs = [], []
        for n, mean, m2, _, _ in self._calib:
            sd = torch.sqrt(m2 / (n - 1))
            mus.append(mean.float())
            invs.append(torch.where(sd > 0, 1.0 / sd, torch.zeros_like(sd)).float())
        self.set_calibration(torch.stack(mus), torch.stack(invs))
        self._calib = None
        pending, self._pending = self._pending, []
        while pending:
            self._count(pending.pop(0))

    def set_calibration(self, mu: torch.Tensor, inv_sigma: torch.Tensor) -> None:
        """Install frozen standardisation (G, P, C) and allocate the counts."""
        dev = self.device or mu.device
        self.device = dev
        self._np_cache = None
        self._device_cache = None
        self.mu = mu.to(dev, torch.float32).contiguous()
        self.inv_sigma = inv_sigma.to(dev, torch.float32).contiguous()
        g, p, c, k = len(self.groups), self.layout.n_positions, self.layout.d_model, self.n_bins + 2
        self.hist = torch.zeros((g, c, k), dtype=torch.int64, device=dev)
        self.hist_centre = torch.zeros((g, c, k), dtype=torch.int64, device=dev)
        if self.per_position:
            self.hist_neuron = torch.zeros((g, p, c, k), dtype=torch.int64, device=dev)

    # -- streaming ------------------------------------------------------------------------
    def _bins(self, x: torch.Tensor, groups: slice) -> torch.Tensor:
        """(n, b, P, C) activations of the groups ``groups`` -> int64 bin ids in
        [0, n_bins + 1]: the CPU kernel's arithmetic (``z = x a + c0`` with its float32
        tables, each operation rounded, NaN in the underflow bin), so that both paths put
        every value in the same bin."""
        a, c0 = self._device_tables(x.device)
        n, b = x.shape[:2]
        z = x.float().reshape(n, b, -1).mul(a[groups, None]).add_(c0[groups, None])
        z = torch.nan_to_num_(z, nan=0.0).clamp_(0.0, float(self.n_bins + 1))
        return z.to(torch.int64).reshape(x.shape)  # truncation: the floor of z >= 0

    def _device_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_numpy_tables`' scale and offset on ``device``, copied once per
        calibration (a copy from the host is a wait on a GPU)."""
        held = self._device_cache
        if held is None or held[0].device != device:
            a, c0, _ = self._numpy_tables()
            held = self._device_cache = (torch.as_tensor(a, device=device),
                                         torch.as_tensor(c0, device=device))
        return held

    def update(self, cache: Mapping[str, Any]) -> None:
        if not self.calibrated:
            raise NotCalibratedError("NeuronHistograms needs calibrate() / end_calibration() first")
        self._count([patch_activations(cache, self.layout, g) for g in self.groups])

    def _count(self, xs: list[torch.Tensor]) -> None:
        """Count one batch: ``xs[gi]`` the (b, P, C) activations of group ``gi``."""
        assert self.hist is not None and self.hist_centre is not None
        k = self.n_bins + 2
        c = self.layout.d_model
        cp = self.layout.centre_position
        xs = [x.to(self.device) for x in xs]
        nb = xs[0].shape[0] if xs else 0
        if not self.uses_device_path(self.device) and self.hist_neuron is None:
            self._numpy_tables()
            run_parallel(lambda gi: self._update_numpy(gi, xs[gi]), len(xs),
                         resolve_threads(self.threads))
            self.n += nb
            return
        # accelerator path: each value's cell in the (C, k) counts of its group, added
        # with index_add_ (bincount would make the host wait for the device twice per
        # call, to size its output); groups stacked, as many per step as fit
        p = self.layout.n_positions
        dev = self.device
        channel = torch.arange(c, device=dev) * k
        position = torch.arange(p, device=dev)[:, None] * (c * k)
        for part in self.steps(len(xs), 24 * nb * p * c, dev):  # input, z, ids, cells
            ids = self._bins(torch.stack(xs[part]), part)  # (n, b, P, C)
            group = torch.arange(ids.shape[0], device=dev)[:, None, None, None]
            cell = ids + (group * (c * k) + channel)
            add_ones(self.hist[part], cell)
            add_ones(self.hist_centre[part], cell[:, :, cp])
            if self.hist_neuron is not None:
                add_ones(self.hist_neuron[part], ids + (group * (p * c * k) + position
                                                        + channel))
        self.n += nb

    def _numpy_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-neuron scale ``a``, offset ``c0`` (G, P*C) and channel offsets (P*C,)."""
        if self._np_cache is None:
            assert self.mu is not None and self.inv_sigma is not None
            k = self.n_bins + 2
            p, c = self.layout.n_positions, self.layout.d_model
            scale = self.n_bins / (2 * self.z_range)
            a = (self.inv_sigma * scale).cpu().numpy().reshape(len(self.groups), -1)
            c0 = (self.n_bins / 2 + 1 - self.mu.cpu().numpy().reshape(len(self.groups), -1) * a)
            off = np.tile(np.arange(c, dtype=np.intp) * k, p)
            self._np_cache = (a.astype(np.float32), c0.astype(np.float32), off)
        return self._np_cache

    def _update_numpy(self, gi: int, x: torch.Tensor, chunk: int = 1 << 18) -> None:
        """CPU path: z = x a + c0 (a = scale / sigma, c0 folds mu and the +1 offset of
        the underflow bin), clipped to [0, n_bins + 1] so truncation is the floor,
        then one bincount per chunk (the reference, ``VITPROBE_JIT=0``), or the same
        arithmetic in the compiled kernel."""
        assert self.hist is not None and self.hist_centre is not None
        b, p, c = x.shape
        k = self.n_bins + 2
        a, c0, off = self._numpy_tables()
        xn = as_float32_numpy(x).reshape(b, p * c)
        cp = self.layout.centre_position
        if jit_enabled():
            histogram_update(xn, a[gi], c0[gi], c, cp, self.hist[gi].numpy(),
                             self.hist_centre[gi].numpy())
            return
        h = self.hist[gi].numpy().reshape(-1)
        cols = max(1, chunk // b)
        z = np.empty((b, cols), dtype=np.float32)
        ids = np.empty((b, cols), dtype=np.intp)  # bincount's own index type: no cast
        for s in range(0, p * c, cols):
            w = min(cols, p * c - s)
            zs, js = z[:, :w], ids[:, :w]
            np.multiply(xn[:, s : s + w], a[gi, s : s + w], out=zs)
            zs += c0[gi, s : s + w]
            np.clip(zs, 0.0, float(k - 1), out=zs)
            js[...] = zs
            js += off[s : s + w]
            h += np.bincount(js.reshape(-1), minlength=c * k)
        zc = xn[:, cp * c : (cp + 1) * c] * a[gi, cp * c : (cp + 1) * c] \
            + c0[gi, cp * c : (cp + 1) * c]
        jc = np.clip(zc, 0.0, float(k - 1)).astype(np.intp) + off[:c]
        self.hist_centre[gi].numpy().reshape(-1)[...] += np.bincount(jc.reshape(-1),
                                                                     minlength=c * k)

    # -- state ----------------------------------------------------------------------------
    def merge(self, other: Self) -> Self:
        self.check_mergeable(other)
        if other.n == 0:
            return self
        if not (self.calibrated and other.calibrated):
            raise IncompatibleStateError("merge calibrated accumulators only: calibrate once "
                                         "and share the state before streaming")
        assert self.mu is not None and other.mu is not None and other.inv_sigma is not None
        if not (torch.equal(self.mu, other.mu.to(self.device))
                and torch.equal(self.inv_sigma, other.inv_sigma.to(self.device))):
            raise IncompatibleStateError("shards were calibrated differently: share the "
                                         "calibration (load_state_dict of one calibrated "
                                         "accumulator) before streaming")
        self.hist += other.hist.to(self.device)
        self.hist_centre += other.hist_centre.to(self.device)
        if self.hist_neuron is not None:
            self.hist_neuron += other.hist_neuron.to(self.device)
        self.n += other.n
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        if self._pending:
            raise NotCalibratedError("NeuronHistograms holds calibration batches still to be "
                               "counted: call end_calibration() before state_dict()")
        out: dict[str, np.ndarray] = {"n": np.asarray(self.n, dtype=np.int64)}
        if self.calibrated:
            assert self.mu is not None and self.inv_sigma is not None
            out["mu"] = self.mu.cpu().numpy().copy()
            out["inv_sigma"] = self.inv_sigma.cpu().numpy().copy()
            out["hist"] = self.hist.cpu().numpy().astype(np.int64)
            out["hist_centre"] = self.hist_centre.cpu().numpy().astype(np.int64)
            if self.hist_neuron is not None:
                out["hist_neuron"] = self.hist_neuron.cpu().numpy().astype(np.int64)
        return out

    def calibration_state_dict(self) -> dict[str, np.ndarray]:
        """:meth:`state_dict` with the histograms zeroed (``n = 0``): the frozen
        standardisation, for other shards to start from."""
        state = self.state_dict()
        for key in ("hist", "hist_centre", "hist_neuron"):
            if key in state:
                state[key] = np.zeros_like(state[key])
        state["n"] = np.asarray(0, np.int64)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self._pending = []
        self.n = int(state["n"])
        if "mu" not in state:
            self.mu = self.inv_sigma = None
            return
        dev = self.device or torch.device("cpu")
        self.device = dev
        self.set_calibration(torch.as_tensor(state["mu"]), torch.as_tensor(state["inv_sigma"]))
        assert self.hist is not None and self.hist_centre is not None
        self.hist.copy_(torch.as_tensor(state["hist"]))
        self.hist_centre.copy_(torch.as_tensor(state["hist_centre"]))
        if self.hist_neuron is not None:
            self.hist_neuron.copy_(torch.as_tensor(state["hist_neuron"]))

    def config(self) -> dict[str, Any]:
        return {"layout": self.layout.to_config(), "groups": [list(g) for g in self.groups],
                "n_bins": self.n_bins, "z_range": self.z_range,
                "per_position": self.per_position}

    # -- results --------------------------------------------------------------------------
    def result(self) -> xr.Dataset:
        if not self.calibrated:
            raise NotCalibratedError(
                "NeuronHistograms.result() needs calibrate() / end_calibration() first")
        assert self.mu is not None and self.inv_sigma is not None
        layers, subs = group_axes(self.groups)
        c, p, k = self.layout.d_model, self.layout.n_positions, self.n_bins + 2
        inner = np.linspace(-self.z_range, self.z_range, self.n_bins + 1)
        lower = np.concatenate([[-np.inf], inner])
        upper = np.concatenate([inner, [np.inf]])
        centre = np.concatenate([[inner[0]], (inner[:-1] + inner[1:]) / 2, [inner[-1]]])

        def place(arr: np.ndarray, tail: tuple[int, ...], dtype: Any, fill: Any) -> np.ndarray:
            full = np.full((len(layers), len(subs), *tail), fill, dtype=dtype)
            for gi, (layer, s) in enumerate(self.groups):
                full[layers.index(layer), subs.index(s)] = arr[gi]
            return full

        hist = place(self.hist.cpu().numpy(), (c, k), np.int64, 0)
        hc = place(self.hist_centre.cpu().numpy(), (c, k), np.int64, 0)
        inv = self.inv_sigma.cpu().numpy().astype(np.float64)
        with np.errstate(divide="ignore"):
            sd = np.where(inv > 0, 1.0 / inv, 0.0)
        mu = place(self.mu.cpu().numpy().transpose(0, 2, 1), (c, p), np.float32, np.nan)
        sdf = place(sd.transpose(0, 2, 1), (c, p), np.float32, np.nan)
        hattrs = {"units": "count", "description": "standardised activations "
                  "z = (x - calibration_mean) / calibration_std; bin 0 and the last bin are "
                  "the open underflow / overflow bins"}
        data_vars: dict[str, Any] = {
            "histogram": (("layer", "sublayer", "channel", "bin"), hist,
                          {"long_name": "activation histogram, all positions pooled", **hattrs}),
            "histogram_centre": (("layer", "sublayer", "channel", "bin"), hc,
                                 {"long_name": "activation histogram of the central neuron",
                                  **hattrs}),
            "calibration_mean": (("layer", "sublayer", "channel", "position"), mu,
                                 {"long_name": "calibration mean", "units": "activation"}),
            "calibration_std": (("layer", "sublayer", "channel", "position"), sdf,
                                {"long_name": "calibration standard deviation",
                                 "units": "activation"}),
        }
        if self.hist_neuron is not None:
            hn = place(self.hist_neuron.cpu().numpy().transpose(0, 2, 1, 3), (c, p, k),
                       np.int64, 0)
            data_vars["histogram_neuron"] = (("layer", "sublayer", "channel", "position", "bin"),
                                             hn, {"long_name": "activation histogram per neuron",
                                                  **hattrs})
        coords = {"layer": ("layer", np.asarray(layers), LAYER_ATTRS),
                  "sublayer": ("sublayer", np.asarray(subs), SUBLAYER_ATTRS),
                  "channel": ("channel", np.arange(c), {"long_name": "channel"}),
                  "bin": ("bin", np.arange(k), {"long_name": "histogram bin"}),
                  "bin_lower": ("bin", lower, {"long_name": "bin lower edge",
                                               "units": "standard deviations"}),
                  "bin_upper": ("bin", upper, {"long_name": "bin upper edge",
                                               "units": "standard deviations"}),
                  "z": ("bin", centre, {"long_name": "bin centre (outer bins: their finite edge)",
                                        "units": "standard deviations"}),
                  **position_coords(self.layout)}
        ds = xr.Dataset(data_vars, coords=coords)
        ds.attrs.update(layout_attrs(self.layout))
        ds.attrs.update({"statistic": "standardised activation histograms",
                         "groups": groups_attr(self.groups),
                         "n_images": int(self.n), "n_bins": self.n_bins,
                         "z_range": self.z_range})
        return ds

