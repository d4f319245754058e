"""Mutual information between central neurons and their channel at every other patch.

File: ``mi.nc`` (:class:`~vitprobe.stats.JointCounts`, variables in
:mod:`vitprobe.stats.joint_result`). The joint counts grow with
layers x channels x positions x bins^2; when they exceed the run's memory budget the
(layer, sublayer) groups are split into several passes over the images
(:func:`plan_mi_passes`, sizes from :mod:`vitprobe.stats.planning`), and the passes'
Datasets are combined exactly (:func:`vitprobe.stats.results.combine_results`), so a
split run writes the same file as a single pass, count for count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import xarray as xr

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
from vitprobe.errors import ConfigurationError
from vitprobe.resources import format_bytes
from vitprobe.schema import main_model

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitprobe.models import ProbedViT
    from vitprobe.record import Accumulator
    from vitprobe.stats.layout import Group

__all__ = ["ANALYSIS", "MIAnalysis", "mi_bins", "mi_channels", "plan_mi_passes"]


# -- options and planning ---------------------------------------------------------------------
def mi_channels(model: ProbedViT, context: Context) -> np.ndarray:
    """Evenly spaced channel subset of ``context.option("mi_channels")`` channels
    (all ``d_model`` channels when unset or larger), sorted, int64."""
    n = context.option("mi_channels")
    if n is None or int(n) >= model.d_model:
        return np.arange(model.d_model)
    return np.unique(np.linspace(0, model.d_model - 1, int(n)).round().astype(np.int64))


def mi_bins(context: Context) -> int:
    """Quantile bins per neuron: ``context.option("mi_bins")``, else
    :func:`~vitprobe.stats.binning.choose_bins` of the run's image count; made even
    (the bin-width extrapolation merges pairs of bins), at least 2."""
    from vitprobe.stats.binning import choose_bins

    bins = int(context.option("mi_bins") or choose_bins(context.n_images))
    return max(2, bins - bins % 2)


def _calibration_images(context: Context, bins: int) -> int:
    """The calibration sample, checked: equal-frequency edges need a value per bin.

    Raises:
        ConfigurationError: fewer calibration images than bins.
    """
    if context.calibration_images < bins:
        raise ConfigurationError(
            f"the MI analysis's {bins} quantile bins per neuron need at least {bins} "
            f"calibration images, got {context.calibration_images} (of {context.n_images} "
            "images): lower --mi-bins, or raise --calibration-images or --n-images")
    return context.calibration_images


def plan_mi_passes(model: ProbedViT, context: Context) -> list[list[Group]]:
    """The (layer, sublayer) groups counted in each pass, balanced so that every pass
    fits ``context.memory_budget`` (:func:`vitprobe.stats.planning.plan_passes`).

    Raises:
        VitprobeError: one group alone does not fit the budget.
    """
    from vitprobe.stats.layout import NeuronLayout
    from vitprobe.stats.planning import plan_passes

    layout = NeuronLayout.from_model(model)
    bins = mi_bins(context)
    return plan_passes(layout, bins, context.memory_budget, groups=layout.groups(),
                       **_memory_options(model, context, bins))


def one_pass_memory(model: ProbedViT, context: Context) -> int:
    """Peak bytes of counting every (layer, sublayer) group in one pass: the smallest
    ``--memory-budget`` with which :func:`plan_mi_passes` plans a single pass."""
    from vitprobe.stats.layout import NeuronLayout
    from vitprobe.stats.planning import joint_memory

    layout = NeuronLayout.from_model(model)
    bins = mi_bins(context)
    return joint_memory(layout, bins, n_groups=len(layout.groups()),
                        **_memory_options(model, context, bins)).peak


def _memory_options(model: ProbedViT, context: Context, bins: int) -> dict[str, Any]:
    """The options of :func:`vitprobe.stats.planning.joint_memory` for this run."""
    return {"channels": len(mi_channels(model, context)),
            "calibration_images": _calibration_images(context, bins),
            "batch_size": context.batch_size, "max_images": context.n_images,
            "device": model.device.type}


# -- report -----------------------------------------------------------------------------------
def _estimator(ds: xr.Dataset) -> str:
    """What :func:`vitprobe.stats.mi.mi_from_counts` computed, in words, from the file."""
    bins = ds.attrs.get("bins", ds.sizes.get("bin_x", "?"))
    base = (f"plug-in MI of {bins}x{bins} equal-frequency (quantile) bins per neuron pair, "
            "edges fixed on the calibration images, with the Miller-Madow correction "
            "(minus (non-empty cells - non-empty rows - non-empty columns + 1) / 2N)")
    method = str(ds.attrs.get("method", "extrapolated"))
    if method == "extrapolated":
        kappa = ds.attrs.get("kappa")
        if kappa is None:  # files written before the attribute (imports torch: slow)
            from vitprobe.stats.mi import KAPPA as kappa
        return (base + f", extrapolated in bin width as I_B + {float(kappa):g} (I_B - I_B/2) "
                f"(I_B/2 from merging adjacent bins of the same counts; kappa = {float(kappa):g} "
                "calibrated on Gaussian and Student-t pairs), not clipped at 0, in nats")
    if method == "miller-madow":
        return base + ", not clipped at 0, in nats"
    return f"plug-in MI of {bins}x{bins} equal-frequency bins ({method}), in nats"


def _draw_mi(datasets: Datasets) -> Figure:
    from vitprobe.plots.neurons import plot_mi_vs_distance

    return plot_mi_vs_distance(datasets["mi"])


def _caption_mi(datasets: Datasets, manifest: dict) -> str:
    ds = datasets["mi"]
    return (
        "Mean mutual information between the spatially central neuron of each channel and "
        "the same channel at every other patch, against distance from the centre (patch units, "
        "rounded), one line per layer, MHA (attention output) and MLP sublayers side by side "
        f"(poster Fig. 4). {ds.sizes['channel']} channels per sublayer over "
        f"{n_images_text(manifest)}; {_estimator(ds)}. Error bars: split-half (even/odd "
        "images) standard error; grey band: the null, the same estimator on x from one image "
        "and y from another, independent image (mean +- s.d. over null pairs)."
        + control_note(ds)
    )


def _findings(ds: xr.Dataset) -> list[str]:
    main = main_model(ds)
    curve = main["mi_vs_distance"]  # (layer, sublayer, distance)
    out = []
    for sub in curve["sublayer"].values:
        c = curve.sel(sublayer=sub)
        name = sublayer_name(sub)
        if 1 not in c["distance"].values:
            continue
        at1 = c.sel(distance=1)
        if np.all(np.isnan(at1.values)):
            continue
        best = layer_label(at1["layer"].values[int(np.nanargmax(at1.values))])
        out.append(f"{name}: the highest MI at distance 1 is in layer {best} "
                   f"({float(np.nanmax(at1.values)):.3f} nats); layer "
                   f"{layer_label(at1['layer'].values[0])} has {float(at1.values[0]):.3f} nats.")
        far = c.where(c["distance"] >= 1).mean("distance", skipna=True)
        if far.sizes["layer"] > 1:
            first, rest = float(far.values[0]), float(np.nanmean(far.values[1:]))
            relation = "lower" if first < rest else "higher"
            out.append(f"{name}: averaged over distances >= 1, layer "
                       f"{layer_label(far['layer'].values[0])} has {relation} MI "
                       f"({first:.3f} nats) than the other layers (mean {rest:.3f} nats).")
        valid = c["distance"].values[~np.all(np.isnan(c.values), axis=0)]
        dmax = int(valid.max()) if valid.size else 1
        if dmax > 1:
            ratio = c.sel(distance=dmax) / at1
            fastest = layer_label(ratio["layer"].values[int(np.nanargmin(ratio.values))])
            out.append(f"{name}: MI falls off fastest with distance in layer {fastest} "
                       f"(MI at distance {dmax} is {float(np.nanmin(ratio.values)):.0%} of its "
                       "value at distance 1).")
    if "mi_null_level" in main:
        null = float(np.nanmean(main["mi_null_level"].values))
        out.append(f"Null level: {null:.4f} nats on average, the MI the same estimator gives "
                   "between the central neuron of one image and a neuron of another, "
                   "independent image (true MI 0).")
    return out


# -- the plug-in ------------------------------------------------------------------------------
class MIAnalysis(Analysis):
    """Mutual information against distance (``--analyses mi``), possibly in several passes.

    :meth:`plan` keeps the pass plan; :meth:`accumulators` recomputes it when called
    without :meth:`plan` (the plan depends on the model's shape and the context only,
    so a rebuilt accumulator always matches the one that counted).
    """

    name = "mi"
    summary = "mutual information of central neurons against distance (bowtie counts)"
    needs_images = True
    files = ("mi",)
    section = STATS
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec("stats", "mi_vs_distance", "Mutual information against distance", ("mi",),
                   _draw_mi, _caption_mi),
    )

    def __init__(self) -> None:
        self._passes: dict[tuple, list[list[Group]]] = {}

    def _plan_for(self, model: ProbedViT, context: Context) -> list[list[Group]]:
        # keyed by what the plan depends on: main model and control share it
        key = (model.n_layers, model.d_model, tuple(model.grid), model.n_prefix,
               model.device.type, context.n_images, context.calibration_images,
               context.batch_size, context.memory_budget, context.option("mi_channels"),
               context.option("mi_bins"))
        if key not in self._passes:
            self._passes[key] = plan_mi_passes(model, context)
        return self._passes[key]

    def plan(self, model: ProbedViT, context: Context) -> int:
        """Number of passes the counts need within ``context.memory_budget``."""
        return len(self._plan_for(model, context))

    def plan_note(self, model: ProbedViT, context: Context) -> str | None:
        """More --mi-channels than the model has (all are studied); several passes: how
        many, and the budget with which one would do."""
        notes = []
        asked = context.option("mi_channels")
        if asked is not None and int(asked) > model.d_model:
            notes.append(f"mi: --mi-channels {asked} is more than the model's {model.d_model} "
                         f"channels per sublayer: all {model.d_model} are studied")
        n = len(self._plan_for(model, context))
        if n > 1:
            need = one_pass_memory(model, context)
            notes.append(
                f"mi: the counts of {mi_bins(context)} x {mi_bins(context)} bins need {n} "
                f"passes over the images (a forward of each image per pass) within "
                f"--memory-budget {format_bytes(context.memory_budget)}; --memory-budget "
                f"{math.ceil(need / 1e8) / 10:.1f}GB counts them in one pass, as do fewer "
                "--mi-channels or --mi-bins")
        return "\n".join(notes) or None

    def accumulators(self, model: ProbedViT, context: Context,
                     pass_index: int) -> dict[str, Accumulator]:
        """``{"mi": JointCounts}`` over the groups of pass ``pass_index`` (``{}`` past the
        last pass)."""
        passes = self._plan_for(model, context)
        if pass_index >= len(passes):
            return {}
        from vitprobe.stats.joint import JointCounts
        from vitprobe.stats.layout import NeuronLayout

        bins = mi_bins(context)
        groups, channels = passes[pass_index], mi_channels(model, context)
        counts = JointCounts(NeuronLayout.from_model(model), bins, groups=groups,
                             channels=channels,
                             calibration_images=_calibration_images(context, bins))
        # a channel subset is kept as a copy; all channels as views of the whole sites
        subset = (len(groups) * model.n_patches * channels.size
                  if channels.size < model.d_model else None)
        return {"mi": one_pass_calibration(counts, model, context, values_per_image=subset)}

    def results(self, finished: Mapping[str, Sequence[Accumulator]]) -> Datasets:
        """The passes' Datasets combined exactly (one pass: its own result)."""
        from vitprobe.stats.results import combine_results

        parts = [acc.result() for acc in finished["mi"]]
        return {"mi": parts[0] if len(parts) == 1 else combine_results(parts)}

    def findings(self, datasets: Datasets) -> list[str]:
        """Where MI at distance 1 peaks, how layer 1 compares, which layer falls off
        fastest, and the null level (main model)."""
        return _findings(datasets["mi"]) if "mi" in datasets else []


ANALYSIS = MIAnalysis
