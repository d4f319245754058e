"""Saving and loading result Datasets: one netCDF convention for every analysis.

Files are netCDF4/HDF5 written with ``engine="h5netcdf"``, atomically (temporary
name in the same folder, then rename), with attributes reduced to what netCDF can
hold (strings, numbers, 1-D numeric arrays). Loading reads the whole file into
memory and closes it, and says clearly when a file is missing, unreadable, or not
the kind of result the caller expects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from vitprobe.cache import atomic_write
from vitprobe.errors import ResultsError

__all__ = ["clean_attrs", "load_dataset", "save_dataset"]


def clean_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as netCDF can store them: None -> "none", bool -> int, dict -> JSON."""
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None:
            value = "none"
        elif isinstance(value, bool | np.bool_):
            value = int(value)
        elif isinstance(value, dict):
            value = json.dumps(value, default=str)
        elif isinstance(value, list | tuple):
            if all(isinstance(v, str) for v in value):
                value = ", ".join(value)
            elif all(isinstance(v, int | float | np.number) and not isinstance(v, bool)
                     for v in value):
                value = np.asarray(value)
            else:
                value = json.dumps(value, default=str)
        elif not isinstance(value, str | int | float | np.number | np.ndarray):
            value = str(value)
        out[key] = value
    return out


def save_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``path`` atomically (h5netcdf engine); returns the path.

    Variables whose ``encoding`` asks for compression (``zlib``) keep it.
    """
    path = Path(path)
    ds = ds.copy()
    ds.attrs = clean_attrs(dict(ds.attrs))
    for name in ds.variables:
        ds[name].attrs = clean_attrs(dict(ds[name].attrs))
    # encoded in memory, then written with a plain file write: a full disk then fails
    # as an ordinary OSError; HDF5 writing to a full disk itself leaves a file open that
    # crashes the interpreter at exit
    data = ds.to_netcdf(engine="h5netcdf")
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return path


def load_dataset(path: str | os.PathLike, *, kind: str = "vitprobe",
                 required: Iterable[str] = ()) -> xr.Dataset:
    """Read a saved Dataset fully into memory.

    Raises:
        ResultsError: the file is missing, unreadable, or lacks a ``required`` variable
            (then it is not a ``kind`` result).
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"no {kind} results at {path}")
    try:
        ds = xr.load_dataset(path, engine="h5netcdf")
    except (OSError, ValueError) as err:
        raise ResultsError(f"cannot read {path}: {err}") from err
    missing = [v for v in required if v not in ds]
    if missing:
        raise ResultsError(f"{path} is not a vitprobe {kind} result (missing {missing})")
    return ds
