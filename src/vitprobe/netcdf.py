"""Saving and loading result Datasets: one netCDF convention for every analysis.

Files are netCDF4/HDF5 written with ``engine="h5netcdf"`` (encoded in memory, so a
full disk is an ordinary ``OSError``), atomically (temporary name in the same folder,
then rename), with attributes reduced to what netCDF can hold (strings, numbers, 1-D
numeric arrays). They are read with the netCDF C library (``engine="netcdf4"``): the
same values, dtypes and attributes (tested), and it opens a file about ten times faster
than h5netcdf, which resolves every variable's dimensions through h5py (4.1-4.5 s
against 0.5 s for the seven files of the default run, ``benchmarks/report_speed.py``).
Loading reads the whole file into memory and closes it; :func:`open_lazily` reads
arrays on first use. Both say clearly when a file is missing, unreadable, or not the
kind of result the caller expects.
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

__all__ = ["READ_ENGINE", "WRITE_ENGINE", "clean_attrs", "load_dataset", "open_lazily",
           "save_dataset"]

#: xarray engines that write and read result files (module docstring)
WRITE_ENGINE = "h5netcdf"
READ_ENGINE = "netcdf4"


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
    """Write ``ds`` to ``path`` atomically (:data:`WRITE_ENGINE`); returns the path.

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
    data = ds.to_netcdf(engine=WRITE_ENGINE)
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
    with open_lazily(path, kind=kind) as ds:
        try:
            ds.load()
        except (OSError, ValueError, RuntimeError) as err:  # netCDF-C: RuntimeError
            raise ResultsError(f"cannot read {path}: {err}") from err
    missing = [v for v in required if v not in ds]
    if missing:
        raise ResultsError(f"{path} is not a vitprobe {kind} result (missing {missing})")
    return ds


def open_lazily(path: str | os.PathLike, *, kind: str = "vitprobe") -> xr.Dataset:
    """Open a result file without reading its arrays (each is read on first use); close
    it when done (or use it as a context manager).

    Raises:
        ResultsError: the file is missing (named as ``kind`` results), unreadable or
            not netCDF.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"no {kind} results at {path}")
    try:
        return xr.open_dataset(path, engine=READ_ENGINE)
    except (OSError, ValueError, RuntimeError) as err:
        raise ResultsError(f"cannot read {path}: {err}") from err
