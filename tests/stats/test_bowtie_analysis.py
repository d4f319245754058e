"""The bowtie plug-in end to end: a tiny random-init ViT, and the offline DINOv2-S/14."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.zoo import make, pixels
from vitprobe.analyses.base import Context
from vitprobe.analyses.bowtie import ANALYSIS, BowtieAnalysis
from vitprobe.netcdf import load_dataset, save_dataset
from vitprobe.schema import RANDOM_INIT, TRAINED, stack_models
from vitprobe.stats.joint import IMAGE_INDEX


def stream(analysis: BowtieAnalysis, model, context: Context, calibration: list[torch.Tensor],
           batches: list[torch.Tensor]):
    """As the study streams: the calibration batches come first in the image order and
    are counted too (the plug-in's accumulator counts its own calibration images)."""
    acc = analysis.accumulators(model, context, 0)["bowtie"]
    assert acc.counts_calibration
    start = 0
    for px in calibration:
        _, cache = model.run_with_cache(px, sites=acc.sites)
        cache[IMAGE_INDEX] = torch.arange(start, start + px.shape[0])
        start += px.shape[0]
        acc.calibrate(cache)
    acc.end_calibration()
    for px in batches:
        _, cache = model.run_with_cache(px, sites=acc.sites)
        cache[IMAGE_INDEX] = torch.arange(start, start + px.shape[0])
        start += px.shape[0]
        acc.update(cache)
    return acc


def run_tiny(analysis: BowtieAnalysis, seed: int):
    context = Context(n_images=40, calibration_images=16, seed=3)
    model = make("timm-vit", seed=seed)  # 4 x 4 patches, 192 channels, 2 layers
    assert analysis.accumulators(model, context, 1) == {}
    acc = stream(analysis, model, context, [pixels(model, 16, seed=5)],
                 [pixels(model, n, seed=s) for s, n in ((6, 10), (7, 14))])
    return acc, analysis.results({"bowtie": [acc]})["bowtie"]


def test_plugin_on_a_tiny_model() -> None:
    analysis = ANALYSIS()
    assert analysis.name == "bowtie" and analysis.files == ("bowtie",)
    acc, main = run_tiny(analysis, 0)
    assert main.attrs["n_images"] == 40 and main.attrs["analysis"] == "bowtie"
    # every image adds one sample per central pair at each position of that distance,
    # and one per ordered pair of positions at the distance to the pooled counts
    lay = acc.layout
    for d in range(int(lay.distance_bin.max()) + 1):
        n_pos = int((lay.distance_bin == d).sum())
        assert np.all(main.n_samples.sel(pooling="central", distance=d).values == 40 * n_pos)
    rows, cols = lay.rows, lay.cols
    dist = np.rint(np.hypot(rows[:, None] - rows, cols[:, None] - cols))
    assert np.all(main.n_samples.sel(pooling="translation", distance=1).values
                  == 40 * int((dist == 1).sum()))
    for name in ("bowtie_index", "w", "correlation", "layer_w", "layer_bowtie_index_lo"):
        assert np.isfinite(main[name].sel(pooling="translation", distance=1)).any(), name
    # captions and findings read the stacked file (a copy stands in for the control)
    ds = {"bowtie": stack_models({TRAINED: main, RANDOM_INIT: main})}
    manifest = {"images": {"demo": True, "source": "demo"}}
    drawn = [spec for spec in analysis.figures if spec.available(ds)]
    assert {s.slug for s in drawn} >= {"bowtie_rows_attn", "bowtie_summary",
                                       "bowtie_rows_mlp_control"}
    for spec in drawn:
        caption = spec.caption(ds, manifest)
        assert "40 images" in caption and "bowtie.nc" in caption
    found = analysis.findings(ds)
    assert any("strongest in layer" in s for s in found)
    assert any(RANDOM_INIT in s for s in found)


@pytest.mark.slow
def test_plugin_figures_from_the_saved_file(tmp_path) -> None:
    analysis = ANALYSIS()
    parts = {TRAINED: run_tiny(analysis, 0)[1], RANDOM_INIT: run_tiny(analysis, 1)[1]}
    save_dataset(stack_models(parts), tmp_path / "bowtie.nc")
    loaded = {"bowtie": load_dataset(tmp_path / "bowtie.nc")}
    figures = {}
    for spec in analysis.figures:
        assert spec.available(loaded)
        figures[spec.slug] = fig = spec.draw(loaded)
        fig.savefig(tmp_path / f"{spec.slug}.png", dpi=30)
    assert len(list(tmp_path.glob("*.png"))) == len(analysis.figures)
    # the conditional SD overlays the control's nearest distance, and says so
    sd = figures["bowtie_conditional_sd_mlp"]
    labels = [t.get_text() for t in sd.axes[0].get_legend().get_texts()]
    assert labels[0] == "d = 1" and f"{RANDOM_INIT}, d = 1" in labels
    spec = next(s for s in analysis.figures if s.slug == "bowtie_conditional_sd_mlp")
    assert "grey dashed" in spec.caption(loaded, {"images": {"source": "demo"}})
    # its axis label sits just below the bottom panels' tick labels, not a band lower
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(sd).draw()  # the layout as saved
    renderer = sd.canvas.get_renderer()
    label = sd._supxlabel.get_window_extent(renderer)
    ticks = min(ax.get_tightbbox(renderer).y0 for ax in sd.axes if ax.get_visible())
    assert 0 <= ticks - label.y1 < 0.15 * sd.dpi, (ticks, label.y1)


@pytest.mark.slow
def test_offline_model_shows_fine_bowties_at_512_demo_images() -> None:
    """The default report's bowties must show their shape: at 512 demo crops the
    translation-pooled histogram of every layer's highest-MI channel at distance 1 has
    at least 21 x 21 cells with data (the MI counts had 4 x 4)."""
    import vitprobe
    from vitprobe.data import make_loader, open_images

    model = vitprobe.load_model("imgfocus-dinov2-s14")
    source = open_images("demo?crops=32", n_images=512, seed=0)
    batches = [b["pixels"] for b in make_loader(source, model.preprocess, batch_size=64)]
    context = Context(n_images=512, calibration_images=256, seed=0)
    acc = stream(BowtieAnalysis(), model, context, batches[:4], batches[4:])
    ds = acc.result()
    assert ds.attrs["n_images"] == 512
    top = ds.counts.sel(pooling="translation", distance=1, pair=0)
    cells = (top > 0).sum(("bin_x", "bin_y")).values
    rows = (top.sum("bin_y") > 0).sum("bin_x").values
    cols = (top.sum("bin_x") > 0).sum("bin_y").values
    assert cells.min() >= 21 * 21, cells
    assert rows.min() >= 21 and cols.min() >= 21
    # and the bowtie statistics exist for every layer
    assert np.isfinite(ds.layer_bowtie_index.sel(pooling="translation", distance=1)).all()
