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


def combine_results(datasets: Sequence[xr.Dataset]) -> xr.Dataset:
    """Combine the Datasets of several passes over disjoint (layer, sublayer) groups.

    The result covers the union of layers and sublayers; each variable's values for a
    group come from the pass that measured it (the ``groups`` attribute), others keep
    their fill (NaN, 0 for counts, -1 for ``kept_channel``). Dtypes are preserved.
    Attributes come from the first Dataset; ``n_images`` must agree.
    """
    if not datasets:
        raise ResultsError("nothing to combine")
    n = {int(ds.attrs.get("n_images", -1)) for ds in datasets}
    if len(n) > 1:
        raise ResultsError(f"passes saw different numbers of images: {sorted(n)}")
    measured = [parse_groups_attr(ds.attrs.get("groups", "")) for ds in datasets]
    flat = [g for gs in measured for g in gs]
    if len(set(flat)) != len(flat):
        raise ResultsError("passes overlap: a (layer, sublayer) group was measured twice")
    layers = sorted({g[0] for g in flat})
    subs = [s for s in ("attn", "mlp") if s in {g[1] for g in flat}]
    first = datasets[0]
    coords = {k: v for k, v in first.coords.items() if k not in ("layer", "sublayer")}
    coords["layer"] = xr.DataArray(np.asarray(layers), dims="layer", attrs=first.layer.attrs)
    coords["sublayer"] = xr.DataArray(np.asarray(subs), dims="sublayer",
                                      attrs=first.sublayer.attrs)
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
                                   if k in ("zlib", "complevel")})
    out.attrs = dict(first.attrs)
    out.attrs["groups"] = groups_attr([(layer, s) for layer in layers for s in subs
                                       if (layer, s) in set(flat)])
    return out
