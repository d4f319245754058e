"""Neuron figures render from Datasets alone (Agg), with the expected content."""

from __future__ import annotations

import numpy as np
import pytest

from vitprobe.errors import ResultsError
from vitprobe.plots.neurons import (
    bowtie_image,
    plot_activation_distributions,
    plot_bowtie,
    plot_bowtie_rows,
    plot_kurtosis,
    plot_mi_vs_distance,
)
from vitprobe.stats import JointCounts, NeuronHistograms, NeuronLayout, NeuronMoments

from .conftest import PlantedStream


@pytest.fixture(scope="module")
def results():
    lay = NeuronLayout(n_layers=2, d_model=4, grid=(5, 5), n_prefix=1)
    s = PlantedStream(lay, seed=0)
    j = JointCounts(lay, bins=8, calibration_images=256, cross_pairs_per_distance=1)
    h = NeuronHistograms(lay, n_bins=40, z_range=6)
    m = NeuronMoments(lay)
    cal = s.batch(256)
    j.calibrate(cal)
    h.calibrate(cal)
    j.end_calibration()
    h.end_calibration()
    for _ in range(3):
        b = s.batch(256)
        for acc in (j, h, m):
            acc.update(b)
    return lay, j.result(), h.result(), m.result()


def test_bowtie_image_columns() -> None:
    counts = np.array([[10, 0, 0], [5, 5, 0], [0, 0, 0]])
    img = bowtie_image(counts, normalise="sum")
    assert img.shape == (3, 3)
    np.testing.assert_allclose(img[:, 0], [1, 0, 0])
    np.testing.assert_allclose(img[:, 1], [0.5, 0.5, 0])
    assert np.isnan(img[:, 2]).all()  # empty column
    dens = bowtie_image(counts, np.array([0.0, 1.0, 3.0, 4.0]), density=True)
    np.testing.assert_allclose(dens[:, 1], [1.0, 0.5, 0.0])


def test_figures_render(results, tmp_path) -> None:
    lay, ds, hist, mom = results
    import matplotlib.pyplot as plt

    n_open = len(plt.get_fignums())
    figs = {
        "bowtie": plot_bowtie(ds, 1, "mlp", position=lay.centre_position + 1),
        "bowtie_rank": plot_bowtie(ds, 0, "attn", position=3, space="rank"),
        "cross": plot_bowtie(ds, 0, "attn", pair=2),
        "rows": plot_bowtie_rows(ds, "mlp", distances=(1, 2, 9)),
        "mi": plot_mi_vs_distance(ds),
        "mi_spread": plot_mi_vs_distance(ds, exclude_layers=[0], spread=True),
        "dist": plot_activation_distributions(hist),
        "kurt": plot_kurtosis(mom),
    }
    for name, fig in figs.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path, dpi=50)
        assert path.stat().st_size > 1000
    assert len(plt.get_fignums()) == n_open  # nothing registered with pyplot
    rows = figs["rows"]
    assert len(rows.axes) == 2 * 2  # distance 9 does not fit on a 5 x 5 grid
    assert rows.axes[0].get_ylabel().startswith("layer 1")
    mi_ax = figs["mi"].axes[0]
    assert mi_ax.get_ylabel() == "mutual information (nats)"
    labels = figs["mi"].legends[0].get_texts()
    assert [t.get_text() for t in labels][-2:] == ["layer 1", "layer 2"]
    assert "layer 1" not in [t.get_text() for t in figs["mi_spread"].legends[0].get_texts()]


def test_bowtie_needs_saved_counts(results) -> None:
    _, ds, hist, _ = results
    kept = ds.kept_channel.sel(layer=0, sublayer="attn").values
    other = next(c for c in range(4) if c not in kept)
    with pytest.raises(ResultsError, match="no joint counts saved"):
        plot_bowtie(ds, 0, "attn", channel=other, position=0)
    with pytest.raises(ResultsError):
        plot_mi_vs_distance(hist)
