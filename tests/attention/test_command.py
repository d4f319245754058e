"""``vitprobe angles`` end to end on a small saved model, and the figures it draws."""

from __future__ import annotations

import re

import numpy as np
import pytest
import transformers as T

from tests.models import zoo
from vitprobe.attention import attach_qk, load_angles
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


def _load(out):
    """The run folder's angles with its query-key measures attached (when qk ran)."""
    ds = load_angles(out / "results" / "angles.nc")
    if (out / "results" / "qk.nc").exists():
        from vitprobe.netcdf import load_dataset

        ds = attach_qk(ds, load_dataset(out / "results" / "qk.nc"))
    return ds


def test_cli_writes_results_table_and_figures(run, capsys):
    rc, out = run
    assert rc == 0
    ds = _load(out)
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
    for name in ("angle_summary.png", "attention_vs_angle.png", "angle_distributions.png",
                 "qk_summary.png"):
        assert (out / "figures" / name).stat().st_size > 10_000, name
    assert "Embedding angles" in (out / "report.html").read_text()


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _layer_numbers(fig) -> list[int]:
    """The layer number each visible panel's title starts with ("layer 2: ..." -> 2)."""
    numbers = []
    for ax in _panels(fig):
        match = re.match(r"layer (\d+)(:|$)", ax.get_title())
        assert match, f"panel title {ax.get_title()!r} does not name its layer"
        numbers.append(int(match.group(1)))
    return numbers


def _legend(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_figures_rerender_from_the_file(run):
    _, out = run
    ds = _load(out)
    n_layers = ds.sizes["layer"]
    assert n_layers == 2

    # small multiples: one panel per layer, labelled 1..L in order (0-based in the data)
    dist = plot_angle_distributions(ds, model="random-init", variant="centered")
    vs = plot_attention_vs_angle(ds, variant="raw")
    for fig in (dist, vs):
        panels = _panels(fig)
        assert _layer_numbers(fig) == [1, 2]
        assert all("degrees" in ax.get_xlabel() for ax in panels)  # one row: all bottom
        assert panels[0].get_ylabel() and not panels[1].get_ylabel()  # first column only
        assert all(ax.get_xlim() == (0.0, 180.0) for ax in panels)
        assert "5 images" in fig._suptitle.get_text()
    assert "density" in _panels(dist)[0].get_ylabel()
    assert "uniform" in _panels(vs)[0].get_ylabel()
    assert "random-init" in dist._suptitle.get_text() and "centered" in dist._suptitle.get_text()
    assert "raw" in vs._suptitle.get_text()
    # the other model is overlaid and named in the legend; both are in the second figure's
    assert any(t.startswith("trained") for t in _legend(dist))
    assert sum(t.startswith(("trained", "random-init")) for t in _legend(vs)) == 2

    # summary: eight per-layer panels, x axis = layer numbers 1..L
    summary = plot_angle_summary(ds)
    panels = _panels(summary)
    titles = [ax.get_title() for ax in panels]
    assert len(panels) == 8 and all(titles) and len(set(titles)) == 8
    assert [ax.get_xlabel() for ax in panels[4:]] == ["layer"] * 4  # bottom row
    for ax in panels:
        assert list(ax.get_xticks()) == [1, 2]
        assert ax.lines, f"panel {ax.get_title()!r} has no curve"
        # curves in data coordinates (reference lines such as axhline span the axes)
        curves = [line for line in ax.lines if line.get_transform() == ax.transData]
        assert curves and all(list(line.get_xdata()) == [1, 2] for line in curves)
    legend = _legend(summary)
    assert any(t.startswith("trained") for t in legend)
    assert any(t.startswith("random-init") for t in legend)
    assert {"raw embeddings", "centered embeddings"} <= set(legend)


def test_summary_without_qk_measures_says_so(run):
    _, out = run
    ds = _load(out)
    ds = ds.drop_vars([v for v in ds.data_vars if v.startswith("qk_")])
    fig = plot_angle_summary(ds)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum("not attached" in t for t in texts) == 3


def test_cli_random_init_only_and_errors(tmp_path, dinov2_dir, capsys):
    out = tmp_path / "r"
    rc = main(["angles", "-m", f"hf:{dinov2_dir}", "--random-init", "-i",  # run's short forms
               "stimuli:noise", "-n", "2", "--include-prefix", "--no-figures",
               "--no-qk", "-o", str(out)])
    assert rc == 0
    ds = _load(out)
    assert list(ds["model"].values) == ["random-init"]
    assert ds.attrs["include_prefix"] == 1 and ds.attrs["n_selected_tokens"] == 21
    assert not any(v.startswith("qk_") for v in ds.data_vars)
    assert not list(out.glob("**/*.png")) and not (out / "report.html").exists()
    rc = main(["angles", "--model", f"hf:{dinov2_dir}", "--bins", "45", "--n-images", "2",
               "--images", "stimuli:noise", "--out", str(tmp_path / "e")])
    assert rc == 1 and "even" in capsys.readouterr().err
    rc = main(["angles", "--model", f"hf:{dinov2_dir}", "--n-images", "1",
               "--images", "stimuli:noise", "--out", str(tmp_path / "e1")])
    assert rc == 1 and "holds 1 image(s)" in capsys.readouterr().err
