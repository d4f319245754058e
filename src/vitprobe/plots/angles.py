"""Figures of attention against embedding angle, drawn from the saved Dataset alone.

- :func:`plot_angle_distributions`: per layer (small multiples, layers 1..L), the
  distribution of the angle between the two tokens of a pair over all pairs (baseline,
  grey) and weighted by attention (colour; thin lines: single heads), with 90 degrees
  marked; the poster's "Similarity or dissimilarity?" panel (Philip, Pan & Schwartz).
- :func:`plot_attention_vs_angle`: per layer, mean attention of the pairs in each angle
  bin relative to uniform attention over the keys, trained against random init.
- :func:`plot_angle_summary`: per-layer curves, trained against random init, raw and
  centred embeddings: attention-weighted minus baseline mean angle, share of attention
  above 90 degrees, logit-cosine correlations, the embeddings' anisotropy, and the
  query-key weight measures (positive share of eig(M_sym), weighted singular-vector
  cosine (Pan et al. 2024), symmetry score 2s-1 (Saponati et al. 2025)).

Every function takes a Dataset from :mod:`vitprobe.attention` (with or without a
``model`` dim) and returns a ``matplotlib.figure.Figure`` (Agg backend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vitprobe.plots.common import as_results, model_color, model_label, model_names, save_figure
from vitprobe.schema import MODEL_DIM

__all__ = [
    "plot_angle_distributions",
    "plot_angle_summary",
    "plot_attention_vs_angle",
    "save_angle_figures",
]

_BASELINE = "0.6"
#: the model under study; controls take their grey from :func:`vitprobe.schema.model_style`
_MAIN_COLOR = "tab:blue"
_VARIANT_STYLE = {"raw": "-", "centered": "--"}
_DEG = "angle between embeddings (degrees)"


def _models(ds: xr.Dataset) -> list[str]:
    return model_names(ds)


def _sel(ds: xr.Dataset, model: str) -> xr.Dataset:
    return as_results(ds).sel({MODEL_DIM: model})


def _colors(ds: xr.Dataset) -> dict[str, str]:
    return {m: model_color(ds, m, _MAIN_COLOR) for m in model_names(ds)}


def _label(ds: xr.Dataset, model: str) -> str:
    return model_label(ds, model)


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, n)
    return math.ceil(n / cols), cols


def _context(ds: xr.Dataset) -> str:
    tokens = "all tokens" if int(ds.attrs.get("include_prefix", 0)) else "patch tokens"
    return (f"{ds.attrs.get('embedding', 'ln1')} embeddings, {tokens}, "
            f"{ds.attrs.get('n_images', '?')} images")


def _pooled_density(sub: xr.Dataset) -> np.ndarray:
    """Attention-weighted angle density with heads pooled: (layer, angle_bin), 1/degree."""
    hist = sub["attention_hist"].sum("head").values
    width = float(ds_width(sub))
    mass = hist.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hist / (mass * width)


def ds_width(ds: xr.Dataset) -> float:
    return float(ds.attrs.get("bin_width_deg", 180.0 / ds.sizes["angle_bin"]))


def plot_angle_distributions(
    ds: xr.Dataset,
    *,
    model: str | None = None,
    variant: str = "raw",
    layers: Sequence[int] | None = None,
    heads: bool = True,
) -> Figure:
    """Small multiples, one per layer: angle density of pairs and attention-weighted.

    Args:
        ds: an angles Dataset; ``model`` picks one along its ``model`` dim (default the
            first).
        variant: ``raw`` or ``centered`` embeddings.
        layers: 0-based layers to draw (default all in ``ds``).
        heads: draw single heads as thin lines.

    The other models in ``ds`` (the random-init control) are overlaid with their own
    angle distribution: all pairs dotted, attention-weighted (heads pooled) dashed.
    """
    models = _models(ds)
    model = model if model is not None else models[0]
    sub = _sel(ds, model).sel(variant=variant)
    others = {m: (_sel(ds, m).sel(variant=variant)["baseline_density"].values,
                  _pooled_density(_sel(ds, m).sel(variant=variant)))
              for m in models if m != model}
    layers = list(sub["layer"].values) if layers is None else list(layers)
    rows, cols = _grid(len(layers))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.3 * rows + 0.9), squeeze=False,
                             sharex=True, layout="constrained")
    x = sub["angle"].values
    color = _colors(ds)[model]
    pooled = _pooled_density(sub)
    for k, ax in enumerate(axes.flat):
        if k >= len(layers):
            ax.set_visible(False)
            continue
        li = list(sub["layer"].values).index(layers[k])
        s = sub.isel(layer=li)
        ax.fill_between(x, s["baseline_density"].values, step="mid", color=_BASELINE,
                        alpha=0.45, lw=0)
        if heads:
            for h in s["head"].values:
                ax.step(x, s["attention_density"].sel(head=h).values, where="mid",
                        color=color, lw=0.5, alpha=0.35)
        ax.step(x, pooled[li], where="mid", color=color, lw=1.6)
        for other, (baseline, density) in others.items():
            ax.step(x, baseline[li], where="mid", color=_colors(ds)[other], lw=0.9, ls=":")
            ax.step(x, density[li], where="mid", color=_colors(ds)[other], lw=1.0, ls="--")
        ax.axvline(90, color="k", lw=0.7, ls=":")
        shift = float(s["layer_angle_shift"].values)
        ax.set_title(f"layer {int(layers[k]) + 1}: shift {shift:+.1f}°", fontsize=9)
        ax.set_xlim(0, 180)
        ax.set_xticks([0, 45, 90, 135, 180])
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        if k % cols == 0:
            ax.set_ylabel("density (1/degree)", fontsize=8)
        if k >= len(layers) - cols:
            ax.set_xlabel(_DEG, fontsize=8)
            ax.tick_params(labelbottom=True)
    handles = [Line2D([], [], color=_BASELINE, lw=6, alpha=0.45, label="all pairs (baseline)"),
               Line2D([], [], color=color, lw=1.6, label="attention-weighted, heads pooled")]
    if heads:
        handles.append(Line2D([], [], color=color, lw=0.5, alpha=0.5, label="single heads"))
    for m in others:
        handles += [Line2D([], [], color=_colors(ds)[m], lw=0.9, ls=":", label=f"{m}: all pairs"),
                    Line2D([], [], color=_colors(ds)[m], lw=1.0, ls="--",
                           label=f"{m}: attention-weighted")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle(f"Angle between query and key embeddings: {_label(ds, model)}, {variant}\n"
                 f"{_context(ds)}; shift = attention-weighted minus baseline mean angle",
                 fontsize=9)
    return fig


def plot_attention_vs_angle(
    ds: xr.Dataset,
    *,
    variant: str = "raw",
    layers: Sequence[int] | None = None,
    min_pairs: int = 50,
) -> Figure:
    """Small multiples per layer: mean attention per angle bin relative to uniform.

    The y value is the mean A_ij of the pairs in the bin times the number of keys per
    query, so 1 is uniform attention over the selected keys (log scale). Every model in
    ``ds`` is drawn (trained in colour, random init in grey; bold: heads pooled, thin:
    single heads). Bins with fewer than ``min_pairs`` pairs are left out (noise); the
    y axis stops a decade below the lowest pooled value (single heads may go lower).
    """
    models = _models(ds)
    colors = _colors(ds)
    first = _sel(ds, models[0])
    layers = list(first["layer"].values) if layers is None else list(layers)
    n_keys = int(ds.attrs.get("n_selected_tokens", 2)) - 1
    rows, cols = _grid(len(layers))
    fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 2.3 * rows + 0.9), squeeze=False,
                             sharex=True, layout="constrained")
    x = first["angle"].values
    for k, ax in enumerate(axes.flat):
        if k >= len(layers):
            ax.set_visible(False)
            continue
        lowest = np.inf
        for model in models:
            s = _sel(ds, model).sel(variant=variant, layer=layers[k])
            count = s["baseline_hist"].values.astype(float)
            keep = count >= min_pairs
            with np.errstate(invalid="ignore", divide="ignore"):
                per_head = s["attention_hist"].values / count * n_keys  # (head, bin)
                pooled = s["attention_hist"].sum("head").values / (count * s.sizes["head"])
            pooled = np.where(keep, pooled * n_keys, np.nan)
            c = colors[model]
            for h in range(per_head.shape[0]):
                ax.plot(x, np.where(keep, per_head[h], np.nan), color=c, lw=0.5, alpha=0.3)
            ax.plot(x, pooled, color=c, lw=1.6)
            if np.isfinite(pooled).any():
                lowest = min(lowest, float(np.nanmin(pooled)))
        ax.axhline(1, color="k", lw=0.6, ls=":")
        if np.isfinite(lowest) and lowest > 0:
            # single heads can reach 1e-10: keep the pooled curves readable
            ax.set_ylim(bottom=max(ax.get_ylim()[0], min(lowest, 1.0) / 10))
        ax.axvline(90, color="k", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_xlim(0, 180)
        ax.set_xticks([0, 45, 90, 135, 180])
        ax.tick_params(labelsize=7)
        ax.set_title(f"layer {int(layers[k]) + 1}", fontsize=9)
        if k % cols == 0:
            ax.set_ylabel("attention / uniform", fontsize=8)
        if k >= len(layers) - cols:
            ax.set_xlabel(_DEG, fontsize=8)
            ax.tick_params(labelbottom=True)
    handles = [Line2D([], [], color=colors[m], lw=1.6, label=_label(ds, m) + ", heads pooled")
               for m in models]
    handles.append(Line2D([], [], color="k", lw=0.5, alpha=0.5, label="single heads"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle(f"Mean attention against angle ({variant} embeddings): 1 = uniform over the "
                 f"{n_keys} keys; {_context(ds)}", fontsize=9)
    return fig


_SUMMARY_PANELS = (
    ("layer_angle_shift", "attention-weighted − baseline\nmean angle (degrees)", 0.0),
    ("layer_share_attention_above_90", "share of attention above 90°\n(thin: share of pairs)",
     None),
    ("layer_logit_cos_correlation", "corr(logit, cos θ), pooled\n(head mean)", 0.0),
    ("layer_logit_cos_correlation_within_query",
     "corr(logit, cos θ) within query\n(head mean)", 0.0),
    ("mean_cos_baseline", "mean cos θ of pairs\n(anisotropy for raw)", 0.0),
    ("qk_positive_share", "QK: positive share of\neig($M_{sym}$) (head mean)", 0.5),
    ("qk_weighted_cosine", "QK: weighted cosine\n$\\sum s_i u_i\\cdot v_i / \\sum s_i$", 0.0),
    ("qk_symmetry", "QK: symmetry score 2s−1\n(head mean; dashed: summed M)", 0.0),
)


def plot_angle_summary(ds: xr.Dataset) -> Figure:
    """Per-layer summary curves with the query-key weight measures beside them.

    Colour: model (trained in colour, random init grey); line style: embedding variant
    (raw solid, centred dashed) for the angle panels. The ``qk_*`` panels are filled
    from :func:`vitprobe.attention.attach_qk`; without them they say so.
    """
    models = _models(ds)
    colors = _colors(ds)
    fig, axes = plt.subplots(2, 4, figsize=(14.0, 6.4), layout="constrained", sharex=True)
    x = ds["layer"].values + 1
    for ax, (var, title, ref) in zip(axes.flat, _SUMMARY_PANELS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        if var not in ds:
            ax.text(0.5, 0.5, "query-key measures\nnot attached\n(vitprobe.weights)",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8,
                    color="0.4")
            continue
        for model in models:
            s = _sel(ds, model)
            c = colors[model]
            if "variant" in s[var].dims:
                for variant in s["variant"].values:
                    ax.plot(x, s[var].sel(variant=variant).values, color=c, marker="o", ms=3,
                            lw=1.5, ls=_VARIANT_STYLE.get(str(variant), "-"))
                    if var == "layer_share_attention_above_90":
                        ax.plot(x, s["share_pairs_above_90"].sel(variant=variant).values,
                                color=c, lw=0.8, alpha=0.6,
                                ls=_VARIANT_STYLE.get(str(variant), "-"))
            else:
                ax.plot(x, s[var].values, color=c, marker="o", ms=3, lw=1.5)
                if var == "qk_symmetry" and "qk_layer_symmetry" in s:
                    ax.plot(x, s["qk_layer_symmetry"].values, color=c, lw=1.0, ls="--")
        if ref is not None:
            ax.axhline(ref, color="k", lw=0.6, ls=":")
        ax.set_xticks(x if len(x) <= 16 else x[:: math.ceil(len(x) / 12)])
    for ax in axes[-1]:
        ax.set_xlabel("layer", fontsize=9)
    handles = [Line2D([], [], color=colors[m], lw=1.5, label=_label(ds, m)) for m in models]
    handles += [Line2D([], [], color="k", lw=1.5, ls=_VARIANT_STYLE[v], label=f"{v} embeddings")
                for v in ds["variant"].values if v in _VARIANT_STYLE]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.suptitle(f"Similarity or dissimilarity? Per-layer summary; {_context(ds)}", fontsize=10)
    return fig


def save_angle_figures(ds: xr.Dataset, out_dir: str | Path, *, dpi: int = 130) -> list[Path]:
    """Render every figure of ``ds`` as PNG into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig: Figure, name: str) -> None:
        save_figure(fig, out / name, dpi=dpi)
        paths.append(out / name)

    for variant in ds["variant"].values:
        for model in _models(ds):
            tag = model.replace(" ", "_")
            save(plot_angle_distributions(ds, model=model, variant=str(variant)),
                 f"angle_distributions_{tag}_{variant}.png")
        save(plot_attention_vs_angle(ds, variant=str(variant)),
             f"attention_vs_angle_{variant}.png")
    save(plot_angle_summary(ds), "angle_summary.png")
    return paths
