"""Figures of the fine bowtie histograms and the conditional statistics they imply.

Drawn from the saved ``bowtie`` Dataset alone (:func:`vitprobe.stats.bowtie.bowtie_dataset`,
stacked along ``model`` by the study):

* :func:`plot_bowtie_rows` - the poster's Figure 3 with fine cells: one row per layer,
  one column per distance, each panel ``p(y | x)`` (every x column scaled to its
  maximum, Schwartz & Simoncelli 2001) in activation units, with E[y | x] and
  E[y | x] +- SD[y | x] drawn over it.
* :func:`plot_conditional_sd` - SD[y | x] against x in standardised units, one panel
  per layer, one line per distance: how the bowtie fades with distance.
* :func:`plot_bowtie_summary` - per layer: correlation (linear dependence), bowtie
  index (variance dependence), divisive-normalization weight ``w`` and the share of
  MI left after normalization, MHA and MLP side by side, the model under study
  against its controls (:func:`vitprobe.schema.model_style`).

Layers are 0-based in the data and labelled 1..L. Every function returns a
:class:`matplotlib.figure.Figure` built without pyplot.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from vitprobe.errors import ResultsError
from vitprobe.plots.common import as_results
from vitprobe.schema import MODEL_DIM, model_style, split_models
from vitprobe.stats.conditional import marginal_moments

__all__ = ["default_distances", "plot_bowtie_rows", "plot_bowtie_summary",
           "plot_conditional_sd"]

SUBLAYER_TITLES = {"attn": "MHA", "mlp": "MLP"}


def _one_model(ds: xr.Dataset) -> xr.Dataset:
    """The model under study's slice when ``ds`` still has the ``model`` dimension."""
    return split_models(ds)[0] if MODEL_DIM in ds.dims else ds


def _need(ds: xr.Dataset, *names: str) -> None:
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise ResultsError(f"bowtie dataset lacks {missing}: is this results/bowtie.nc?")


def _pair_index(ds: xr.Dataset, pair_kind: str) -> int:
    kinds = [str(v) for v in ds.pair_kind.values]
    if pair_kind not in kinds:
        raise ValueError(f"no pair of kind {pair_kind!r}; the file has {sorted(set(kinds))}")
    return kinds.index(pair_kind)


def _kind_text(kind: str) -> str:
    return {"highest": "highest-MI channel", "median": "median-MI channel",
            "lowest": "lowest-MI channel", "random": "random channel",
            "cross": "cross-channel pair"}.get(kind, f"{kind} pair")


def default_distances(ds: xr.Dataset, pooling: str = "translation",
                      wanted: Sequence[int] = (1, 2, 4, 8)) -> list[int]:
    """The distances of ``wanted`` that hold counts for ``pooling`` (else the first four
    measured distances above 0)."""
    ds = _one_model(ds)
    n = ds.n_samples.sel(pooling=pooling).sum(("layer", "sublayer", "pair"))
    have = [int(d) for d in ds.distance.values if d > 0 and int(n.sel(distance=d)) > 0]
    out = [d for d in wanted if d in have]
    return out or have[:4]


def _edges(centres: np.ndarray) -> np.ndarray:
    h = centres[1] - centres[0]
    return np.concatenate([centres - h / 2, [centres[-1] + h / 2]])


def plot_bowtie_rows(ds: xr.Dataset, sublayer: str = "attn", *, pooling: str = "translation",
                     pair_kind: str = "highest", distances: Sequence[int] | None = None,
                     layers: Sequence[int] | None = None, gamma: float = 0.5,
                     cmap: str = "magma", min_count: int = 10) -> Figure:
    """Bowtie plots of one pair per layer at growing distance (the poster's Figure 3).

    Parameters
    ----------
    ds : the bowtie Dataset (one model, or the stacked file: the model under study is
        drawn).
    sublayer : ``"attn"`` or ``"mlp"``.
    pooling : ``"translation"`` (every position pair at the distance) or ``"central"``.
    pair_kind : which pair of each layer (``highest``, ``median``, ``lowest``, ``random``,
        ``cross``): the first pair of that kind.
    distances : columns; default :func:`default_distances`.
    gamma : colour exponent (``PowerNorm``), so that the tails stay visible.
    min_count : columns with fewer samples get no E / SD lines.

    Each panel: ``p(y | x)`` with every x column scaled to its maximum, axes in
    activation units over the binned range; the cyan line is E[y | x], the dashed ones
    E[y | x] +- SD[y | x]. The corner number is the bowtie index (slope of the
    standardised SD[y | x] on |x|).
    """
    from matplotlib.colors import PowerNorm

    ds = _one_model(ds)
    _need(ds, "counts", "x_value", "y_value", "cond_mean", "cond_sd", "bowtie_index")
    layers = [int(v) for v in (ds.layer.values if layers is None else layers)]
    dists = list(distances) if distances is not None else default_distances(ds, pooling)
    if not dists:
        raise ValueError(f"no distances with {pooling} counts")
    k = _pair_index(ds, pair_kind)
    fig = Figure(figsize=(1.75 * len(dists) + 1.0, 1.6 * len(layers) + 0.8))
    axes = fig.subplots(len(layers), len(dists), squeeze=False)
    norm = PowerNorm(gamma, vmin=0, vmax=1)
    # every array once as numpy (per-panel xarray selections cost more than the drawing)
    part = ds.sel(sublayer=sublayer, pair=k, pooling=pooling).sel(layer=layers, distance=dists)
    counts = part.counts.transpose("layer", "distance", ...).values.astype(np.float64)
    col_n, cond_mean, cond_sd, index = (
        part[v].transpose("layer", "distance", ...).values
        for v in ("column_n", "cond_mean", "cond_sd", "bowtie_index"))
    x_all = part.x_value.transpose("layer", ...).values
    y_all = part.y_value.transpose("layer", ...).values
    ch_x, ch_y = part.channel_x.values, part.channel_y.values
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.nan_to_num(counts / counts.max(axis=-1, keepdims=True))
    for i, layer in enumerate(layers):
        xc, yc = x_all[i], y_all[i]
        xe, ye = _edges(xc), _edges(yc)
        for j, d in enumerate(dists):
            ax = axes[i, j]
            # equal-width bins: an image is the histogram (cheaper than a mesh to draw)
            ax.imshow(scaled[i, j].T, origin="lower", extent=(xe[0], xe[-1], ye[0], ye[-1]),
                      aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
            ok = col_n[i, j] >= min_count
            m, s = cond_mean[i, j], cond_sd[i, j]
            ax.plot(xc[ok], m[ok], color="c", lw=0.7)
            ax.plot(xc[ok], (m + s)[ok], color="c", lw=0.5, ls="--")
            ax.plot(xc[ok], (m - s)[ok], color="c", lw=0.5, ls="--")
            ax.set_xlim(xe[0], xe[-1])
            ax.set_ylim(ye[0], ye[-1])
            bi = float(index[i, j])
            if np.isfinite(bi):
                ax.text(0.03, 0.97, f"{bi:.2f}", transform=ax.transAxes, va="top",
                        ha="left", fontsize=5.5, color="w")
            ax.tick_params(labelsize=5, length=2, pad=1)
            ax.locator_params(nbins=3)
            if i == 0:
                ax.set_title(f"d = {d}", fontsize=8)
            if j == 0:
                cx, cy = int(ch_x[i]), int(ch_y[i])
                ch = f"ch {cx}" if cx == cy else f"ch {cx} / {cy}"
                ax.set_ylabel(f"layer {layer + 1}\n{ch}", fontsize=7)
    who = "x at the central patch" if pooling == "central" else \
        "all position pairs at distance d pooled"
    fig.supxlabel("x (activation)", fontsize=8)
    fig.supylabel("y at distance d (activation)", fontsize=8)
    name = f" ({ds[MODEL_DIM].item()})" if MODEL_DIM in ds.coords and ds[MODEL_DIM].ndim == 0 \
        else ""
    fig.suptitle(f"{SUBLAYER_TITLES.get(sublayer, sublayer)}{name}: p(y | x), "
                 f"{_kind_text(pair_kind)}, {who}; columns scaled to their maximum",
                 fontsize=8.5)
    # fixed margins in inches: tight_layout measures every tick label of every panel
    # (seconds for a 12 x 8 grid) and lands on the same layout
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=1.05 / w, right=1 - 0.08 / w, bottom=0.45 / h, top=1 - 0.7 / h,
                        wspace=0.32, hspace=0.3)
    return fig


def plot_conditional_sd(ds: xr.Dataset, sublayer: str = "attn", *,
                        pooling: str = "translation", pair_kind: str = "highest",
                        distances: Sequence[int] | None = None,
                        layers: Sequence[int] | None = None, min_count: int = 10,
                        ncols: int = 6) -> Figure:
    """SD[y~ | x~] against x~ (both standardised by the pair's marginal moments), one
    panel per layer, one line per distance (light to dark: near to far); the controls
    (when ``ds`` holds them along ``model``) in their dashed style at the nearest
    distance, each for its own channel of the same ``pair_kind``.

    A flat line at 1 is no variance dependence; a V (SD rising with |x~|) is a bowtie.
    """
    stacked = as_results(ds)
    main, ctrls = split_models(stacked)
    _need(main, "counts", "cond_sd", "column_n")
    layers = [int(v) for v in (main.layer.values if layers is None else layers)]
    dists = list(distances) if distances is not None else default_distances(
        main, pooling, wanted=tuple(int(d) for d in main.distance.values if d > 0))
    ncols = min(ncols, len(layers))
    nrows = -(-len(layers) // ncols)
    # constrained layout places the figure-level labels beside the panels' tick labels
    # (tight_layout with a rect left a band of white above and below them)
    fig = Figure(figsize=(1.9 * ncols + 0.6, 1.7 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    cmap = matplotlib.colormaps["viridis_r"]
    for i, layer in enumerate(layers):
        ax = axes.flat[i]
        sel = main.sel(layer=layer, sublayer=sublayer, pair=_pair_index(main, pair_kind),
                       pooling=pooling)
        for j, d in enumerate(dists):
            curve = _standardised_sd(sel.sel(distance=d), min_count)
            if curve is not None:
                ax.plot(*curve, color=cmap((j + 0.5) / len(dists)), lw=0.9,
                        label=f"d = {d}")
        for cname, cds in ctrls.items():
            style = model_style(stacked, cname)
            one = cds.sel(layer=layer, sublayer=sublayer, pair=_pair_index(cds, pair_kind),
                          pooling=pooling, distance=dists[0])
            curve = _standardised_sd(one, min_count)
            if curve is not None:
                ax.plot(*curve, color=style.color, ls=style.linestyle, alpha=style.alpha,
                        lw=0.9, label=f"{style.label}, d = {dists[0]}")
        ax.axhline(1.0, color="0.7", lw=0.5, ls=":")
        ax.set_title(f"layer {layer + 1}", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=5, frameon=False, ncol=2)
    fig.supxlabel("x / SD(x), centred", fontsize=8)
    fig.supylabel("SD[y | x] / SD(y)", fontsize=8)
    fig.suptitle(f"{SUBLAYER_TITLES.get(sublayer, sublayer)}: conditional SD against x, "
                 f"{_kind_text(pair_kind)}, {pooling} pairs", fontsize=9)
    return fig


def _standardised_sd(one: xr.Dataset, min_count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(x~, SD[y | x] / SD(y)) of one pair at one distance, over the columns holding at
    least ``min_count`` samples; None without counts."""
    c = one.counts.values
    if c.sum() < 2:
        return None
    mm = marginal_moments(c, one.x_value.values, one.y_value.values)
    ok = one.column_n.values >= min_count
    xt = (one.x_value.values - float(mm.mean_x)) / float(mm.sd_x)
    return xt[ok], one.cond_sd.values[ok] / float(mm.sd_y)


_SUMMARY_ROWS = (("layer_correlation", "correlation"),
                 ("layer_bowtie_index", "bowtie index"),
                 ("layer_w", "normalization\nweight w"),
                 ("layer_mi_remaining", "MI left after\nnormalization"))


def plot_bowtie_summary(ds: xr.Dataset, *, pooling: str = "translation",
                        distances: Sequence[int] | None = None) -> Figure:
    """Per layer: correlation, bowtie index, divisive-normalization weight ``w`` and the
    share of MI left after normalization (rows), MHA and MLP (columns).

    Means over the same-channel pairs of each layer (``layer_*`` variables) with
    95 % jackknife intervals; one line per distance for the model under study
    (viridis, near to far), the controls in grey dashed lines at the first distance.
    """
    _need(ds, *(name for name, _ in _SUMMARY_ROWS))
    stacked = as_results(ds)
    main, ctrls = split_models(stacked)
    dists = list(distances) if distances is not None else default_distances(main, pooling)
    subs = [str(s) for s in main.sublayer.values]
    fig = Figure(figsize=(4.0 * len(subs) + 0.5, 2.0 * len(_SUMMARY_ROWS) + 0.6))
    axes = fig.subplots(len(_SUMMARY_ROWS), len(subs), squeeze=False, sharex=True)
    cmap = matplotlib.colormaps["viridis_r"]
    x = main.layer.values + 1
    for col, sub in enumerate(subs):
        for row, (name, label) in enumerate(_SUMMARY_ROWS):
            ax = axes[row, col]
            for j, d in enumerate(dists):
                v = main[name].sel(sublayer=sub, pooling=pooling, distance=d).values
                color = cmap((j + 0.5) / len(dists))
                if f"{name}_lo" in main:
                    lo = main[f"{name}_lo"].sel(sublayer=sub, pooling=pooling, distance=d)
                    hi = main[f"{name}_hi"].sel(sublayer=sub, pooling=pooling, distance=d)
                    err = np.vstack([v - lo.values, hi.values - v])
                    ax.errorbar(x, v, yerr=np.where(np.isfinite(err), err, 0), color=color,
                                lw=1.0, marker="o", ms=2.5, capsize=1.5, label=f"d = {d}")
                else:
                    ax.plot(x, v, color=color, lw=1.0, marker="o", ms=2.5, label=f"d = {d}")
            for cname, cds in ctrls.items():
                style = model_style(stacked, cname)
                v = cds[name].sel(sublayer=sub, pooling=pooling, distance=dists[0]).values
                ax.plot(x, v, color=style.color, ls=style.linestyle, alpha=style.alpha,
                        lw=1.0, marker=".", label=f"{style.label}, d = {dists[0]}")
            ax.axhline(0.0, color="0.8", lw=0.5)
            if row == 0:
                ax.set_title(SUBLAYER_TITLES.get(sub, sub), fontsize=9)
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("layer", fontsize=8)
        ax.set_xticks(x)
    axes[0, 0].legend(fontsize=5.5, frameon=False, ncol=2)
    fig.suptitle(f"Linear and variance dependence of neighbouring neurons\n({pooling} pairs, "
                 "mean over same-channel pairs, 95 % jackknife intervals)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig
