"""Save, load and summarise ``analyze_qk`` Datasets (netCDF via h5netcdf)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from vitprobe.netcdf import load_dataset, save_dataset

__all__ = ["load_qk", "save_qk", "summary_table"]

_REQUIRED = ("eig_sym", "lambda_asym", "singular_value", "positive_share", "symmetry")


def save_qk(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` to ``path`` (netCDF4/HDF5, ``engine="h5netcdf"``); returns the path."""
    return save_dataset(ds, path)


def load_qk(path: str | Path) -> xr.Dataset:
    """Read a Dataset written by :func:`save_qk`; ResultsError if missing or not a qk file."""
    return load_dataset(path, kind="qk", required=_REQUIRED)


def summary_table(ds: xr.Dataset) -> str:
    """Per-layer table (layers 1-based): head means of the main measures, per model."""
    cols = [
        ("pos.share", "positive_share"),
        ("2s-1 head", "symmetry"),
        ("2s-1 layer", "layer_symmetry"),
        ("w.cos", "weighted_cosine"),
        ("asym/sym", "asym_sym_ratio"),
        ("eff.rank", "effective_rank"),
        ("st.rank", "stable_rank"),
        (f"E(top{ds.attrs.get('top_k', '')})", "energy_top_k"),
    ]
    lines = []
    opts = f"fold_ln={ds.attrs.get('fold_ln', 0)} scale={ds.attrs.get('scale', 0)}"
    for label in ds["model"].values:
        sub = ds.sel(model=label)
        spec = str(sub["model_spec"].values) if "model_spec" in sub.coords else ""
        lines.append(f"[{label}] {spec}  ({opts}; head means unless 'layer')")
        lines.append(f"{'layer':>5} " + " ".join(f"{name:>10}" for name, _ in cols))
        for i in range(sub.sizes["layer"]):
            vals = []
            for _, var in cols:
                x = sub[var].isel(layer=i)
                vals.append(float(np.nanmean(x.values)) if x.size else float("nan"))
            lines.append(f"{i + 1:>5} " + " ".join(f"{val:>10.3f}" for val in vals))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
