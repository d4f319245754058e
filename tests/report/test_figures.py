"""Saving figures: a frozen layout gives the same pixels in one draw instead of two."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from vitprobe.plots.common import freeze_layout

matplotlib.use("Agg")


def _constrained_figure() -> Figure:
    """Many panels with log axes, labels, a colorbar and a suptitle: what constrained
    layout has to measure in the report's angle and query-key figures."""
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(9, 7), layout="constrained")
    axes = fig.subplots(3, 4, sharex="col")
    for i, ax in enumerate(axes.flat):
        ax.plot(np.arange(1, 65), np.exp(-np.arange(64) / (i + 3)) + rng.random(64) * 1e-3)
        ax.set_yscale("log")
        ax.set_title(f"layer {i + 1}", fontsize=8)
        ax.set_ylabel("singular value" if i % 4 == 0 else "")
    image = axes[0, 0].imshow(rng.random((8, 8)), extent=(1, 64, 1e-3, 1))
    fig.colorbar(image, ax=axes[:, -1], shrink=0.6, label="share")
    fig.suptitle("twelve panels, long tick labels on log axes")
    return fig


def _png(fig: Figure, dpi: int) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


@pytest.mark.parametrize("dpi", [110, 60])
def test_frozen_layout_draws_once_and_gives_the_same_pixels(dpi):
    reference = _png(_constrained_figure(), dpi)
    fig = _constrained_figure()
    draws: list[int] = []
    fig.canvas.mpl_connect("draw_event", lambda event: draws.append(1))
    assert freeze_layout(fig, dpi) is fig
    assert fig.get_layout_engine() is None
    frozen = _png(fig, dpi)
    assert len(draws) == 1  # savefig with a layout engine draws twice (a dry run first)
    np.testing.assert_array_equal(frozen, reference)


def test_a_figure_without_layout_engine_is_left_alone():
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0])
    position = ax.get_position().bounds
    freeze_layout(fig, 110)
    assert fig.get_layout_engine() is None and ax.get_position().bounds == position


def test_save_figure_writes_one_draw_reproducible_files(tmp_path):
    from vitprobe.plots.common import save_figure

    reference = _png(_constrained_figure(), 110)
    fig = _constrained_figure()
    draws: list[int] = []
    fig.canvas.mpl_connect("draw_event", lambda event: draws.append(1))
    png = tmp_path / "sub" / "f.png"
    save_figure(fig, png, dpi=110, close=False)
    assert len(draws) == 1
    np.testing.assert_array_equal(np.asarray(Image.open(png)), reference)
    pdf = tmp_path / "f.pdf"
    save_figure(fig, pdf, fmt="pdf", close=False)
    first = pdf.read_bytes()
    save_figure(fig, pdf, fmt="pdf", close=False)
    assert first.startswith(b"%PDF") and pdf.read_bytes() == first  # no creation date
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["f.pdf", "f.png", "sub"]  # no temp


def test_save_figure_closes_pyplot_figures_and_writes_to_buffers():
    import matplotlib.pyplot as plt

    from vitprobe.plots.common import save_figure

    fig, ax = plt.subplots(layout="constrained")
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    save_figure(fig, buf, dpi=60)
    assert buf.getvalue().startswith(b"\x89PNG")
    assert not plt.fignum_exists(fig.number)
