"""The labelled MI result of a :class:`~vitprobe.stats.JointCounts` accumulator.

Variables (dims in brackets; ``nats`` throughout):

* ``mi`` [layer, sublayer, channel, position]: MI between the channel's central neuron
  and the same channel at each position (NaN at the centre itself, whose "MI" would be
  the entropy ``log B``).
* ``mi_half`` [half, ...]: the same from even / odd images (split-half).
* ``mi_vs_distance`` [layer, sublayer, distance]: per channel, MI averaged over the
  positions at each rounded distance, then averaged over channels;
  ``mi_vs_distance_channel_std``: the spread (standard deviation) across channels;
  ``mi_vs_distance_stderr``: the split-half standard error ``|I_even - I_odd| / 2`` of
  the curve (two halves of N/2 images: var(I_N) ~ var(I_{N/2}) / 2 ~ (I_e - I_o)^2 / 4);
  ``mi_vs_distance_half``; ``mi_vs_distance_miller_madow``: the curve without the
  bin-width extrapolation.
* ``mi_null`` [layer, sublayer, null_channel, position], ``mi_null_vs_distance``,
  ``mi_null_level`` / ``mi_null_std`` [layer, sublayer]: the shuffled-pair null.
* ``edges`` [layer, sublayer, channel, position, edge], ``calibration_min``,
  ``calibration_max``: the calibration edges and each neuron's range over the
  calibration reservoir (activation units).
* ``joint_counts`` [layer, sublayer, kept, position, bin_x, bin_y] with
  ``kept_channel`` [layer, sublayer, kept]: full-data counts of a few channels per
  group (by default the two with the highest MI at distance 1), for bowtie plots.
* With cross-channel pairs: ``cross_mi`` [layer, sublayer, pair], ``cross_counts``,
  ``cross_mi_vs_distance``.

``distance`` is the Euclidean distance from the centre patch rounded to the nearest
integer (patch units); ``position_distance`` keeps the exact value per position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from vitprobe.errors import InsufficientDataError, NotCalibratedError
from vitprobe.stats._common import (
    LAYER_ATTRS,
    SUBLAYER_ATTRS,
    group_axes,
    groups_attr,
    layout_attrs,
    position_coords,
)
from vitprobe.stats.mi import (
    KAPPA,
    mi_from_counts,
    miller_madow_fine_coarse,
    miller_madow_halves_fine_coarse,
)
from vitprobe.stats.nanreduce import nanmean, nanstd

if TYPE_CHECKING:
    from vitprobe.stats.joint import JointCounts

__all__ = ["ESTIMATOR_DOC", "joint_dataset"]

ESTIMATOR_DOC = ("quantile-binned plug-in mutual information with per-neuron equal-frequency "
                 "bins fixed from a calibration reservoir, Miller-Madow corrected (Miller "
                 "1955; Panzeri et al. 2007), extrapolated in bin width as "
                 "I_B + 0.85 (I_B - I_{B/2}); unclipped")
REFERENCES = ("Kraskov et al. 2004 Phys Rev E 69:066138; Miller 1955; Panzeri et al. 2007 "
              "J Neurophysiol 98:1064; Ince et al. 2017 Hum Brain Mapp 38:1541; Czyz et al. "
              "2023 NeurIPS; Schwartz & Simoncelli 2001 Nat Neurosci 4:819")

_CHUNK_CELLS = 1 << 24  # joint cells per MI chunk (~128 MB of int64)


def _mi_both(c: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(extrapolated-or-requested MI, Miller-Madow MI) of int counts (..., B, B)."""
    if method == "extrapolated":
        mm, coarse = miller_madow_fine_coarse(c)
        return mm + KAPPA * (mm - coarse), mm
    mm = mi_from_counts(c, method="miller-madow")
    if method == "miller-madow":
        return mm, mm
    return mi_from_counts(c, method=method), mm


def _curve(mi_pc: np.ndarray, dbin: np.ndarray, nd: int) -> np.ndarray:
    """(..., P, C) MI -> (..., C, D): mean over the positions at each rounded distance."""
    out = np.empty((*mi_pc.shape[:-2], mi_pc.shape[-1], nd))
    for d in range(nd):  # a distance without values (none there, or all NaN) gives NaN
        out[..., d] = nanmean(mi_pc[..., dbin == d, :], axis=-2)
    return out


def joint_dataset(acc: JointCounts, *, keep_channels: int | Sequence[int] = 2,
                  method: str = "extrapolated") -> xr.Dataset:
    """Build the MI :class:`xarray.Dataset` (variables: module docstring)."""
    # all-NaN slices (the centre's distance 0) are expected: the means below return NaN
    # there without a warning (errstate, not catch_warnings: results run on threads)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _joint_dataset(acc, keep_channels, method)


def _joint_dataset(acc: JointCounts, keep_channels: int | Sequence[int],
                   method: str) -> xr.Dataset:
    if not acc.calibrated:
        raise NotCalibratedError("JointCounts.result() needs calibrate() / end_calibration() first")
    if acc.n == 0:
        raise InsufficientDataError("no data accumulated")
    lay = acc.layout
    layers, subs = group_axes(acc.groups)
    nl, ns = len(layers), len(subs)
    p, c, b, h = lay.n_positions, acc.channels.size, acc.bins, acc.n_halves
    cp = lay.centre_position
    dbin = lay.distance_bin
    nd = int(dbin.max()) + 1
    cn = acc.null_idx.size
    k = acc.cross.shape[0]
    if isinstance(keep_channels, int):
        nkeep = min(keep_channels, c)
        explicit = None
    else:
        explicit = [int(np.flatnonzero(acc.channels == ch)[0]) for ch in keep_channels]
        nkeep = len(explicit)

    mi = np.full((nl, ns, c, p), np.nan, np.float32)
    mi_half = np.full((h, nl, ns, c, p), np.nan, np.float32)
    curve = np.full((nl, ns, nd), np.nan)
    curve_std = np.full((nl, ns, nd), np.nan)
    curve_half = np.full((h, nl, ns, nd), np.nan)
    curve_mm = np.full((nl, ns, nd), np.nan)
    mi_null = np.full((nl, ns, cn, p), np.nan, np.float32)
    null_curve = np.full((nl, ns, nd), np.nan)
    null_level = np.full((nl, ns), np.nan)
    null_std = np.full((nl, ns), np.nan)
    edges = np.full((nl, ns, c, p, b - 1), np.nan, np.float32)
    vmin = np.full((nl, ns, c, p), np.nan, np.float32)
    vmax = np.full((nl, ns, c, p), np.nan, np.float32)
    kept = np.full((nl, ns, nkeep), -1, np.int64)
    kept_counts = np.zeros((nl, ns, nkeep, p, b, b), np.int32)
    cross_mi = np.full((nl, ns, k), np.nan, np.float32)
    cross_half = np.full((h, nl, ns, k), np.nan, np.float32)
    cross_counts = np.zeros((nl, ns, k, b, b), np.int32)
    cross_curve = np.full((nl, ns, nd), np.nan)

    step = max(1, _CHUNK_CELLS // (h * c * b * b))
    assert acc.edges is not None and acc.vmin is not None and acc.vmax is not None
    for gi, (layer, s) in enumerate(acc.groups):
        li, si = layers.index(layer), subs.index(s)
        counts = acc.canonical(gi)  # (H, P, C, B_x, B_y) view
        if method == "extrapolated":  # the default: every table read once, in place
            mm, coarse, fine_h, coarse_h = miller_madow_halves_fine_coarse(
                counts.cpu().numpy())
            full = mm + KAPPA * (mm - coarse)
            halves = fine_h + KAPPA * (fine_h - coarse_h)
        else:
            full, mm, halves = np.empty((p, c)), np.empty((p, c)), np.empty((h, p, c))
            for p0 in range(0, p, step):
                cc = counts[:, p0 : p0 + step].cpu().numpy().astype(np.int64)
                tot = cc.sum(0)
                full[p0 : p0 + step], mm[p0 : p0 + step] = _mi_both(tot, method)
                if h == 2:
                    for hh in range(2):
                        halves[hh, p0 : p0 + step] = _mi_both(cc[hh], method)[0]
        full[cp] = mm[cp] = np.nan
        halves[:, cp] = np.nan
        mi[li, si] = full.T
        curves = _curve(full, dbin, nd)  # (C, D)
        curve[li, si] = nanmean(curves, axis=0) if c else np.nan
        curve_std[li, si] = nanstd(curves, axis=0, ddof=1) if c > 1 else np.nan
        curve_mm[li, si] = nanmean(_curve(mm, dbin, nd), axis=0)
        if h == 2:
            mi_half[:, li, si] = halves.transpose(0, 2, 1)
            curve_half[:, li, si] = nanmean(_curve(halves, dbin, nd), axis=-2)
        else:
            mi_half[0, li, si] = full.T
            curve_half[0, li, si] = curve[li, si]
        if cn:
            nc = acc.null[gi].cpu().numpy().astype(np.int64).transpose(2, 0, 1, 3)
            nm, _ = _mi_both(nc, method)  # (P, Cn)
            mi_null[li, si] = nm.T
            null_curve[li, si] = nanmean(_curve(nm, dbin, nd), axis=0)
            null_level[li, si] = nanmean(nm)
            null_std[li, si] = nanstd(nm, ddof=1) if nm.size > 1 else np.nan
        edges[li, si] = acc.edges[gi].cpu().numpy().transpose(2, 1, 0)
        vmin[li, si] = acc.vmin[gi].cpu().numpy().T
        vmax[li, si] = acc.vmax[gi].cpu().numpy().T
        if nkeep:
            if explicit is None:
                ring = full[dbin == 1] if np.any(dbin == 1) else full
                score = np.nan_to_num(nanmean(ring, axis=0), nan=-np.inf)
                idx = np.argsort(-score, kind="stable")[:nkeep]
            else:
                idx = np.asarray(explicit)
            kept[li, si] = acc.channels[idx]
            sel = counts[:, :, torch.as_tensor(idx, device=counts.device)].to(torch.int32)
            # (H, P, nkeep, B_x, B_y) -> (nkeep, P, B_x, B_y)
            kept_counts[li, si] = sel.sum(0).cpu().numpy().transpose(1, 0, 2, 3)
        if k:
            cc = acc.cross_counts[gi].cpu().numpy().astype(np.int64)  # (H, K, B, B)
            cross_mi[li, si] = _mi_both(cc.sum(0), method)[0]
            for hh in range(h):
                cross_half[hh, li, si] = _mi_both(cc[hh], method)[0] if h == 2 \
                    else cross_mi[li, si]
            cross_counts[li, si] = cc.sum(0).astype(np.int32)
            cd = dbin[acc.cross[:, 2]]
            for d in range(nd):
                if np.any(cd == d):
                    cross_curve[li, si, d] = nanmean(cross_mi[li, si][cd == d])

    dims4 = ("layer", "sublayer", "channel", "position")
    curve_dims = ("layer", "sublayer", "distance")
    nats = {"units": "nats"}
    data_vars: dict[str, Any] = {
        "mi": (dims4, mi, {"long_name": "mutual information with the central neuron", **nats,
                           "description": "MI between the channel's central neuron and the "
                                          "same channel at this position; NaN at the centre"}),
        "mi_half": (("half", *dims4), mi_half,
                    {"long_name": "split-half mutual information", **nats,
                     "description": "mi from even / odd images of the stream"}),
        "mi_vs_distance": (curve_dims, curve,
                           {"long_name": "mean MI with the central neuron", **nats,
                            "description": "per channel, mean over the positions at each "
                                           "rounded distance; then mean over channels"}),
        "mi_vs_distance_channel_std": (curve_dims, curve_std,
                                       {"long_name": "spread of MI across channels", **nats,
                                        "description": "standard deviation across channels "
                                                       "of the per-channel curve"}),
        "mi_vs_distance_half": (("half", *curve_dims), curve_half,
                                {"long_name": "split-half mean MI", **nats}),
        "mi_vs_distance_stderr": (curve_dims, np.abs(curve_half[0] - curve_half[-1]) / 2
                                  if h == 2 else np.full_like(curve, np.nan),
                                  {"long_name": "split-half standard error of mean MI",
                                   **nats, "description": "|I_even - I_odd| / 2"}),
        "mi_vs_distance_miller_madow": (curve_dims, curve_mm,
                                        {"long_name": "mean MI, Miller-Madow only", **nats,
                                         "description": "without bin-width extrapolation"}),
        "mi_null": (("layer", "sublayer", "null_channel", "position"), mi_null,
                    {"long_name": "shuffled-pair null MI", **nats,
                     "description": "central neuron of image i vs position of image i+1"}),
        "mi_null_vs_distance": (curve_dims, null_curve,
                                {"long_name": "mean null MI", **nats}),
        "mi_null_level": (("layer", "sublayer"), null_level,
                          {"long_name": "null level (mean over null pairs)", **nats}),
        "mi_null_std": (("layer", "sublayer"), null_std,
                        {"long_name": "spread of null MI across pairs", **nats}),
        "edges": (("layer", "sublayer", "channel", "position", "edge"), edges,
                  {"long_name": "calibration bin edges", "units": "activation",
                   "description": "B-1 equal-frequency edges per neuron; bin id = number "
                                  "of edges <= activation"}),
        "calibration_min": (dims4, vmin, {"long_name": "minimum over the calibration images",
                                          "units": "activation"}),
        "calibration_max": (dims4, vmax, {"long_name": "maximum over the calibration images",
                                          "units": "activation"}),
        "kept_channel": (("layer", "sublayer", "kept"), kept,
                         {"long_name": "channels whose joint counts are kept",
                          "description": "-1 where the group is absent"}),
        "joint_counts": (("layer", "sublayer", "kept", "position", "bin_x", "bin_y"),
                         kept_counts, {"long_name": "joint counts, central neuron (x) vs "
                                                    "position (y)", "units": "count"}),
        "n_positions_at_distance": (("distance",), np.bincount(dbin, minlength=nd),
                                    {"long_name": "positions at each rounded distance",
                                     "units": "1"}),
    }
    coords: dict[str, Any] = {
        "layer": ("layer", np.asarray(layers), LAYER_ATTRS),
        "sublayer": ("sublayer", np.asarray(subs), SUBLAYER_ATTRS),
        "channel": ("channel", acc.channels, {"long_name": "channel"}),
        "half": ("half", np.asarray(["even", "odd"][:h] if h == 2 else ["all"]),
                 {"long_name": "image subset"}),
        "distance": ("distance", np.arange(nd),
                     {"long_name": "distance from the centre patch", "units": "patches",
                      "description": "Euclidean distance rounded to the nearest integer "
                                     "(half to even)"}),
        "null_channel": ("null_channel", acc.channels[acc.null_idx],
                         {"long_name": "channels with null counts"}),
        "edge": ("edge", np.arange(1, b), {"long_name": "edge index k (quantile k / B)"}),
        "bin_x": ("bin_x", np.arange(b), {"long_name": "central neuron's bin"}),
        "bin_y": ("bin_y", np.arange(b), {"long_name": "other neuron's bin"}),
        **position_coords(lay),
    }
    if k:
        data_vars["cross_mi"] = (("layer", "sublayer", "pair"), cross_mi,
                                 {"long_name": "cross-channel MI", **nats})
        data_vars["cross_mi_half"] = (("half", "layer", "sublayer", "pair"), cross_half,
                                      {"long_name": "split-half cross-channel MI", **nats})
        data_vars["cross_counts"] = (("layer", "sublayer", "pair", "bin_x", "bin_y"),
                                     cross_counts, {"long_name": "cross-channel joint counts",
                                                    "units": "count"})
        data_vars["cross_mi_vs_distance"] = (curve_dims, cross_curve,
                                             {"long_name": "mean cross-channel MI", **nats})
        coords["pair"] = ("pair", np.arange(k), {"long_name": "cross-channel pair"})
        coords["cross_channel_x"] = ("pair", acc.channels[acc.cross[:, 0]],
                                     {"long_name": "central neuron's channel"})
        coords["cross_channel_y"] = ("pair", acc.channels[acc.cross[:, 1]],
                                     {"long_name": "other neuron's channel"})
        coords["cross_position"] = ("pair", acc.cross[:, 2], {"long_name": "other position"})
        coords["cross_distance"] = ("pair", dbin[acc.cross[:, 2]],
                                    {"long_name": "rounded distance", "units": "patches"})
    ds = xr.Dataset(data_vars, coords=coords)
    # the float32 quantile edges compress by 4 % at a cost of ~2 s for DINOv2-S/14: stored
    # plain; the sparse integer counts shrink several-fold (byte shuffle + zlib)
    ds["joint_counts"].encoding.update({"zlib": True, "complevel": 4, "shuffle": True})
    ds.attrs.update(layout_attrs(lay))
    ds.attrs.update({
        "statistic": "mutual information of central neurons against distance",
        "groups": groups_attr(acc.groups),
        "estimator": ESTIMATOR_DOC if method == "extrapolated" else f"{method} (binned)",
        "method": method, "bins": b, "n_images": int(acc.n),
        # the extrapolation coefficient, so that readers need not import the estimator
        "kappa": KAPPA if method == "extrapolated" else 0.0,
        "samples_per_cell": acc.n / b**2,
        "calibration_images": int(acc.calibration_n),
        "n_null_pairs": int(acc.n_null), "split_half": int(acc.split_half),
        "null": "shuffled pairing: central neuron of image i with the position of image i+1",
        "distance_rounding": "Euclidean distance in patch units, rounded to nearest integer",
        "references": REFERENCES,
    })
    if acc.n / b**2 < 10:
        ds.attrs["warning"] = (f"only {acc.n / b**2:.1f} images per joint cell: the "
                               "Miller-Madow correction is unreliable below about 10")
    return ds

