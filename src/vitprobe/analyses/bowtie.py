"""The bowtie analysis: fine conditional histograms of neighbouring neurons, their
conditional statistics and the divisive normalization they imply.

Streams one :class:`~vitprobe.stats.bowtie.BowtieCounts` per model in the first pass
over the images and writes ``results/bowtie.nc``: the counts of the selected pairs
(per layer and sublayer: the channels with the highest, median and lowest
calibration MI at distance 1, seeded random channels and cross-channel pairs), both
translation-pooled and central, with E[y | x], SD[y | x], correlation, bowtie index
and the fit ``var(y | x) = sigma^2 + w x^2`` (Schwartz & Simoncelli 2001), with
jackknife intervals over image folds (:mod:`vitprobe.stats.conditional`).

Options (``Context.options``): ``bowtie_bins`` (41), ``bowtie_folds`` (8),
``bowtie_random`` (2), ``bowtie_cross`` (2).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from vitprobe.analyses.base import (
    Analysis,
    Context,
    Datasets,
    FigureSpec,
    ReportSection,
    one_pass_calibration,
)
from vitprobe.schema import controls, main_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitprobe.models import ProbedViT
    from vitprobe.record import Accumulator

__all__ = ["ANALYSIS", "BowtieAnalysis"]

_NAMES = {"attn": "MHA", "mlp": "MLP"}

#: the pair drawn in the bowtie rows and conditional-SD figures: the channel with the
#: median calibration MI at distance 1 is a typical neuron; the highest-MI channel of
#: the offline DINOv2-S/14 mostly shows its strong linear dependence (a diagonal)
FIGURE_PAIR = "median"


def _n_images(ds: xr.Dataset, manifest: dict) -> str:
    images = manifest.get("images", {}) if isinstance(manifest, dict) else {}
    kind = ("built-in demo crops, not ImageNet" if images.get("demo")
            else images.get("source", "images"))
    return f"{int(ds.attrs.get('n_images', 0))} images ({kind})"


def _estimators(ds: xr.Dataset) -> str:
    return (f"{ds.sizes['bin_x']} x {ds.sizes['bin_y']} equal-width bins per pair over each "
            f"channel's calibration mean +- its {ds.attrs.get('range_quantile', 0.995)} "
            "quantile of |x - mean| (values beyond go to the outer bins); conditional SD "
            "Sheppard-corrected; bowtie index = weighted least-squares slope of the "
            "standardised SD[y|x] on |x|; w from weighted least squares of "
            "var(y|x) = sigma^2 + w x^2 in standardised units; 95 % intervals: "
            f"delete-one-fold jackknife over {ds.attrs.get('folds', '?')} image folds")


def _draw_rows(sublayer: str, control: bool = False) -> Callable[[Datasets], Figure]:
    def draw(datasets: Datasets) -> Figure:
        from vitprobe.plots.bowtie import plot_bowtie_rows

        ds = datasets["bowtie"]
        one = next(iter(controls(ds).values())) if control else main_model(ds)
        return plot_bowtie_rows(one, sublayer, pair_kind=FIGURE_PAIR)

    return draw


def _caption_rows(sublayer: str, control: bool = False) -> Callable[[Datasets, dict], str]:
    def caption(datasets: Datasets, manifest: dict) -> str:
        ds = datasets["bowtie"]
        one = next(iter(controls(ds).values())) if control else main_model(ds)
        who = f"the control ({next(iter(controls(ds)))})" if control else "the model under study"
        return (
            f"Bowtie plots of {_NAMES[sublayer]} neurons, one row per layer, one column per "
            "distance d (patches; poster Fig. 3 with fine cells): for each layer's channel "
            f"with the {FIGURE_PAIR} calibration MI at distance 1 (a typical neuron; "
            "channels are ranked by the quantile-binned MI between the central neuron and "
            "its four neighbours on the calibration images), the histogram of y (the channel "
            "at one patch) given x (the same channel d patches away), pooled over every "
            "pair of patches at that distance (translation pooling), every x column scaled "
            "to its maximum; axes in activation units. Cyan: E[y|x] and E[y|x] +- SD[y|x]; "
            "corner: bowtie index. A column that widens with |x| is a bowtie: dependence "
            f"in variance, not in the mean. Data: {who}, {_n_images(one, manifest)}; "
            f"{_estimators(one)}. File: results/bowtie.nc.")

    return caption


def _draw_sd(sublayer: str) -> Callable[[Datasets], Figure]:
    def draw(datasets: Datasets) -> Figure:
        from vitprobe.plots.bowtie import plot_conditional_sd

        return plot_conditional_sd(datasets["bowtie"], sublayer, pair_kind=FIGURE_PAIR)

    return draw


def _caption_sd(sublayer: str) -> Callable[[Datasets, dict], str]:
    def caption(datasets: Datasets, manifest: dict) -> str:
        ds = main_model(datasets["bowtie"])
        controls_shown = _control_note(
            datasets["bowtie"], f", each for its own channel with the {FIGURE_PAIR} "
            "calibration MI")
        return (
            f"Conditional standard deviation SD[y|x] of {_NAMES[sublayer]} neurons against "
            "x, both in units of their marginal SD, one panel per layer and one line per "
            f"distance (light: near, dark: far), for the channel with the {FIGURE_PAIR} "
            "calibration MI at distance 1, all position pairs at each distance pooled. A "
            "flat line at 1 is no variance dependence; a V is a bowtie, and its flattening "
            f"with distance is the bowtie fading.{controls_shown} "
            f"{_n_images(ds, manifest)}; "
            f"{_estimators(ds)}. File: results/bowtie.nc.")

    return caption


def _control_note(ds: xr.Dataset, detail: str = "") -> str:
    """How a figure shows the controls (grey dashed, nearest distance), or that none ran."""
    names = list(controls(ds))
    if not names:
        return " No control was run (add <code>--control random-init</code>)."
    return (f" The controls ({', '.join(names)}) are the grey dashed lines at the nearest "
            f"distance{detail}.")


def _draw_summary(datasets: Datasets) -> Figure:
    from vitprobe.plots.bowtie import plot_bowtie_summary

    return plot_bowtie_summary(datasets["bowtie"])


def _caption_summary(datasets: Datasets, manifest: dict) -> str:
    ds = datasets["bowtie"]
    main = main_model(ds)
    ctrl = _control_note(ds)
    return (
        "Per layer, MHA and MLP: the correlation of neighbouring neurons (linear "
        "dependence), the bowtie index (variance dependence: slope of the standardised "
        "SD[y|x] on |x|), the weight w of the divisive normalization var(y|x) = sigma^2 + "
        "w x^2 fitted to the conditional variances (Schwartz &amp; Simoncelli 2001), and "
        "the share of the pair's MI left after dividing y by its predicted SD (MI of 8 x 8 "
        "re-binned counts, Miller-Madow corrected). Means over each layer's same-channel "
        "pairs (highest, median and lowest calibration MI at distance 1, and seeded "
        "random channels), all position pairs at each distance pooled, one line per "
        f"distance; error bars: 95 % jackknife intervals. {_n_images(main, manifest)}; "
        f"{_estimators(main)}.{ctrl} File: results/bowtie.nc.")


def _layer_value(ds: xr.Dataset, name: str, sub: str, d: int) -> np.ndarray:
    return ds[name].sel(sublayer=sub, pooling="translation", distance=d).values


def _mean(v: np.ndarray) -> float:
    """Mean of the finite values (NaN, without a warning, when there are none)."""
    v = np.asarray(v, np.float64)
    ok = np.isfinite(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


class BowtieAnalysis(Analysis):
    """Fine bowties, conditional statistics and the divisive normalization they imply."""

    name = "bowtie"
    summary = ("bowtie plots with fine bins, conditional mean and SD, bowtie index and the "
               "divisive normalization weight per layer")
    needs_images = True
    files = ("bowtie",)
    section = ReportSection("stats", "Statistical analysis: neurons, bowties and mutual "
                                     "information")
    figures = (
        FigureSpec("stats", "bowtie_rows_attn", "Bowties at growing distance: MHA",
                   ("bowtie",), _draw_rows("attn"), _caption_rows("attn")),
        FigureSpec("stats", "bowtie_rows_mlp", "Bowties at growing distance: MLP",
                   ("bowtie",), _draw_rows("mlp"), _caption_rows("mlp")),
        FigureSpec("stats", "bowtie_conditional_sd_attn",
                   "Conditional SD against x and distance: MHA", ("bowtie",),
                   _draw_sd("attn"), _caption_sd("attn")),
        FigureSpec("stats", "bowtie_conditional_sd_mlp",
                   "Conditional SD against x and distance: MLP", ("bowtie",),
                   _draw_sd("mlp"), _caption_sd("mlp")),
        FigureSpec("stats", "bowtie_summary",
                   "Bowtie index and divisive normalization per layer", ("bowtie",),
                   _draw_summary, _caption_summary),
        FigureSpec("stats", "bowtie_rows_attn_control", "Bowties of the control: MHA",
                   ("bowtie",), _draw_rows("attn", True), _caption_rows("attn", True),
                   control_only=True),
        FigureSpec("stats", "bowtie_rows_mlp_control", "Bowties of the control: MLP",
                   ("bowtie",), _draw_rows("mlp", True), _caption_rows("mlp", True),
                   control_only=True),
    )

    def accumulators(self, model: ProbedViT, context: Context,
                     pass_index: int) -> dict[str, Accumulator]:
        """One :class:`~vitprobe.stats.bowtie.BowtieCounts` in the first pass."""
        if pass_index != 0:
            return {}
        from vitprobe.stats.bowtie import BowtieCounts
        from vitprobe.stats.layout import NeuronLayout

        counts = BowtieCounts(
            NeuronLayout.from_model(model), bins=int(context.option("bowtie_bins", 41)),
            n_random=int(context.option("bowtie_random", 2)),
            n_cross=int(context.option("bowtie_cross", 2)),
            folds=int(context.option("bowtie_folds", 8)),
            calibration_images=int(context.calibration_images), seed=int(context.seed))
        return {"bowtie": one_pass_calibration(counts, model, context)}

    def results(self, finished: Mapping[str, Sequence[Accumulator]]) -> Datasets:
        """The counts with every conditional statistic, the normalization fit and the
        per-layer summaries (:func:`vitprobe.stats.bowtie.bowtie_dataset`)."""
        parts = finished["bowtie"]
        if len(parts) != 1:
            raise ValueError(f"the bowtie analysis runs in one pass, got {len(parts)}")
        ds = parts[0].result(statistics=True)
        ds.attrs["analysis"] = self.name
        return {"bowtie": ds}

    def findings(self, datasets: Datasets) -> list[str]:
        """Where the bowtie is strongest, whether it fades with distance, how much a
        divisive normalization would remove, MHA against MLP, trained against control."""
        if "bowtie" not in datasets:
            return []
        ds = datasets["bowtie"]
        main = main_model(ds)
        pooled = [int(d) for d in np.atleast_1d(main.attrs.get("pooled_distances", []))
                  if d > 0]
        if not pooled:
            return []
        near, far = pooled[0], pooled[-1]
        out = []
        subs = [str(s) for s in main.sublayer.values]
        layers = main.layer.values
        for sub in subs:
            bi = _layer_value(main, "layer_bowtie_index", sub, near)
            if not np.isfinite(bi).any():
                continue
            lo = _layer_value(main, "layer_bowtie_index_lo", sub, near)
            hi = _layer_value(main, "layer_bowtie_index_hi", sub, near)
            top, bottom = int(np.nanargmax(bi)), int(np.nanargmin(bi))
            corr = _layer_value(main, "layer_correlation", sub, near)
            bif = _layer_value(main, "layer_bowtie_index", sub, far)
            w = _layer_value(main, "layer_w", sub, near)
            rem = _layer_value(main, "layer_mi_remaining", sub, near)
            change = _mean(bif) - _mean(bi)
            trend = ("stays about the same," if abs(change) < 0.01 else
                     "falls (the bowtie fades with distance)," if change < 0 else
                     "rises,")
            out.append(
                f"{_NAMES.get(sub, sub)}: the bowtie (variance dependence of neighbouring "
                f"neurons) is strongest in layer {layers[top] + 1} (bowtie index "
                f"{bi[top]:.2f}, 95 % CI {lo[top]:.2f} to {hi[top]:.2f}, at distance {near}; "
                f"correlation {corr[top]:.2f}) and weakest in layer {layers[bottom] + 1} "
                f"({bi[bottom]:.2f}); averaged over layers it {trend} {_mean(bi):.3f} at "
                f"distance {near} against {_mean(bif):.3f} at distance {far}.")
            if np.isfinite(w).any():
                wlo = _layer_value(main, "layer_w_lo", sub, near)
                n_pos = int(np.sum(wlo > 0))
                out.append(
                    f"{_NAMES.get(sub, sub)}: the divisive normalization var(y|x) = "
                    f"sigma^2 + w x^2 fits w from {np.nanmin(w):.2f} to {np.nanmax(w):.2f} "
                    f"across layers at distance {near} (standardised units; w > 0 with "
                    f"95 % confidence in {n_pos} of {int(np.isfinite(w).sum())} layers); "
                    f"dividing y by its predicted SD would leave {100 * _mean(rem):.0f} % "
                    "of the pairs' MI on average. "
                    + ("LayerNorm and attention thus leave a variance dependence that a "
                       "divisive normalization would remove." if n_pos else
                       "No layer keeps a variance dependence that a divisive "
                       "normalization would remove: LayerNorm and attention already "
                       "leave none at this resolution."))
        if len(subs) == 2:
            a = _mean(_layer_value(main, "layer_bowtie_index", "attn", near))
            m = _mean(_layer_value(main, "layer_bowtie_index", "mlp", near))
            if np.isfinite(a) and np.isfinite(m):
                out.append(f"Across layers, the mean bowtie index at distance {near} is "
                           f"{a:.2f} for the MHA and {m:.2f} for the MLP sublayers.")
        for name, cds in controls(ds).items():
            vals = [_mean(_layer_value(cds, "layer_bowtie_index", s, near)) for s in subs]
            mains = [_mean(_layer_value(main, "layer_bowtie_index", s, near))
                     for s in subs]
            parts = [f"{_NAMES.get(s, s)} {c:.2f} (model under study {v:.2f})"
                     for s, c, v in zip(subs, vals, mains, strict=True)]
            out.append(f"The {name} control's mean bowtie index at distance {near}: "
                       + ", ".join(parts) + ".")
        return out


ANALYSIS = BowtieAnalysis
