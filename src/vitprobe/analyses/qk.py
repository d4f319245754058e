"""Query-key weights: spectra and symmetry of ``M = W_Q W_K^T`` per head, from weights alone.

File: ``qk.nc`` (:func:`vitprobe.weights.analyze_qk_models`): one entry along ``model``
per model that ran (the model under study, then its controls; one model when no
control ran). No images are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from vitprobe.analyses.base import Analysis, Context, Datasets, FigureSpec
from vitprobe.analyses.common import SIMILARITY, control_note, layer_label
from vitprobe.schema import controls, main_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitprobe.models import ProbedViT

__all__ = ["ANALYSIS", "QKAnalysis"]


def _draw_spectra(datasets: Datasets) -> Figure:
    from vitprobe.plots.qk import plot_qk_spectra

    return plot_qk_spectra(datasets["qk"])


def _caption_spectra(datasets: Datasets, manifest: dict) -> str:
    return (
        "Spectra of M = W_Q W_K^T per head (poster Fig. 5), one row per layer: sorted "
        "eigenvalues of M_sym = (M + M^T)/2, the lambda of the +-i*lambda eigenvalue pairs of "
        "M_asym = (M - M^T)/2, and the singular values of M (their decay shows the rank), "
        "each divided by the head's ||M||_F; thin lines are heads, bold the median. Computed "
        "exactly from the d_model x d_head factors; biases and LayerNorm excluded (as in Pan "
        "et al. 2024)." + control_note(datasets["qk"])
    )


def _draw_summary(datasets: Datasets) -> Figure:
    from vitprobe.plots.qk import plot_qk_summary

    return plot_qk_summary(datasets["qk"])


def _caption_summary(datasets: Datasets, manifest: dict) -> str:
    return (
        "Per-layer summaries of M = W_Q W_K^T across heads (median and interquartile band): "
        "positive share of M_sym's spectrum (sum of positive over sum of absolute eigenvalues), "
        "symmetry score 2s - 1 with s = ||M_sym||_F^2 / ||M||_F^2 (Saponati et al. 2025), the "
        "singular-value-weighted cosine between paired left and right singular vectors "
        "(= trace(M) / nuclear norm; Pan et al. 2024), ||M_asym|| / ||M_sym||, effective and "
        "stable rank." + control_note(datasets["qk"])
    )


def _draw_intuition(datasets: Datasets) -> Figure:
    from vitprobe.plots.qk import plot_sym_asym_intuition

    return plot_sym_asym_intuition()


def _caption_intuition(datasets: Datasets, manifest: dict) -> str:
    return ("What the two parts do to a pair of tokens (poster Fig. 6): x M_sym y^T is largest "
            "for similar x and y along M_sym's positive eigenvectors, while x M_asym y^T is zero "
            "for y = x and largest for y rotated by 90 degrees in one of M_asym's planes. "
            "Schematic; no data.")


class QKAnalysis(Analysis):
    """Query-key weight analysis of every head (``--analyses qk``); needs no images."""

    name = "qk"
    summary = "spectra and symmetry of the query-key weights W_Q W_K^T per head"
    needs_images = False
    files = ("qk",)
    section = SIMILARITY
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec("similarity", "qk_spectra", "Spectra of W_Q W_K^T", ("qk",),
                   _draw_spectra, _caption_spectra),
        FigureSpec("similarity", "qk_summary", "Query-key weight measures per layer", ("qk",),
                   _draw_summary, _caption_summary),
        FigureSpec("similarity", "qk_intuition", "Symmetric and antisymmetric parts", ("qk",),
                   _draw_intuition, _caption_intuition),
    )

    def run(self, models: Mapping[str, ProbedViT], context: Context,
            progress: Callable[[str], None] | None = None) -> Datasets:
        """``{"qk": Dataset}`` of every model in ``models`` (main model first), stacked
        along ``model``; weights as the models hold them (no LayerNorm folding, no scale)."""
        from vitprobe.weights import analyze_qk_models

        if progress is not None:
            progress(f"query-key weights of {', '.join(models)}")
        return {"qk": analyze_qk_models(models)}

    def findings(self, datasets: Datasets) -> list[str]:
        """Where M_sym's spectrum is mostly positive, the symmetry score of the first and
        last layers, where the weighted cosine peaks (main model), and each control's
        positive share."""
        if "qk" not in datasets:
            return []
        ds = datasets["qk"]
        main = main_model(ds)
        share = main["positive_share"].median("head")
        positive = [layer_label(la) for la, v in zip(share["layer"].values, share.values,
                                                     strict=True) if v > 0.5]
        out = [f"M_sym's spectrum is mostly positive (median positive share > 0.5) in "
               f"{len(positive)} of {share.sizes['layer']} layers"
               + (f": {', '.join(map(str, positive))}" if positive else "")
               + f"; range {float(share.min()):.2f}-{float(share.max()):.2f}."]
        for name, ctrl in controls(ds).items():
            base = ctrl["positive_share"].median("head")
            out.append(f"The {name} control gives {float(base.mean()):.2f} on average.")
        if "layer_symmetry" in main:
            sym = main["layer_symmetry"]
            out.append(f"Symmetry score 2s-1 of each layer's summed M: {float(sym[0]):.2f} in "
                       f"layer 1, {float(sym[-1]):.2f} in layer {sym.sizes['layer']} "
                       "(0 for a random matrix).")
        wc = main["weighted_cosine"].median("head")
        hi, lo = int(np.nanargmax(wc.values)), int(np.nanargmin(wc.values))
        out.append(f"Singular-value-weighted cosine of paired singular vectors: highest in "
                   f"layer {layer_label(wc['layer'].values[hi])} ({float(wc.max()):.2f}), "
                   f"lowest in layer {layer_label(wc['layer'].values[lo])} "
                   f"({float(wc.min()):.2f}).")
        return out


ANALYSIS = QKAnalysis
