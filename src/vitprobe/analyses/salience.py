"""The salience analysis plug-in: pop-out, centre-surround and eigen-stimuli (model-only).

Computes :func:`vitprobe.salience.battery.salience_dataset` for every model of the run
(the main model first, then its controls), stacks them along ``model`` and writes
``results/salience.nc``. Options (``Context.options``): ``salience_seeds``,
``salience_levels``, ``salience_jitters``, ``salience_placements``,
``salience_features``, ``salience_cell``, ``salience_surround_distances``,
``salience_eigen_layers``, ``salience_eigen_steps``, ``salience_eigen_images``,
``salience_batch_size`` (:class:`vitprobe.salience.SalienceConfig`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from vitprobe.analyses.base import Analysis, Context, Datasets, FigureSpec, ReportSection
from vitprobe.schema import controls, has_control, main_model, stack_models

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitprobe.models import ProbedViT

__all__ = ["ANALYSIS", "SalienceAnalysis", "salience_findings"]

SECTION = ReportSection("salience", "Salience: does attention single out what stands out?")


def _draw(name: str) -> Callable[[Datasets], Figure]:
    def draw(datasets: Datasets) -> Figure:
        from vitprobe.plots import salience as plots

        return getattr(plots, name)(datasets["salience"])

    return draw


def _control_note(ds: xr.Dataset) -> str:
    return (" The random-init control is drawn dashed grey." if has_control(ds) else
            " No control was run.")


def _caption_curves(datasets: Datasets, manifest: dict) -> str:
    ds = datasets["salience"]
    return (
        "Pop-out search arrays: grating discs on the patch grid, all identical except one "
        "singleton differing in orientation, hue, luminance contrast or size. Salience index "
        "= log2 of the attention the singleton's tokens receive (top: from the other patch "
        "tokens; middle: from the class token) over the mean a distractor receives, "
        "attention averaged over heads, one line per layer; 0 is no preference, the level at "
        "zero difference is the null. Bottom: the singleton-distractor ln1 angle minus the "
        f"distractor-distractor angle. Aligned arrays, no distractor jitter; "
        f"{int(ds.attrs.get('seeds', ds.sizes.get('seed', 0)))} seeds (positions and base "
        "values), bands: Student-t 95% CI. Data: results/salience.nc." + _control_note(ds))


def _caption_examples(datasets: Datasets, manifest: dict) -> str:
    return ("One array per feature at the maximal difference, with the attention every patch "
            "receives (mean over heads and patch queries) in a few layers as a heat map; the "
            "singleton's cell is outlined. Data: results/salience.nc (example_attention).")


def _caption_surround(datasets: Datasets, manifest: dict) -> str:
    ds = datasets["salience"]
    return ("Centre-surround: a centre grating with a surround filling every cell from a gap "
            "on, iso (same orientation or hue) or cross (orthogonal, complementary), against "
            "the centre alone. Left, middle: suppression index of the centre's MHA and MLP "
            "neurons, (|r_alone| - |r_surround|) / (|r_alone| + |r_surround|) averaged over "
            "channels, at the smallest gap (positive: the surround suppresses). Right: log2 "
            "attention the centre's tokens give to an iso over a cross surround, per gap "
            "(head-averaged). 95% CI over seeds. Data: results/salience.nc (surround_*)."
            + _control_note(ds))


def _caption_gallery(datasets: Datasets, manifest: dict) -> str:
    ds = main_model(datasets["salience"])
    steps = ds.attrs.get("eigen_steps", "?")
    return (
        "Eigen-stimuli: patches optimised (pixels bounded in [0, 1], the rest of a demo photo "
        f"fixed, at most {steps} Adam steps) so that their normalised ln1 token minus the "
        "image's mean patch token aligns with a mode of the head's LayerNorm-folded "
        "query-key form within the subspace a patch's pixels can move its token in (the "
        "whole form's top modes lie mostly outside it): the top positive (sym+) and most "
        "negative (sym-) eigenvectors of M_sym, the leading plane of M_asym (query b, key a: "
        "asym+), and random directions in the same subspace. Titles: cosines reached "
        "(query/key) and the attention from query to key relative to uniform. Bars: the "
        "measured logit minus the query's mean against the weight-level prediction "
        "x^ M^ y^T of the whole normalised tokens and dx^ M^ dy^T of the patches' aligned "
        "changes alone. Data: results/salience.nc (eigen_*).")


class SalienceAnalysis(Analysis):
    """Does attention single out what stands out? (module docstring)."""

    name = "salience"
    summary = "pop-out, centre-surround and eigen-stimuli: attention to what stands out"
    needs_images = False
    files = ("salience",)
    section = SECTION
    figures = (
        FigureSpec(SECTION.slug, "salience_curves", "Salience against feature difference",
                   ("salience",), _draw("plot_salience_curves"), _caption_curves),
        FigureSpec(SECTION.slug, "salience_examples", "Attention on example arrays",
                   ("salience",), _draw("plot_popout_examples"), _caption_examples),
        FigureSpec(SECTION.slug, "salience_surround", "Centre-surround",
                   ("salience",), _draw("plot_surround"), _caption_surround),
        FigureSpec(SECTION.slug, "salience_eigen", "Eigen-stimulus gallery",
                   ("salience",), _draw("plot_eigen_gallery"), _caption_gallery,
                   variables=("eigen_cosine",)),
    )

    def run(self, models: Mapping[str, ProbedViT], context: Context,
            progress: Callable[[str], None] | None = None) -> Datasets:
        from vitprobe.salience.battery import SalienceConfig, salience_datasets

        cfg = SalienceConfig.from_options(context.options)
        parts = salience_datasets(models, cfg, progress=progress, announce=True)
        return {"salience": stack_models(parts)}

    def findings(self, datasets: Datasets) -> list[str]:
        return salience_findings(datasets["salience"]) if "salience" in datasets else []


def _ci(v: xr.Dataset, name: str) -> str:
    return (f"{float(v[name]):+.2f} [{float(v[name + '_lower']):+.2f}, "
            f"{float(v[name + '_upper']):+.2f}]")


def _layers(values: list[int]) -> str:
    return ", ".join(str(v + 1) for v in values) if values else "none"


def salience_findings(ds: xr.Dataset) -> list[str]:
    """Sentences computed from the saved numbers (layers 1..L), whatever they say."""
    out: list[str] = []
    main = main_model(ds)
    ctrl = next(iter(controls(ds).values()), None)
    L = main.sizes["layer"]
    top = float(main["level"].values[-1])
    for feature in [str(f) for f in main["feature"].values]:
        v = main.sel(feature=feature, jitter=0.0, placement="aligned", source="patches")
        at_max = v.sel(level=top)
        above = [layer for layer in range(L)
                 if float(at_max["salience_index_lower"].isel(layer=layer)) > 0]
        below = [layer for layer in range(L)
                 if float(at_max["salience_index_upper"].isel(layer=layer)) < 0]
        slope = np.array([np.polyfit(v["level"].values, v["salience_index"].isel(layer=layer)
                                     .values, 1)[0] for layer in range(L)])
        best = int(np.nanargmax(at_max["salience_index"].values))
        diff = float(main["difference"].sel(feature=feature, level=top))
        less = f"reliably less in layers {_layers(below)}" if below else "in no layer less"
        text = (f"Pop-out, {feature} (difference {diff:g}): the singleton receives reliably "
                f"more attention from the patch tokens than a distractor (95% CI above 0) in "
                f"layers {_layers(above)}, {less}; the largest salience index is in layer "
                f"{best + 1} ({_ci(at_max.isel(layer=best), 'salience_index')} log2)")
        if ctrl is not None:
            c = ctrl.sel(feature=feature, jitter=0.0, placement="aligned", source="patches",
                         level=top)["salience_index"]
            text += (f"; random-init: {float(c.min()):+.2f} to {float(c.max()):+.2f} across "
                     "layers")
        rising = [layer for layer in range(L) if slope[layer] > 0]
        out.append(text + f". The index rises with feature difference in "
                          f"{len(rising)} of {L} layers.")
        ang = at_max["angle_excess"].values
        out.append(f"{feature}: the singleton's ln1 tokens are further from the distractors "
                   f"than the distractors from each other by {np.nanmin(ang):+.1f} to "
                   f"{np.nanmax(ang):+.1f} degrees across layers (at difference {diff:g}).")
    if "jitter" in main.dims and main.sizes["jitter"] > 1:
        j = float(main["jitter"].values[-1])
        a = main["salience_index"].sel(level=top, placement="aligned", source="patches")
        drop = (a.sel(jitter=0.0) - a.sel(jitter=j)).mean("feature")
        out.append(f"Distractor jitter {j:g}: the salience index at maximal difference changes "
                   f"by {-float(drop.mean()):+.2f} log2 on average over features and layers.")
    if "straddling" in main["placement"].values:
        a = main["salience_index"].sel(level=top, jitter=0.0, source="patches")
        d = (a.sel(placement="straddling") - a.sel(placement="aligned")).mean("feature")
        out.append(f"Elements straddling patch borders: the index at maximal difference "
                   f"differs from aligned arrays by {float(d.mean()):+.2f} log2 on average.")
    if "conj_salience_index" in main:
        c = main.sel(placement="aligned", source="patches")
        t, n = c.sel(conjunction="target"), c.sel(conjunction="null")
        above = [layer for layer in range(L)
                 if float(t["conj_salience_index_lower"].isel(layer=layer)) > 0]
        t_mean = float(t["conj_salience_index"].mean())
        n_mean = float(n["conj_salience_index"].mean())
        out.append(f"Conjunction targets (orientation x colour): salience index above 0 in "
                   f"layers {_layers(above)}; mean over layers {t_mean:+.2f} against "
                   f"{n_mean:+.2f} for the null.")
    if "suppression_index" in main:
        d0 = main["distance"].values[0]
        for feat in [str(f) for f in main["surround_feature"].values]:
            s = main.sel(surround_feature=feat, distance=d0)
            iso = s["suppression_index"].sel(relation="iso")
            cross = s["suppression_index"].sel(relation="cross")
            stronger = [layer for layer in range(L)
                        if float((iso - cross).sel(sublayer="mlp").isel(layer=layer)) > 0]
            lu = s["like_unlike_index"]
            like = [layer for layer in range(L) if float(s["like_unlike_index_lower"]
                                                         .isel(layer=layer)) > 0]
            unlike = [layer for layer in range(L) if float(s["like_unlike_index_upper"]
                                                           .isel(layer=layer)) < 0]
            out.append(
                f"Centre-surround ({feat}, gap {d0}): an iso surround suppresses the centre's "
                f"MLP neurons more than a cross surround in layers {_layers(stronger)} "
                f"(suppression index iso {float(iso.sel(sublayer='mlp').mean()):+.3f}, cross "
                f"{float(cross.sel(sublayer='mlp').mean()):+.3f}, mean over layers); the "
                f"centre attends reliably more to a like surround in layers {_layers(like)} "
                f"and to an unlike one in layers {_layers(unlike)} (log2 iso/cross from "
                f"{float(lu.min()):+.2f} to {float(lu.max()):+.2f}).")
    if "eigen_cosine" in main:
        for layer in main["eigen_layer"].values:
            e = main.sel(eigen_layer=layer)
            opt = e.sel(route="optimised")
            cos = opt["eigen_cosine"].sel(pair=["sym+", "sym-", "asym+"])
            reached = [int(h) + 1 for h in opt["head"].values
                       if float(cos.sel(head=h).min()) >= 0.9]
            # the median over heads: one head's logits can be ten times the others'
            adv = opt["eigen_logit_adv"].median("head")
            overlap = e["eigen_mode_overlap"]
            out.append(
                f"Eigen-stimuli, layer {int(layer) + 1}: a patch's pixels move its token in a "
                f"{int(e['eigen_reachable_rank'])}-dimensional subspace, which holds little of "
                "the whole query-key form's top modes (|cosine| of the reachable modes with "
                f"them: median {float(overlap.median()):.2f}, at most "
                f"{float(overlap.max()):.2f}); the targets are the modes within it. "
                f"The optimised patches reach cosines "
                f"{float(cos.min()):.2f} to {float(cos.max()):.2f} (median "
                f"{float(cos.median()):.2f}) with their modes; "
                + (f"every target of heads {', '.join(map(str, reached))} reaches 0.9"
                   if reached else "no head has all its targets at 0.9 or more")
                + ". Logit over the "
                f"query's mean, median over heads: sym+ {float(adv.sel(pair='sym+')):+.2f}, sym- "
                f"{float(adv.sel(pair='sym-')):+.2f}, asym+ {float(adv.sel(pair='asym+')):+.2f}"
                f", asym- {float(adv.sel(pair='asym-')):+.2f}, random "
                f"{float(adv.sel(pair='random')):+.2f}; the aligned changes alone predict "
                + ", ".join(f"{p} {float(opt['eigen_logit_pred_change'].sel(pair=p).median()):+.2f}"
                            for p in ("sym+", "sym-", "asym+", "asym-", "random"))
                + ". The folded form x^ M^ y^T correlates "
                f"{float(opt['eigen_predicted_corr'].min()):.2f} to "
                f"{float(opt['eigen_predicted_corr'].max()):.2f} with the per-query-centred "
                f"logits across heads (real patches: "
                f"{float(e.sel(route='real')['eigen_predicted_corr'].min()):.2f} to "
                f"{float(e.sel(route='real')['eigen_predicted_corr'].max()):.2f}); real "
                f"patches align at best {float(e.sel(route='real')['eigen_cosine'].max()):.2f}"
                " on average over images.")
    return out


ANALYSIS = SalienceAnalysis
