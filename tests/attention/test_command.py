"""``vitprobe angles`` end to end on a small saved model, and the figures it draws."""

from __future__ import annotations

import numpy as np
import pytest
import transformers as T

from tests.models import zoo
from vitprobe.attention import load_angles
from vitprobe.cli import main
from vitprobe.plots.angles import (
    plot_angle_distributions,
    plot_angle_summary,
    plot_attention_vs_angle,
)


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    """A small 'trained' (saved) HF DINOv2 with 4 registers: the model under study."""
    path = tmp_path_factory.mktemp("dinov2")
    model = zoo.make("hf-dinov2-reg4").model
    assert isinstance(model, T.Dinov2WithRegistersModel)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def run(dinov2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("angles")
    argv = ["angles", "--model", f"hf:{dinov2_dir}", "--images", "stimuli:gratings",
            "--n-images", "5", "--batch-size", "2", "--bins", "36", "--out", str(out)]
    return main(argv), out


def test_cli_writes_results_table_and_figures(run, capsys):
    rc, out = run
    assert rc == 0
    ds = load_angles(out / "angles.nc")
    assert list(ds["model"].values) == ["trained", "random-init"]
    assert list(ds["variant"].values) == ["raw", "centered"]
    assert ds.sizes["layer"] == 2 and ds.sizes["head"] == 3 and ds.sizes["angle_bin"] == 36
    assert ds.attrs["n_images"] == 5 and ds.attrs["n_prefix"] == 5
    assert ds.attrs["n_selected_tokens"] == 16  # patch tokens only by default
    # the control really is another model: different weights, different statistics
    assert not np.allclose(ds["mean_angle_attention"].sel(model="trained"),
                           ds["mean_angle_attention"].sel(model="random-init"))
    for name in ("qk_positive_share", "qk_weighted_cosine", "qk_symmetry"):
        assert ds[name].dims == ("model", "layer") and np.isfinite(ds[name]).all()
    table = (out / "angles_table.txt").read_text()
    assert table.count("layer") >= 4 and "[random-init" in table and "centered" in table
    for name in ("angle_summary.png", "attention_vs_angle_raw.png",
                 "angle_distributions_trained_centered.png",
                 "angle_distributions_random-init_raw.png"):
        assert (out / name).stat().st_size > 10_000, name


def test_figures_rerender_from_the_file(run):
    _, out = run
    ds = load_angles(out / "angles.nc")
    for fig in (plot_angle_distributions(ds, model="random-init", variant="centered"),
                plot_attention_vs_angle(ds, variant="raw"), plot_angle_summary(ds)):
        titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
        assert any("layer 1" in t for t in titles) or len(fig.axes) == 8
        assert not any("layer 0" in t for t in titles)  # layers are labelled 1..L


def test_summary_without_qk_measures_says_so(run):
    _, out = run
    ds = load_angles(out / "angles.nc")
    ds = ds.drop_vars([v for v in ds.data_vars if v.startswith("qk_")])
    fig = plot_angle_summary(ds)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum("not attached" in t for t in texts) == 3


def test_cli_random_init_only_and_errors(tmp_path, dinov2_dir, capsys):
    out = tmp_path / "r"
    rc = main(["angles", "--model", f"hf:{dinov2_dir}", "--random-init", "--images",
               "stimuli:noise", "--n-images", "2", "--include-prefix", "--no-figures",
               "--no-qk", "--out", str(out)])
    assert rc == 0
    ds = load_angles(out / "angles.nc")
    assert list(ds["model"].values) == ["random-init"]
    assert ds.attrs["include_prefix"] == 1 and ds.attrs["n_selected_tokens"] == 21
    assert not any(v.startswith("qk_") for v in ds.data_vars)
    assert not list(out.glob("*.png"))
    rc = main(["angles", "--model", f"hf:{dinov2_dir}", "--bins", "45", "--n-images", "1",
               "--images", "stimuli:noise", "--out", str(tmp_path / "e")])
    assert rc == 1 and "even" in capsys.readouterr().err
