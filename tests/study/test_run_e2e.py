"""`vitprobe run` end to end on the trained offline model, then `vitprobe report` alone."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from tests.study.helpers import SMALL_RUN, run, vitprobe_cmd
from vitprobe.analyses import REGISTRY, get_analysis
from vitprobe.cli import main

pytestmark = pytest.mark.slow

#: the analyses of the run below, and their figures (it has a control: all are drawn)
ANALYSES = ("moments", "mi", "angles", "qk")
FIGURES = [spec for name in REGISTRY if name in ANALYSES for spec in get_analysis(name).figures]

DOCUMENTED = {
    "moments": ["mean", "variance", "skewness", "excess_kurtosis", "jarque_bera"],
    "histograms": ["histogram", "calibration_mean", "calibration_std"],
    "mi": ["mi", "mi_vs_distance", "mi_vs_distance_stderr", "mi_null_level", "joint_counts",
           "edges"],
    "angles": ["baseline_hist", "attention_hist", "mean_attention_per_bin",
               "mean_angle_baseline", "mean_angle_attention", "share_attention_above_90",
               "logit_cos_correlation", "layer_angle_shift"],
    "qk": ["eig_sym", "lambda_asym", "singular_value", "positive_share", "symmetry",
           "weighted_cosine", "layer_symmetry"],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    args = [a if a != "moments,mi,angles" else ",".join(ANALYSES) for a in SMALL_RUN]
    # the later --control wins over SMALL_RUN's "--control none"
    proc = run(vitprobe_cmd("run", *args, "--control", "random-init", "--out", str(out)))
    return out, proc


def test_summary_and_manifest(finished):
    out, proc = finished
    assert "vitprobe run finished" in proc.stdout and "demo scale" in proc.stdout
    assert str(out / "report.html") in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["model"]["spec"] == "imgfocus-dinov2-s14"
    assert len(manifest["model"]["weights_sha256"]) == 64
    assert manifest["images"]["n_selected"] == 48 and manifest["images"]["demo"]
    assert len(manifest["images"]["ids_sha256"]) == 64
    assert (out / "images.txt").read_text().count("\n") == 48
    assert manifest["n_images_counted"] == 48 and manifest["skipped"] == []
    assert manifest["control"] == "random-init"
    for package in ("vitprobe", "torch", "timm", "transformers"):
        assert manifest["versions"][package] != "not installed"
    assert "vitprobe" in manifest["command"] and "--control" in manifest["command"]
    assert {"load_s", "pass1_s", "total_s"} <= set(manifest["timings_s"])
    assert set(manifest["results"]) == set(DOCUMENTED)
    # two ViT-S models and their recorded batches: hundreds of MB, within this machine
    peak = manifest["peak_memory_bytes"]
    assert set(peak) == {"host_rss"} and 2e8 < peak["host_rss"] < 64e9
    assert f"memory     peak {peak['host_rss'] / 1e9:.1f} GB resident" in proc.stdout


def test_every_dataset_opens_with_documented_variables(finished):
    out, _ = finished
    for name, variables in DOCUMENTED.items():
        with xr.open_dataset(out / "results" / f"{name}.nc", engine="h5netcdf") as ds:
            missing = [v for v in variables if v not in ds]
            assert not missing, (name, missing)
            assert ds[variables[0]].dims[0] == "model", name  # the schema: model first
            assert list(ds["model"].values) == ["trained", "random-init"], name
            assert ds.attrs["model_spec"] == "imgfocus-dinov2-s14"
            ds.load()
        check_values[name](ds)


def _moments(ds):
    assert (ds["n"].values == 48).all() if "n" in ds else int(ds.attrs["n_images"]) == 48
    assert np.isfinite(ds["mean"]).all() and (ds["variance"] > 0).all()
    assert (ds["excess_kurtosis"] >= -2).all()  # a bound every distribution obeys
    # the control is another model: its statistics differ
    assert not np.allclose(ds["variance"].sel(model="trained"),
                           ds["variance"].sel(model="random-init"))


def _histograms(ds):
    # every image and position lands in one bin per channel (16 x 16 patches)
    per_channel = ds["histogram"].sum("bin")
    assert (per_channel == 48 * 256).all()


def _mi(ds):
    counts = ds["joint_counts"].sum(["bin_x", "bin_y"])
    assert (counts == 48).all() and ds["joint_counts"].dtype.kind == "i"
    # finite everywhere but at most the central neuron paired with itself
    assert ((~np.isfinite(ds["mi"])).sum("position") <= 1).all()
    assert np.isfinite(ds["mi_null_level"]).all()
    near = ds["mi_vs_distance"].sel(distance=1)
    assert (near > ds["mi_null_level"]).mean() > 0.5  # neighbours share information


def _angles(ds):
    for name in ("mean_angle_baseline", "mean_angle_attention"):
        assert ((ds[name] >= 0) & (ds[name] <= 180)).all(), name
    share = ds["share_attention_above_90"]
    assert ((share >= 0) & (share <= 1)).all()


def _qk(ds):
    assert np.isfinite(ds["eig_sym"]).all() and (ds["singular_value"] >= 0).all()
    assert ((ds["layer_symmetry"] >= -1) & (ds["layer_symmetry"] <= 1)).all()
    assert ((ds["positive_share"] >= 0) & (ds["positive_share"] <= 1)).all()


check_values = {"moments": _moments, "histograms": _histograms, "mi": _mi, "angles": _angles,
                "qk": _qk}


def test_report_embeds_every_figure_and_they_decode(finished):
    out, _ = finished
    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(FIGURES)
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            img.load()
            assert img.width > 300 and img.height > 200
    for spec in FIGURES:
        assert (out / "figures" / f"{spec.slug}.png").stat().st_size > 1000
        assert not (out / "figures" / f"{spec.slug}.pdf").exists()  # PDF only with --pdf
        assert f'id="{spec.slug}"' in page
    assert "Main findings" in page and "not ImageNet" in page
    assert "results/mi.nc" in page


def test_report_redraws_without_model_or_images(finished, tmp_path, monkeypatch):
    out, _ = finished
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("figures", "report.html"))

    def no_model(*args, **kwargs):
        raise AssertionError("the report must not load a model")

    import vitprobe.data
    import vitprobe.models.registry

    monkeypatch.setattr(vitprobe.models.registry, "load_model", no_model)
    monkeypatch.setattr(vitprobe.data, "open_images", no_model)
    assert main(["report", str(copy)]) == 0
    for spec in FIGURES:
        a = np.asarray(Image.open(out / "figures" / f"{spec.slug}.png"))
        b = np.asarray(Image.open(copy / "figures" / f"{spec.slug}.png"))
        np.testing.assert_array_equal(a, b, err_msg=spec.slug)


def test_report_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "not a vitprobe results folder" in err and "the run folder is" not in err


def test_report_on_a_runs_results_subfolder_names_the_run(finished, capsys):
    out, _ = finished
    assert main(["report", str(out / "results")]) == 1
    assert f"the run folder is {out.resolve()}" in capsys.readouterr().err
