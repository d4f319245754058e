"""vitprobe.netcdf: results written with h5netcdf read back identically (netCDF-C), lazily
where asked, and bad files named in a ResultsError."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from vitprobe.errors import ResultsError
from vitprobe.netcdf import READ_ENGINE, WRITE_ENGINE, load_dataset, open_lazily, save_dataset


def _result_like() -> xr.Dataset:
    """The kinds of variables result files hold: float64 with NaN, int64 counts, int32
    counts compressed, a 0-d value, string and multi-dimensional coordinates, and
    attributes of every kind ``clean_attrs`` turns into netCDF ones."""
    rng = np.random.default_rng(0)
    mi = rng.normal(size=(2, 3, 4))
    mi[0, 1, 2] = np.nan
    ds = xr.Dataset(
        {
            "mi": (("model", "layer", "position"), mi, {"long_name": "MI", "units": "bits"}),
            "counts": (("model", "layer", "bin"), rng.integers(0, 2**40, (2, 3, 5))),
            "joint": (("model", "layer", "bin_x", "bin_y"),
                      rng.integers(0, 50, (2, 3, 8, 8)).astype(np.int32)),
            "null_level": ((), 0.25),
        },
        coords={"model": ["trained", "random-init"], "layer": np.arange(3),
                "row": (("position",), np.array([0, 0, 1, 1]))},
        attrs={"analysis": "mi", "pretrained": True, "none": None, "bins": [4, 8],
               "names": ["a", "b"], "config": {"seed": 0}, "text": "über 90°"},
    )
    ds["joint"].encoding.update(zlib=True, complevel=4)
    return ds


def test_written_results_read_back_identically_with_either_engine(tmp_path):
    path = save_dataset(_result_like(), tmp_path / "r.nc")
    ours = load_dataset(path)
    theirs = xr.load_dataset(path, engine=WRITE_ENGINE)
    xr.testing.assert_identical(ours, theirs)
    assert ours["counts"].dtype == np.int64 and ours["joint"].dtype == np.int32
    assert ours.attrs["pretrained"] == 1 and ours.attrs["none"] == "none"
    assert ours.attrs["text"] == "über 90°" and list(ours.attrs["bins"]) == [4, 8]
    np.testing.assert_array_equal(ours["mi"].values, _result_like()["mi"].values)
    assert list(ours["model"].values) == ["trained", "random-init"]


def test_compression_survives_a_load_and_save(tmp_path):
    # combine_results re-saves loaded passes: their compressed counts stay compressed
    first = save_dataset(_result_like(), tmp_path / "a.nc")
    again = save_dataset(load_dataset(first), tmp_path / "b.nc")
    with open_lazily(again) as ds:
        assert ds["joint"].encoding.get("zlib") is True
        assert not ds["mi"].encoding.get("zlib")


def test_open_lazily_reads_arrays_on_first_use(tmp_path):
    path = save_dataset(_result_like(), tmp_path / "r.nc")
    with open_lazily(path) as ds:
        assert ds.encoding["source"] == str(path)
        assert not ds["joint"].variable._in_memory
        assert int(ds["joint"].sum()) == int(_result_like()["joint"].sum())
    assert READ_ENGINE != WRITE_ENGINE  # the fast reader is in use


@pytest.mark.parametrize("reader", [load_dataset, open_lazily])
def test_bad_files_are_named(tmp_path, reader):
    with pytest.raises(ResultsError, match=r"no .*results.* at .*missing\.nc"):
        reader(tmp_path / "missing.nc")
    text = tmp_path / "text.nc"
    text.write_text("not netCDF")
    with pytest.raises(ResultsError, match=r"cannot read .*text\.nc"):
        reader(text)
    whole = save_dataset(_result_like(), tmp_path / "whole.nc").read_bytes()
    cut = tmp_path / "cut.nc"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ResultsError, match=r"cannot read .*cut\.nc"):
        with reader(cut) as ds:  # a truncated file fails on opening or on reading
            ds.load()
