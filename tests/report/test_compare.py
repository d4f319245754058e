"""`vitprobe compare`: numbers equal the runs' own files, incomparable runs refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from tests.report.helpers import copy_run
from vitprobe.cli import main
from vitprobe.errors import IncomparableRunsError, ResultsError, VitprobeError
from vitprobe.report.compare import (
    LAYERS_CSV,
    MI_CSV,
    compare_runs,
    layer_table,
    mi_table,
    write_comparison,
)

pytestmark = pytest.mark.slow


def _file(run, name: str, model: int = 0) -> xr.Dataset:
    """A results file read directly with xarray, one model's slice."""
    with xr.open_dataset(run / "results" / f"{name}.nc", engine="h5netcdf") as ds:
        ds = ds.load()
    return ds.isel(model=model) if "model" in ds.dims else ds


def _expected_columns(run, model: int = 0) -> dict[str, np.ndarray]:
    """The per-layer numbers recomputed from the files, independently of compare.py."""
    mi, mom = _file(run, "mi", model), _file(run, "moments", model)
    ang, qk = _file(run, "angles", model), _file(run, "qk", model)
    out = {}
    for sub in ("attn", "mlp"):
        curve = mi["mi_vs_distance"].sel(sublayer=sub)
        out[f"mi_{sub}_d1"] = curve.sel(distance=1).values
        out[f"mi_{sub}_mean_d_ge1"] = np.array(
            [np.nanmean(curve.sel(layer=la).values[curve["distance"].values >= 1])
             for la in curve["layer"].values])
        out[f"mi_{sub}_null"] = mi["mi_null_level"].sel(sublayer=sub).values
        k = mom["excess_kurtosis"].sel(sublayer=sub)
        out[f"kurtosis_{sub}_median"] = np.array(
            [np.nanmedian(k.sel(layer=la).values) for la in k["layer"].values])
    for variant in ("raw", "centered"):
        out[f"angle_shift_{variant}"] = ang["layer_angle_shift"].sel(variant=variant).values
        out[f"share_above_90_{variant}"] = ang["layer_share_attention_above_90"].sel(
            variant=variant).values
    for var in ("symmetry", "weighted_cosine", "positive_share"):
        out[f"{var}_median"] = np.median(qk[var].transpose("layer", "head").values, axis=1)
        out[f"{var}_q25"] = np.percentile(qk[var].transpose("layer", "head").values, 25, axis=1)
    out["layer_symmetry"] = qk["layer_symmetry"].values
    return out


def _check_rows(table: pd.DataFrame, label: str, run, model: int = 0) -> None:
    rows = table[table["model"] == label]
    manifest = json.loads((run / "manifest.json").read_text())
    n_layers = manifest["model"]["n_layers"]
    assert rows["layer"].tolist() == list(range(1, n_layers + 1))
    np.testing.assert_allclose(rows["relative_depth"].values,
                               (np.arange(n_layers) + 0.5) / n_layers)
    for column, expected in _expected_columns(run, model).items():
        np.testing.assert_allclose(rows[column].values, expected, rtol=1e-12, atol=0,
                                   equal_nan=True, err_msg=f"{label}: {column}")


def test_default_run_against_its_random_init_control(trained_run, random_run, tmp_path):
    out = tmp_path / "cmp"
    cmp = compare_runs([trained_run, random_run])
    report = write_comparison(cmp, out, pdf=False)
    assert not cmp.relative_depth, "same depth: layers on the layer axis"
    assert [e.label for e in cmp.entries] == ["dinov2", "dinov2-random"]
    table = layer_table(cmp)
    _check_rows(table, "dinov2", trained_run)
    _check_rows(table, "dinov2-random", random_run)
    # the two models differ: the comparison is not comparing a run with itself
    a, b = (table[table["model"] == m]["mi_attn_d1"].values for m in ("dinov2", "dinov2-random"))
    assert not np.allclose(a, b)
    # the CSV written beside the page holds the same numbers
    csv = pd.read_csv(out / LAYERS_CSV)
    assert list(csv.columns) == list(table.columns)
    np.testing.assert_allclose(csv["mi_attn_d1"].values, table["mi_attn_d1"].values, rtol=1e-8)
    np.testing.assert_allclose(csv["symmetry_median"].values, table["symmetry_median"].values,
                               rtol=1e-8)
    curves = pd.read_csv(out / MI_CSV)
    one = curves[(curves["model"] == "dinov2") & (curves["layer"] == 3)
                 & (curves["sublayer"] == "mlp")]
    np.testing.assert_allclose(
        one["mi"].values, _file(trained_run, "mi")["mi_vs_distance"].sel(
            layer=2, sublayer="mlp").values, rtol=1e-8, equal_nan=True)
    page = report.read_text()
    for slug in ("compare_mi_vs_distance", "compare_neurons", "compare_angles", "compare_qk"):
        assert f'id="{slug}"' in page and (out / "figures" / f"{slug}.png").exists()
    assert 'download="comparison_layers.csv"' in page and 'id="explorer"' in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not reach out"


def test_controls_are_compared_by_request(trained_run, random_run):
    cmp = compare_runs([trained_run, random_run], controls=True)
    assert [e.label for e in cmp.entries] == ["dinov2", "dinov2 (random-init)", "dinov2-random"]
    table = layer_table(cmp)
    _check_rows(table, "dinov2 (random-init)", trained_run, model=1)


def test_different_depths_on_a_relative_axis(shallow_run, trained_run, tmp_path):
    cmp = compare_runs([shallow_run, trained_run], labels=["vit-6", "dinov2-12"])
    assert cmp.relative_depth
    assert any("differ in depth" in n and "vit-6: 6 layers" in n for n in cmp.notes)
    assert any(n.startswith("Patch grids differ") for n in cmp.notes)
    table = layer_table(cmp)
    _check_rows(table, "vit-6", shallow_run)
    _check_rows(table, "dinov2-12", trained_run)
    assert cmp.x(cmp.entries[0], np.array([0, 5])).tolist() == [0.5 / 6, 5.5 / 6]
    assert mi_table(cmp)["relative_depth"].max() < 1
    report = write_comparison(cmp, tmp_path / "depth", pdf=True, explorer=False)
    assert "relative depth" in report.read_text()
    assert (tmp_path / "depth" / "figures" / "compare_qk.pdf").exists()


def test_different_image_sets_are_refused(trained_run, random_run, tmp_path):
    other = copy_run(random_run, tmp_path / "other-images")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["images"]["ids_sha256"] = "0" * 64
    manifest["images"]["n_selected"] = 25
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IncomparableRunsError, match="different image sets") as err:
        compare_runs([trained_run, other])
    assert "dinov2" in str(err.value) and "other-images" in str(err.value)
    assert "--allow-different-images" in str(err.value)
    assert isinstance(err.value, VitprobeError) and isinstance(err.value, ValueError)
    cmp = compare_runs([trained_run, other], allow_different_images=True)
    assert any(n.startswith("Different image sets") for n in cmp.notes)


def test_missing_analyses_are_refused(trained_run, random_run, tmp_path):
    other = copy_run(random_run, tmp_path / "no-qk")
    (other / "results" / "qk.nc").unlink()
    with pytest.raises(IncomparableRunsError, match=r"no-qk lacks results/qk\.nc") as err:
        compare_runs([trained_run, other])
    assert "--analyses angles,histograms,mi,moments" in str(err.value)
    with pytest.raises(IncomparableRunsError, match=r"no-qk lacks results/qk\.nc"):
        compare_runs([other, trained_run], analyses=["mi", "qk"])
    cmp = compare_runs([trained_run, other], analyses=["mi", "moments"])
    assert cmp.analyses == ("mi", "moments")
    table = layer_table(cmp)
    assert "mi_attn_d1" in table and "symmetry_median" not in table


def test_unfinished_or_single_runs_are_refused(trained_run, tmp_path):
    with pytest.raises(IncomparableRunsError, match="at least two runs"):
        compare_runs([trained_run])
    with pytest.raises(IncomparableRunsError, match="the same run folder is given twice"):
        compare_runs([trained_run, trained_run.parent / ".." / trained_run.parent.name
                      / trained_run.name])
    running = copy_run(trained_run, tmp_path / "running")
    manifest = json.loads((running / "manifest.json").read_text())
    manifest["status"] = "running"
    (running / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultsError, match="status 'running'"):
        compare_runs([trained_run, running])
    with pytest.raises(ResultsError, match="not a folder"):
        compare_runs([trained_run, tmp_path / "absent"])


def test_command_line(trained_run, random_run, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("compare must not load a model or open images")

    import vitprobe.data
    import vitprobe.models.registry

    monkeypatch.setattr(vitprobe.models.registry, "load_model", no_model)
    monkeypatch.setattr(vitprobe.data, "open_images", no_model)
    out = tmp_path / "cli"
    assert main(["compare", str(trained_run), str(random_run), "--out", str(out),
                 "--labels", "trained,random", "--no-explorer"]) == 0
    assert f"comparison: {out / 'comparison.html'}" in capsys.readouterr().out
    assert set(pd.read_csv(out / LAYERS_CSV)["model"]) == {"trained", "random"}
    assert 'id="explorer"' not in (out / "comparison.html").read_text()
    other = copy_run(random_run, tmp_path / "no-mi")
    (other / "results" / "mi.nc").unlink()
    assert main(["compare", str(trained_run), str(other), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vitprobe: error: the runs do not hold the same analyses")
