"""Single-neuron statistics: moments (kurtosis) and standardised activation histograms.

Files: ``moments.nc`` (:class:`~vitprobe.stats.NeuronMoments`: mean, variance, skewness,
excess kurtosis, min, max of every neuron = channel x position of each sublayer's
output, float64 Pebay updates) and ``histograms.nc``
(:class:`~vitprobe.stats.NeuronHistograms`: activations standardised by each neuron's
calibration mean and s.d., histogrammed per channel). Both stream the images once, in
the first pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from vitprobe.analyses.base import (
    Analysis,
    Context,
    Datasets,
    FigureSpec,
    one_pass_calibration,
)
from vitprobe.analyses.common import (
    STATS,
    control_note,
    layer_label,
    n_images_text,
    sublayer_name,
)
from vitprobe.schema import main_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitprobe.models import ProbedViT
    from vitprobe.record import Accumulator

__all__ = ["ANALYSIS", "MomentsAnalysis"]


def _draw_distributions(datasets: Datasets) -> Figure:
    from vitprobe.plots.neurons import plot_activation_distributions

    return plot_activation_distributions(datasets["histograms"])


def _caption_distributions(datasets: Datasets, manifest: dict) -> str:
    return (
        "Distributions of single-neuron activations per layer (log density), each neuron "
        "standardised by its calibration mean and standard deviation and pooled over channels "
        "and positions; dashed: the standard normal. Heavier tails mean positive excess "
        f"kurtosis. {n_images_text(manifest)}." + control_note(datasets["histograms"])
    )


def _draw_kurtosis(datasets: Datasets) -> Figure:
    from vitprobe.plots.neurons import plot_kurtosis

    return plot_kurtosis(datasets["moments"])


def _caption_kurtosis(datasets: Datasets, manifest: dict) -> str:
    return (
        "Excess kurtosis (0 for a normal distribution) of every neuron (channel x position), "
        "per layer: median, quartiles and 5-95 % whiskers across neurons; moments accumulated "
        f"in float64 with Pebay's pairwise updates over {n_images_text(manifest)}."
        + control_note(datasets["moments"])
    )


class MomentsAnalysis(Analysis):
    """Moments and histograms of every neuron (``--analyses moments``)."""

    name = "moments"
    summary = "single-neuron moments (excess kurtosis) and activation distributions"
    needs_images = True
    files = ("moments", "histograms")
    section = STATS
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec("stats", "activation_distributions", "Activation distributions",
                   ("histograms",), _draw_distributions, _caption_distributions),
        FigureSpec("stats", "kurtosis", "Excess kurtosis per layer", ("moments",),
                   _draw_kurtosis, _caption_kurtosis),
    )

    def accumulators(self, model: ProbedViT, context: Context,
                     pass_index: int) -> dict[str, Accumulator]:
        """NeuronMoments and NeuronHistograms over every (layer, sublayer), pass 1 only."""
        if pass_index != 0:
            return {}
        from vitprobe.stats.histograms import NeuronHistograms
        from vitprobe.stats.layout import NeuronLayout
        from vitprobe.stats.moments import NeuronMoments

        layout = NeuronLayout.from_model(model)
        # histograms standardise each neuron by the calibration images' moments and count
        # those images too (one forward per image) when keeping them fits the budget
        histograms = NeuronHistograms(layout, calibration_images=context.calibration_images)
        return {"moments": NeuronMoments(layout),
                "histograms": one_pass_calibration(histograms, model, context)}

    def findings(self, datasets: Datasets) -> list[str]:
        """Per sublayer: the layer with the highest median excess kurtosis, and the share
        of near-normal neurons (|excess kurtosis| < 1), for the main model."""
        if "moments" not in datasets:
            return []
        k = main_model(datasets["moments"])["excess_kurtosis"]  # (layer, sublayer, ch, pos)
        med = k.median(("channel", "position"))
        out = []
        for sub in med["sublayer"].values:
            m = med.sel(sublayer=sub)
            if np.all(np.isnan(m.values)):
                continue
            top = layer_label(m["layer"].values[int(np.nanargmax(m.values))])
            near = float((np.abs(k.sel(sublayer=sub)) < 1).mean())
            out.append(f"{sublayer_name(sub)}: median excess kurtosis is highest in layer {top} "
                       f"({float(m.max()):.2f}); {near:.0%} of neurons have "
                       "|excess kurtosis| < 1.")
        return out


ANALYSIS = MomentsAnalysis
