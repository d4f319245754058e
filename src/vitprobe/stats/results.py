"""Saving, loading and combining the neuron-statistics Datasets (netCDF via h5netcdf)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from vitprobe.errors import ResultsError
from vitprobe.netcdf import load_dataset, save_dataset
from vitprobe.stats._common import groups_attr, parse_groups_attr
from vitprobe.stats.layout import SUBLAYERS

__all__ = ["combine_results", "open_results", "save_results"]


def save_results(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to netCDF with ``engine="h5netcdf"`` atomically (temp file + rename).

    Variables whose ``encoding`` asks for compression (the edges and joint counts)
    are gzip-compressed.
    """
    return save_dataset(ds, path)


def open_results(path: str | os.PathLike) -> xr.Dataset:
    """Load a saved Dataset fully into memory (the file is closed afterwards)."""
    return load_dataset(path, kind="statistics")


def _fill(dtype: np.dtype, name: str) -> object:
    if np.issubdtype(dtype, np.floating):
        return np.nan
    return -1 if name == "kept_channel" else 0


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def combine_results(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    """Combine the Datasets of several passes over disjoint (layer, sublayer) groups.

    Any split works: a layer's two sublayers may come from different passes, a pass
    may hold one group or many, in any order. The result covers the union of layers and
    sublayers, sorted; each variable's values for a group come from the pass that
    measured it (the ``groups`` attribute), others keep their fill (NaN, 0 for counts,
    -1 for ``kept_channel``), so a complete split equals the single-pass result value
    for value. Dtypes, variable attributes and compression settings are kept; the
    Dataset's attributes are the passes' (which must agree) with ``groups`` listing the
    union.

    Raises
    ------
    ResultsError
        Nothing to combine, a group measured twice, or passes that disagree on an
        attribute other than ``groups`` (``n_images``, ``bins``, ...: not one run).
    """
    if not datasets:
        raise ResultsError("nothing to combine")
    n = {int(ds.attrs.get("n_images", -1)) for ds in datasets}
    if len(n) > 1:
        raise ResultsError(f"passes saw different numbers of images: {sorted(n)}")
    first = datasets[0]
    for i, ds in enumerate(datasets[1:], start=2):
        keys = (set(first.attrs) | set(ds.attrs)) - {"groups"}
        differ = sorted(k for k in keys if not _same(first.attrs.get(k), ds.attrs.get(k)))
        if differ:
            raise ResultsError(f"pass {i} disagrees with pass 1 on {differ}: not passes of "
                               "one run")
        if set(ds.data_vars) != set(first.data_vars):
            raise ResultsError(f"pass {i} holds other variables than pass 1: "
                               f"{sorted(set(ds.data_vars) ^ set(first.data_vars))}")
    measured = [parse_groups_attr(ds.attrs.get("groups", "")) for ds in datasets]
    flat = [g for gs in measured for g in gs]
    if len(set(flat)) != len(flat):
        raise ResultsError("passes overlap: a (layer, sublayer) group was measured twice")
    layers = sorted({g[0] for g in flat})
    seen = {g[1] for g in flat}
    subs = [s for s in SUBLAYERS if s in seen] + sorted(seen - set(SUBLAYERS))
    coords = {k: v for k, v in first.coords.items() if k not in ("layer", "sublayer")}
    coords["layer"] = xr.DataArray(np.asarray(layers, dtype=first.layer.dtype), dims="layer",
                                   attrs=first.layer.attrs)
    coords["sublayer"] = xr.DataArray(np.asarray(subs, dtype=first.sublayer.dtype),
                                      dims="sublayer", attrs=first.sublayer.attrs)
    out = xr.Dataset(coords=coords)
    for name, var in first.data_vars.items():
        if "layer" not in var.dims or "sublayer" not in var.dims:
            out[name] = var
            continue
        shape = [len(layers) if d == "layer" else len(subs) if d == "sublayer"
                 else var.sizes[d] for d in var.dims]
        arr = np.full(shape, _fill(var.dtype, name), dtype=var.dtype)
        li_ax, si_ax = var.dims.index("layer"), var.dims.index("sublayer")
        for ds, gs in zip(datasets, measured, strict=True):
            src = ds[name].transpose(*var.dims).values
            for layer, s in gs:
                idx_dst = [slice(None)] * len(shape)
                idx_src = [slice(None)] * len(shape)
                idx_dst[li_ax], idx_dst[si_ax] = layers.index(layer), subs.index(s)
                idx_src[li_ax] = int(np.flatnonzero(ds.layer.values == layer)[0])
                idx_src[si_ax] = int(np.flatnonzero(ds.sublayer.values == s)[0])
                arr[tuple(idx_dst)] = src[tuple(idx_src)]
        out[name] = xr.DataArray(arr, dims=var.dims, attrs=var.attrs)
        out[name].encoding.update({k: v for k, v in var.encoding.items()
                                   if k in ("zlib", "complevel", "shuffle")})
    out = out[list(first.data_vars)]  # the passes' variable order
    out.attrs = dict(first.attrs)
    measured_set = set(flat)
    out.attrs["groups"] = groups_attr([(layer, s) for layer in layers for s in subs
                                       if (layer, s) in measured_set])
    return out
