"""Attention against the angle between the embeddings of the tokens it connects.

File: ``angles.nc`` (:class:`~vitprobe.attention.AngleAccumulator`, variables in
:mod:`vitprobe.attention.result`): per layer and head, the distribution of the angle
between every pair of patch tokens as attention sees them, over all pairs and
weighted by the attention they exchange, raw and with the dataset's mean token removed.
Its per-layer summary figure shows the query-key weight measures beside the angles when
``qk.nc`` is in the same run (the poster's link between the two).
"""

from __future__ import annotations

from collections.abc import Callable
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
    SIMILARITY,
    control_note,
    layer_label,
    layer_list,
    n_images_text,
)
from vitprobe.schema import MODEL_DIM, controls, main_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitprobe.models import ProbedViT
    from vitprobe.record import Accumulator

__all__ = ["ANALYSIS", "AnglesAnalysis"]

_WHAT = {
    "distributions": "Distribution of the angle between the embeddings of every pair of "
                     "patch tokens (query i, key j != i) per layer: all pairs (baseline) "
                     "against the same pairs weighted by the attention A_ij they "
                     "exchange. Mass left of the baseline means attention to similar "
                     "patches, right of it (beyond 90 degrees) to dissimilar ones.",
    "attention": "Mean attention probability A_ij per angle bin, per layer: how much "
                 "a query gives a key at each embedding angle.",
    "summary": "Per-layer summaries: attention-weighted minus baseline mean angle, "
               "share of attention mass above 90 degrees, and the correlation of "
               "attention logits with cos(angle), next to the query-key weight measures "
               "(positive share of M_sym, weighted singular-vector cosine, symmetry "
               "score) to test the poster's link between them.",
}


def _qk_matches(datasets: Datasets) -> bool:
    """``qk.nc`` is there and holds every model of ``angles.nc`` (the same run)."""
    if "qk" not in datasets:
        return False
    have = {str(v) for v in datasets["qk"][MODEL_DIM].values}
    return {str(v) for v in datasets["angles"][MODEL_DIM].values} <= have


def _draw(kind: str) -> Callable[[Datasets], Figure]:
    def draw(datasets: Datasets) -> Figure:
        from vitprobe.plots import angles

        ds = datasets["angles"]
        if kind == "distributions":
            return angles.plot_angle_distributions(ds)
        if kind == "attention":
            return angles.plot_attention_vs_angle(ds)
        if _qk_matches(datasets):
            from vitprobe.attention import attach_qk

            ds = attach_qk(ds, datasets["qk"])
        return angles.plot_angle_summary(ds)

    return draw


def _caption(kind: str) -> Callable[[Datasets, dict], str]:
    def caption(datasets: Datasets, manifest: dict) -> str:
        ds = datasets["angles"]
        embedding = ds.attrs.get("embedding", "ln1")
        qk = ""
        if kind == "summary" and not _qk_matches(datasets):
            qk = " The query-key panels are empty: the qk analysis did not run on these models."
        return (f"{_WHAT[kind]} Embeddings as attention sees them (<code>{embedding}</code>); "
                "solid: raw, dashed: after removing the dataset's mean token (anisotropy). "
                f"{n_images_text(manifest)}; prefix tokens excluded.{qk}" + control_note(ds))

    return caption


class AnglesAnalysis(Analysis):
    """Embedding angles against attention (``--analyses angles``).

    Options (``Context.options``, ``vitprobe angles`` flags): ``angles_embedding``
    (``ln1``: tokens as attention sees them, or ``resid_pre``), ``angles_include_prefix``
    (pair the class/register tokens too), ``angles_bins`` (over 0-180 degrees, even),
    ``angles_precision`` (``float32`` compiled path, or ``float64`` reference).
    """

    name = "angles"
    summary = "angles between token embeddings against the attention they exchange"
    needs_images = True
    files = ("angles",)
    section = SIMILARITY
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec("similarity", "angle_distributions", "Embedding angles: all pairs vs "
                   "attention", ("angles",), _draw("distributions"), _caption("distributions")),
        FigureSpec("similarity", "attention_vs_angle", "Attention against embedding angle",
                   ("angles",), _draw("attention"), _caption("attention")),
        FigureSpec("similarity", "angle_summary", "Angles and weights per layer", ("angles",),
                   _draw("summary"), _caption("summary")),
    )

    def accumulators(self, model: ProbedViT, context: Context,
                     pass_index: int) -> dict[str, Accumulator]:
        """``{"angles": AngleAccumulator}`` shaped for ``model``, pass 1 only."""
        if pass_index != 0:
            return {}
        from vitprobe.attention import AngleAccumulator

        # the mean token comes from the first calibration images, which are counted too
        # when keeping them fits the budget
        acc = AngleAccumulator.from_model(
            model,
            embedding=context.option("angles_embedding", "ln1"),
            include_prefix=bool(context.option("angles_include_prefix", False)),
            bins=int(context.option("angles_bins", 90)),
            precision=context.option("angles_precision", "float32"))
        # the study drops images with NaN or inf activations before any accumulator sees
        # them (vitprobe.study.stream), so the accumulator's own check would repeat it
        acc.check_finite = False
        return {"angles": one_pass_calibration(acc, model, context)}

    def findings(self, datasets: Datasets) -> list[str]:
        """Layers where attention goes to more / less similar patches than all pairs, the
        attention-weighted mean angle against 90 degrees, and each control's shift range."""
        if "angles" not in datasets:
            return []
        ds = datasets["angles"]
        main = main_model(ds)
        shift = main["layer_angle_shift"]  # (layer, variant)
        mean_attn = main["layer_mean_angle_attention"]
        out = []
        for variant in shift["variant"].values:
            s = shift.sel(variant=variant)
            layers = s["layer"].values
            similar = [layer_label(la) for la, v in zip(layers, s.values, strict=True) if v < 0]
            dissimilar = [layer_label(la) for la, v in zip(layers, s.values, strict=True)
                          if v > 0]
            out.append(f"Angles ({variant} embeddings): attention goes to more similar patches "
                       "than average (weighted mean angle below baseline) in layers "
                       f"{layer_list(similar)} and to less similar ones in layers "
                       f"{layer_list(dissimilar)}.")
            m = mean_attn.sel(variant=variant)
            above = [layer_label(la) for la, v in zip(m["layer"].values, m.values, strict=True)
                     if v > 90]
            out.append(f"Angles ({variant}): the attention-weighted mean angle exceeds 90 "
                       f"degrees in {layer_list(above) if above else 'no layer'} (range "
                       f"{float(np.nanmin(m.values)):.1f}-{float(np.nanmax(m.values)):.1f} "
                       "degrees).")
        for name, ctrl in controls(ds).items():
            c = ctrl["layer_angle_shift"]
            out.append(f"{name.capitalize()} control: angle shift {float(c.min()):+.1f} to "
                       f"{float(c.max()):+.1f} degrees across layers.")
        return out


ANALYSIS = AnglesAnalysis
