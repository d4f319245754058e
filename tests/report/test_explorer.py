"""The explorer's data equal the results files; its page fragment is self-contained."""

from __future__ import annotations

import base64
import json
import re
import zlib

import numpy as np
import pytest
import xarray as xr

from vitprobe.report import explorer as ex
from vitprobe.report.builder import open_results
from vitprobe.runfolder import read_manifest


def _slice(run, name: str, model: int = 0) -> xr.Dataset:
    with xr.open_dataset(run / "results" / f"{name}.nc", engine="h5netcdf") as ds:
        ds = ds.load()
    return ds.isel(model=model) if "model" in ds.dims else ds


def _decode(value):
    """The inverse of explorer._encode, as the page's JavaScript does it."""
    if isinstance(value, dict) and {"a", "s", "z"} <= set(value):
        dtype = {"f2": "<f2", "f4": "<f4", "f8": "<f8", "u4": "<u4", "i4": "<i4",
                 "u1": "u1"}[value["a"]]
        raw = zlib.decompress(base64.b64decode(value["z"]))
        return np.frombuffer(raw, dtype=dtype).reshape(value["s"])
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def test_log_quantize_round_trip_within_documented_error():
    rng = np.random.default_rng(0)
    share = 10 ** rng.uniform(-8, 0, 10_000)
    back = ex.log_unquantize(ex.log_quantize(share))
    assert np.max(np.abs(back / share - 1)) <= 10 ** (4 / 254) - 1 + 1e-12  # 3.7 %
    assert ex.log_quantize(np.array([0.0, np.nan, 1.0])).tolist() == [0, 0, 255]
    assert ex.log_unquantize(np.array([0])).tolist() == [0.0]


@pytest.mark.slow
def test_neuron_curves_average_to_the_files_mi_vs_distance(trained_run):
    mi = _slice(trained_run, "mi")
    curves = ex.neuron_mi_curves(mi)
    assert curves.dims == ("layer", "sublayer", "channel", "distance")
    # mi_vs_distance is, per its own description, the per-channel curve averaged over channels
    np.testing.assert_allclose(curves.mean("channel").values, mi["mi_vs_distance"].values,
                               rtol=1e-5, equal_nan=True)
    # one neuron by hand: the positions at rounded distance 3 of channel 5, layer 2 MLP
    at3 = mi["position_distance_bin"].values == 3
    expected = mi["mi"].sel(layer=2, sublayer="mlp").isel(channel=5).values[at3].mean()
    assert curves.sel(layer=2, sublayer="mlp", distance=3).isel(channel=5) == pytest.approx(
        expected, rel=1e-6)
    assert np.isnan(curves.sel(distance=0)).all()


@pytest.mark.slow
def test_embedded_data_equal_the_files(trained_run):
    datasets = open_results(trained_run)
    manifest = read_manifest(trained_run)
    fragment = ex.explorer_html(datasets, manifest)
    payload = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>',
                        fragment, re.S).group(1)
    models = _decode(json.loads(payload.replace("<\\/", "</")))
    assert [m["label"] for m in models] == ["imgfocus-dinov2-s14 (trained)",
                                            "imgfocus-dinov2-s14 (random-init)"]
    for k, model in enumerate(models):
        mi, hist = _slice(trained_run, "mi", k), _slice(trained_run, "histograms", k)
        qk, ang = _slice(trained_run, "qk", k), _slice(trained_run, "angles", k)
        n, h = model["neurons"], model["heads"]
        assert n["channels"] == list(range(384)) and n["layers"] == list(range(12))
        np.testing.assert_allclose(n["mi"]["curve"], ex.neuron_mi_curves(mi).values,
                                   rtol=1e-3, atol=1e-4, equal_nan=True)  # float16
        np.testing.assert_allclose(n["mi"]["layer_mean"], mi["mi_vs_distance"].values,
                                   rtol=1e-6, equal_nan=True)
        counts = hist["histogram"].values.astype(np.float64)
        inner = np.isfinite(hist["bin_lower"].values) & np.isfinite(hist["bin_upper"].values)
        share = counts[..., inner] / counts.sum(-1, keepdims=True)
        back = ex.log_unquantize(n["hist"]["share"])
        np.testing.assert_allclose(back, share, rtol=0.038, atol=1e-8)
        assert ((back > 0) == (share > 0)).all()
        np.testing.assert_array_equal(n["hist"]["total"], counts.sum(-1))
        kurt = np.nanmedian(_slice(trained_run, "moments", k)["excess_kurtosis"].values, -1)
        np.testing.assert_allclose(n["kurtosis"], kurt, rtol=1e-3, atol=1e-3)
        kept = mi["kept_channel"].values
        np.testing.assert_array_equal(n["bowtie"]["kept"], kept)
        d1 = n["bowtie"]["distances"].index(1)
        pos = ex.bowtie_positions(mi)[d1][1]
        np.testing.assert_array_equal(n["bowtie"]["counts"][:, :, :, d1],
                                      mi["joint_counts"].sel(position=pos).values)
        np.testing.assert_allclose(n["bowtie"]["x_edges"][..., 1:-1][3, 1, 0],
                                   mi["edges"].sel(layer=3, sublayer="mlp",
                                                   channel=int(kept[3, 1, 0])).values[
                                       int(mi.attrs["centre_row"]) * int(mi.attrs["grid_cols"])
                                       + int(mi.attrs["centre_col"])])
        for var in ("eig_sym", "lambda_asym", "singular_value"):
            np.testing.assert_allclose(h["qk"][var], qk[var].values, rtol=1e-6)
        for var in ex.QK_MEASURES:
            np.testing.assert_allclose(h["qk"]["measures"][var], qk[var].values, rtol=1e-6)
        np.testing.assert_allclose(h["angles"]["attention"], ang["attention_density"].values,
                                   rtol=1e-6)
        np.testing.assert_allclose(h["angles"]["measures"]["angle_shift"],
                                   ang["angle_shift"].values, rtol=1e-6, equal_nan=True)


@pytest.mark.slow
def test_report_holds_the_explorer_offline(trained_run):
    page = (trained_run / "report.html").read_text()
    assert page.count('id="explorer"') == 1 and "explorer-data" in page
    # every static figure is still there for print, and nothing is fetched from elsewhere
    assert page.count("data:image/png;base64,") >= 8
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "@media print { .explorer { display: none; } }" in page
    # size: the explorer's share of the page for this run (12 layers x 384 channels, control)
    size = len(ex.explorer_html(open_results(trained_run), read_manifest(trained_run)))
    assert size < 2_500_000, size
