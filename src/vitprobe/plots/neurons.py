"""Figures of the neuron statistics, drawn from saved Datasets only (re-render from files).

* :func:`plot_bowtie` - conditional histogram of a neuron given the central neuron
  (Schwartz & Simoncelli 2001; the poster's Figure 2), axes in activation units.
* :func:`plot_bowtie_rows` - one row of bowties per layer at growing distance from
  the centre (the poster's Figure 3).
* :func:`plot_mi_vs_distance` - mean MI with the central neuron against distance per
  layer, MHA and MLP side by side (the poster's Figure 4), split-half error bars and
  the shuffled-pair null level.
* :func:`plot_activation_distributions`, :func:`plot_kurtosis` - how single neurons
  are distributed, per layer.

Layers are 0-based in the data and labelled 1..L here. All functions return the
:class:`matplotlib.figure.Figure`, built without pyplot (so nothing is shown or kept
in pyplot's registry; ``fig.savefig`` renders with the Agg canvas whatever the
session's backend).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vitprobe.errors import ResultsError
from vitprobe.plots.common import SUBLAYER_TITLES, model_color, split
from vitprobe.schema import MODEL_DIM

__all__ = [
    "bowtie_image",
    "plot_activation_distributions",
    "plot_bowtie",
    "plot_bowtie_rows",
    "plot_kurtosis",
    "plot_mi_vs_distance",
]

CONTROL_LINE = "--"


def _split_models(ds: xr.Dataset) -> tuple[xr.Dataset, dict[str, tuple[xr.Dataset, str]]]:
    """(main model, {control: (Dataset, grey shade)}) of a results or bare Dataset."""
    main, ctrls = split(ds)
    return main, {name: (c, model_color(ds, name, "k")) for name, c in ctrls.items()}


def _need(ds: xr.Dataset, *names: str) -> None:
    missing = [n for n in names if n not in ds]
    if missing:
        raise ResultsError(f"dataset lacks {missing}: is this the right results file?")


def _one_model(ds: xr.Dataset, model: str | None) -> xr.Dataset:
    """The slice of variant ``model`` (default the main model) of a results or bare Dataset."""
    main, ctrls = split(ds)
    if model is None or model == str(main[MODEL_DIM].values):
        return main
    if model not in ctrls:
        raise ResultsError(f"no model {model!r} in the results; they hold "
                           f"{[str(main[MODEL_DIM].values), *ctrls]}")
    return ctrls[model]


def _cell_edges(inner: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """B + 1 cell boundaries: calibration min, the B - 1 edges, calibration max."""
    lo = min(lo, inner[0])
    hi = max(hi, inner[-1])
    return np.concatenate([[lo], inner, [hi]])


def bowtie_image(counts: np.ndarray, y_edges: np.ndarray | None = None,
                 normalise: str = "max", density: bool = False) -> np.ndarray:
    """Conditional histogram of y given x, each x column normalised.

    Parameters
    ----------
    counts : (B_x, B_y) joint counts.
    y_edges : (B_y + 1,) cell boundaries of y in activation units (for ``density``).
    normalise : ``"max"`` (each column scaled to unit maximum, the display convention
        of Schwartz & Simoncelli 2001) or ``"sum"`` (each column sums to 1).
    density : divide by the y-cell widths (probability per activation unit) instead of
        showing the probability per bin. With equal-frequency bins the per-bin form is
        flat (``1/B``) under independence and robust to heavy tails, where the density
        form is dominated by the narrow central cells.

    Returns
    -------
    (B_y, B_x) array for ``pcolormesh`` (rows = y). Empty columns are NaN.
    """
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        img = c / c.sum(axis=1, keepdims=True)
        if density:
            if y_edges is None:
                raise ValueError("density=True needs y_edges")
            w = np.diff(np.asarray(y_edges, dtype=np.float64))
            img = img / np.where(w > 0, w, np.nan)[None, :]
        if normalise == "max":
            top = np.max(np.nan_to_num(img), axis=1, keepdims=True)
            img = img / np.where(top > 0, top, np.nan)
        elif normalise != "sum":
            raise ValueError("normalise must be 'max' or 'sum'")
    return img.T


def _pair(ds: xr.Dataset, layer: int, sublayer: str, channel: int | None, position: int | None,
          pair: int | None) -> tuple[np.ndarray, int, int, int, int]:
    """(counts, x channel, x position, y channel, y position) of a stored pair."""
    cp = int(ds.attrs["centre_row"]) * int(ds.attrs["grid_cols"]) + int(ds.attrs["centre_col"])
    if pair is not None:
        _need(ds, "cross_counts")
        sel = ds.cross_counts.sel(layer=layer, sublayer=sublayer, pair=pair)
        return (sel.values, int(ds.cross_channel_x[pair]), cp, int(ds.cross_channel_y[pair]),
                int(ds.cross_position[pair]))
    _need(ds, "joint_counts", "kept_channel")
    kept = ds.kept_channel.sel(layer=layer, sublayer=sublayer).values
    if channel is None:
        channel = int(kept[0])
    hit = np.flatnonzero(kept == channel)
    if hit.size == 0:
        raise ResultsError(
            f"no joint counts saved for channel {channel} of layer {layer} {sublayer}; "
            f"saved: {kept.tolist()} (choose them with JointCounts.result(keep_channels=...))")
    if position is None:
        raise ValueError("give a position")
    counts = ds.joint_counts.sel(layer=layer, sublayer=sublayer, position=position)
    return counts.isel(kept=int(hit[0])).values, channel, cp, channel, int(position)


def _edges_of(ds: xr.Dataset, layer: int, sublayer: str, channel: int, position: int
              ) -> np.ndarray:
    sel = dict(layer=layer, sublayer=sublayer, channel=channel, position=position)
    return _cell_edges(ds.edges.sel(**sel).values.astype(np.float64),
                       float(ds.calibration_min.sel(**sel)),
                       float(ds.calibration_max.sel(**sel)))


def _display_range(edges: np.ndarray) -> tuple[float, float]:
    inner = edges[1:-1]
    span = inner[-1] - inner[0]
    pad = 0.35 * span if span > 0 else 1.0
    return max(edges[0], inner[0] - pad), min(edges[-1], inner[-1] + pad)


def _rank_ticks(ax_set_ticks, edges: np.ndarray, n: int = 3) -> None:
    """Ticks at a few inner edges of an equal-frequency axis, labelled in activation."""
    b = edges.size - 1
    ks = np.unique(np.linspace(1, b - 1, n).round().astype(int))
    ax_set_ticks(ks, [f"{edges[k]:.2g}" for k in ks])


def plot_bowtie(ds: xr.Dataset, layer: int, sublayer: str, *, channel: int | None = None,
                position: int | None = None, pair: int | None = None, ax: Axes | None = None,
                space: str = "activation", normalise: str = "max", gamma: float | None = None,
                cmap: str = "magma", title: str | None = None,
                label_axes: bool = True, model: str | None = None) -> Figure:
    """Bowtie plot of a stored pair: p(y | x), x = central neuron, y = the other neuron.

    Parameters
    ----------
    ds : the :class:`~vitprobe.stats.JointCounts` result (``joint_counts``, ``edges``,
        ``calibration_min`` / ``_max``; ``cross_counts`` for ``pair``).
    layer, sublayer : 0-based layer and ``"attn"`` / ``"mlp"``.
    channel, position : a kept channel (default the first kept one) and the other
        neuron's flat patch position (same channel).
    pair : index of a cross-channel pair instead.
    space : ``"activation"`` - linear activation axes, the neurons' equal-frequency
        cells drawn at their activation values and coloured by conditional density
        (probability per activation unit; outermost cells reach the calibration min / max,
        the view is clipped to the inner edges plus a margin); ``"rank"`` -
        equal-frequency axes (every bin the same size, ticks labelled in activation
        units) coloured by probability per bin, flat under independence and readable
        for heavy-tailed neurons whose density is dominated by a sharp peak.
    normalise : ``"max"``: each x column scaled to unit maximum (display convention of
        Schwartz & Simoncelli 2001); ``"sum"``: each column sums to 1.
    gamma : colour scale exponent (``PowerNorm``); default 0.5 in activation space (the
        tails stay visible next to the peak), 1 (linear) in rank space.
    model : the variant along ``model`` to draw (default the main model).

    A linear dependence shows as a diagonal; a dependence of the spread of y on |x|
    at zero correlation as a bowtie.
    """
    from matplotlib.colors import PowerNorm

    ds = _one_model(ds, model)
    counts, cx, px, cy, py = _pair(ds, layer, sublayer, channel, position, pair)
    xe = _edges_of(ds, layer, sublayer, cx, px)
    ye = _edges_of(ds, layer, sublayer, cy, py)
    fig = ax.figure if ax is not None else Figure(figsize=(3.6, 3.3))
    ax = ax if ax is not None else fig.add_subplot(111)
    if gamma is None:
        gamma = 0.5 if space == "activation" else 1.0
    norm = PowerNorm(gamma, vmin=0, vmax=1) if normalise == "max" else None
    if space == "activation":
        img = bowtie_image(counts, ye, normalise, density=True)
        ax.pcolormesh(xe, ye, np.nan_to_num(img), cmap=cmap, shading="flat", rasterized=True,
                      norm=norm)
        ax.set_xlim(*_display_range(xe))
        ax.set_ylim(*_display_range(ye))
    elif space == "rank":
        img = bowtie_image(counts, None, normalise, density=False)
        nbx, nby = counts.shape
        ax.pcolormesh(np.arange(nbx + 1), np.arange(nby + 1), np.nan_to_num(img), cmap=cmap,
                      shading="flat", rasterized=True, norm=norm)
        _rank_ticks(ax.set_xticks, xe)
        _rank_ticks(ax.set_yticks, ye)
    else:
        raise ValueError("space must be 'activation' or 'rank'")
    d = float(ds.position_distance.sel(position=py))
    if title is None:
        title = (f"layer {layer + 1} {SUBLAYER_TITLES.get(sublayer, sublayer)}, "
                 f"ch {cx}" + (f" vs ch {cy}" if cy != cx else "") + f", d = {d:.1f}")
    ax.set_title(title, fontsize=8)
    if label_axes:
        ax.set_xlabel("central neuron (activation)", fontsize=8)
        ax.set_ylabel("neighbour (activation)", fontsize=8)
    ax.tick_params(labelsize=6)
    return fig


def _position_at(ds: xr.Dataset, d: int) -> int | None:
    """A position at distance ``d`` from the centre along its row (right, else left),
    else along its column."""
    rows, cols = int(ds.attrs["grid_rows"]), int(ds.attrs["grid_cols"])
    r0, c0 = int(ds.attrs["centre_row"]), int(ds.attrs["centre_col"])
    for r, c in ((r0, c0 + d), (r0, c0 - d), (r0 + d, c0), (r0 - d, c0)):
        if 0 <= r < rows and 0 <= c < cols:
            return r * cols + c
    return None


def plot_bowtie_rows(ds: xr.Dataset, sublayer: str = "attn", *,
                     distances: Sequence[int] = (1, 2, 4, 7),
                     layers: Sequence[int] | None = None, channel: int | None = None,
                     space: str = "activation", cmap: str = "magma",
                     model: str | None = None) -> Figure:
    """Joint conditional statistics of a central neuron and its neighbours at growing
    distance: one row of bowties per layer (the poster's Figure 3).

    Each row uses the layer's first kept channel (by default the one with the highest
    MI at distance 1) unless ``channel`` is given; the neighbour sits on the centre's
    row, ``d`` patches to the right (left where the grid ends). ``model`` picks the
    variant along ``model`` (default the main model).
    """
    ds = _one_model(ds, model)
    _need(ds, "joint_counts", "kept_channel")
    layers = [int(v) for v in (ds.layer.values if layers is None else layers)]
    dists = [d for d in distances if _position_at(ds, int(d)) is not None]
    if not dists:
        raise ValueError("no requested distance fits on the grid")
    ds = _bowtie_subset(ds, layers, sublayer, channel, [int(d) for d in dists])
    fig = Figure(figsize=(1.9 * len(dists) + 0.8, 1.75 * len(layers) + 0.7))
    axes = fig.subplots(len(layers), len(dists), squeeze=False)
    for i, layer in enumerate(layers):
        ch = channel if channel is not None else int(
            ds.kept_channel.sel(layer=layer, sublayer=sublayer)[0])
        for j, d in enumerate(dists):
            ax = axes[i, j]
            pos = _position_at(ds, int(d))
            plot_bowtie(ds, layer, sublayer, channel=ch, position=pos, ax=ax, cmap=cmap,
                        space=space, title=f"d = {d}" if i == 0 else "", label_axes=False)
            ax.tick_params(labelsize=5)
            if j == 0:
                ax.set_ylabel(f"layer {layer + 1}\nch {ch}", fontsize=7)
    fig.supxlabel("central neuron (activation)", fontsize=8)
    fig.supylabel("neighbour at distance d (activation)", fontsize=8)
    what = "density" if space == "activation" else "probability per equal-frequency bin"
    fig.suptitle(f"{SUBLAYER_TITLES.get(sublayer, sublayer)}: p(neighbour | centre), {what}, "
                 "each column scaled to its maximum", fontsize=9)
    fig.tight_layout(rect=(0.02, 0.02, 1, 0.97))
    return fig


def _bowtie_subset(ds: xr.Dataset, layers: list[int], sublayer: str, channel: int | None,
                   dists: list[int]) -> xr.Dataset:
    """The few values the bowtie rows read, loaded at once.

    A results file opened lazily would otherwise be read (and decompressed) once per
    panel; the edges alone are layers x channels x positions x (B-1) values.
    """
    names = ["joint_counts", "kept_channel", "edges", "calibration_min", "calibration_max"]
    sub = ds[names].sel(layer=layers, sublayer=[sublayer])
    kept = sub.kept_channel.values
    channels = sorted({int(channel)} if channel is not None else
                      {int(c) for c in np.ravel(kept[..., :1]) if c >= 0})
    centre = int(ds.attrs["centre_row"]) * int(ds.attrs["grid_cols"]) + int(ds.attrs["centre_col"])
    positions = sorted({centre, *(p for d in dists if (p := _position_at(ds, d)) is not None)})
    return sub.sel(channel=channels, position=positions).load()


def plot_mi_vs_distance(ds: xr.Dataset, *, layers: Sequence[int] | None = None,
                        exclude_layers: Sequence[int] = (), errorbars: bool = True,
                        show_null: bool = True, spread: bool = False,
                        logy: bool = False) -> Figure:
    """Mean MI between the central neuron and the neurons of its channel against
    distance, one line per layer, MHA and MLP side by side (the poster's Figure 4).

    Error bars: split-half standard error (``mi_vs_distance_stderr``); ``spread``
    shades the standard deviation across channels instead. The grey band is the
    shuffled-pair null (mean +- one standard deviation across null pairs, pooled over
    the layers shown). ``exclude_layers`` (0-based) drops layers, as the poster
    dropped layer 1. With a ``model`` dim, the control (random init) is drawn as thin
    grey dashed lines, one per layer.
    """
    _need(ds, "mi_vs_distance")
    ds, ctrls = _split_models(ds)
    subs = [s for s in ("attn", "mlp") if s in ds.sublayer.values]
    layers = [int(v) for v in (ds.layer.values if layers is None else layers)
              if int(v) not in set(exclude_layers)]
    n_layers = int(ds.attrs.get("n_layers", max(layers) + 1))
    cmap = matplotlib.colormaps["viridis"]
    fig = Figure(figsize=(4.6 * len(subs) + 1.2, 3.8))
    axes = fig.subplots(1, len(subs), squeeze=False, sharey=True)
    dist = ds.distance.values
    for ax, s in zip(axes[0], subs, strict=True):
        if show_null and "mi_null_level" in ds:
            lv = ds.mi_null_level.sel(sublayer=s, layer=layers).values
            sd = ds.mi_null_std.sel(sublayer=s, layer=layers).values
            if np.isfinite(lv).any():
                m, w = float(np.nanmean(lv)), float(np.nanmean(sd))
                ax.axhspan(m - w, m + w, color="0.85", zorder=0, label="null (mean ± s.d.)")
                ax.axhline(m, color="0.5", lw=0.8, ls="--", zorder=1)
        for layer in layers:
            y = ds.mi_vs_distance.sel(layer=layer, sublayer=s).values
            if not np.isfinite(y).any():
                continue
            color = cmap(layer / max(n_layers - 1, 1))
            if errorbars and "mi_vs_distance_stderr" in ds and not spread:
                err = ds.mi_vs_distance_stderr.sel(layer=layer, sublayer=s).values
                ax.errorbar(dist, y, yerr=err, color=color, lw=1.2, marker="o", ms=2.5,
                            capsize=2, label=f"layer {layer + 1}")
            else:
                ax.plot(dist, y, color=color, lw=1.2, marker="o", ms=2.5,
                        label=f"layer {layer + 1}")
            if spread:
                sd = ds.mi_vs_distance_channel_std.sel(layer=layer, sublayer=s).values
                ax.fill_between(dist, y - sd, y + sd, color=color, alpha=0.15, lw=0)
        for name, (control, color) in ctrls.items():
            for i, layer in enumerate(layers):
                y = control.mi_vs_distance.sel(layer=layer, sublayer=s).values
                ax.plot(dist, y, color=color, lw=0.8, ls=CONTROL_LINE, zorder=1,
                        label=f"{name} (all layers)" if i == 0 else None)
        ax.set_title(SUBLAYER_TITLES.get(s, s))
        ax.set_xlabel("distance from the central patch (patches, rounded)")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mutual information (nats)")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle(f"MI with the central neuron ({ds.attrs.get('n_images', '?')} images, "
                 f"B = {ds.attrs.get('bins', '?')})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 1))
    return fig


def plot_activation_distributions(ds: xr.Dataset, *, layers: Sequence[int] | None = None,
                                  centre_only: bool = False) -> Figure:
    """Standardised activation distributions per layer (log density), MHA and MLP.

    From a :class:`~vitprobe.stats.NeuronHistograms` result: each neuron standardised
    by its calibration mean and s.d., pooled over channels (and positions unless
    ``centre_only``); the dashed curve is the standard normal. Heavier tails than the
    normal mean positive excess kurtosis. With a ``model`` dim, the control's
    distribution (all layers pooled) is drawn in grey.
    """
    _need(ds, "histogram", "bin_lower", "bin_upper")
    ds, ctrls = _split_models(ds)
    var = "histogram_centre" if centre_only else "histogram"
    subs = [s for s in ("attn", "mlp") if s in ds.sublayer.values]
    layers = [int(v) for v in (ds.layer.values if layers is None else layers)]
    n_layers = int(ds.attrs.get("n_layers", max(layers) + 1))
    lo, hi = ds.bin_lower.values, ds.bin_upper.values
    inner = np.isfinite(lo) & np.isfinite(hi)
    zc = ((lo + hi) / 2)[inner]
    w = (hi - lo)[inner]
    cmap = matplotlib.colormaps["viridis"]
    fig = Figure(figsize=(4.4 * len(subs) + 1.4, 3.6))
    axes = fig.subplots(1, len(subs), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], subs, strict=True):
        for layer in layers:
            h = ds[var].sel(layer=layer, sublayer=s).sum("channel").values.astype(np.float64)
            if h.sum() == 0:
                continue
            dens = h[inner] / h.sum() / w
            ax.semilogy(zc, np.where(dens > 0, dens, np.nan),
                        color=cmap(layer / max(n_layers - 1, 1)), lw=1, label=f"layer {layer + 1}")
        for name, (control, color) in ctrls.items():
            h = control[var].sel(sublayer=s, layer=layers).sum(("layer", "channel")).values
            h = h.astype(np.float64)
            if h.sum() > 0:
                dens = h[inner] / h.sum() / w
                ax.semilogy(zc, np.where(dens > 0, dens, np.nan), color=color, lw=1.6,
                            alpha=0.7, label=f"{name} (all layers)")
        ax.semilogy(zc, np.exp(-zc**2 / 2) / np.sqrt(2 * np.pi), "k--", lw=1, label="normal")
        ax.set_title(SUBLAYER_TITLES.get(s, s))
        ax.set_xlabel("activation (calibration s.d. from the mean)")
        ax.set_ylim(bottom=max(1e-7, 0.5 / max(float(ds[var].sum()), 1.0)))
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("probability density (per s.d.)")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.suptitle("single-neuron activation distributions (standardised, pooled over "
                 + ("central neurons)" if centre_only else "channels and positions)"),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))
    return fig


def plot_kurtosis(ds: xr.Dataset, *, layers: Sequence[int] | None = None) -> Figure:
    """Excess kurtosis of single neurons per layer: median and quartiles across neurons
    (whiskers 5-95 %), MHA and MLP side by side; 0 is a normal distribution.

    From a :class:`~vitprobe.stats.NeuronMoments` result. With a ``model`` dim, the
    control's median per layer is drawn as grey dashed lines with open markers.
    """
    _need(ds, "excess_kurtosis")
    ds, ctrls = _split_models(ds)
    subs = [s for s in ("attn", "mlp") if s in ds.sublayer.values]
    layers = [int(v) for v in (ds.layer.values if layers is None else layers)]
    fig = Figure(figsize=(max(4.5, 0.45 * len(layers) * len(subs) + 1.5), 3.6))
    ax = fig.subplots()
    width = 0.8 / len(subs)
    colors = {"attn": "tab:blue", "mlp": "tab:orange"}
    for k, s in enumerate(subs):
        for i, layer in enumerate(layers):
            v = ds.excess_kurtosis.sel(layer=layer, sublayer=s).values.ravel()
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            q5, q25, q50, q75, q95 = np.percentile(v, [5, 25, 50, 75, 95])
            x = i + (k - (len(subs) - 1) / 2) * width
            ax.vlines(x, q5, q95, color=colors.get(s, "k"), lw=1)
            ax.add_patch(Rectangle((x - width * 0.4, q25), width * 0.8, q75 - q25,
                                       facecolor=colors.get(s, "k"), alpha=0.5,
                                       edgecolor=colors.get(s, "k")))
            ax.hlines(q50, x - width * 0.4, x + width * 0.4, color="k", lw=1.2)
        ax.plot([], [], color=colors.get(s, "k"), lw=6, alpha=0.5,
                label=SUBLAYER_TITLES.get(s, s))
        for name, (control, color) in ctrls.items():
            x = np.arange(len(layers)) + (k - (len(subs) - 1) / 2) * width
            med = [float(np.nanmedian(control.excess_kurtosis.sel(layer=la, sublayer=s)))
                   for la in layers]
            ax.plot(x, med, color=color, ls=CONTROL_LINE, lw=0.9, marker="o", ms=3.5,
                    mfc="white", mec=colors.get(s, "k"),
                    label=f"{name} median, {SUBLAYER_TITLES.get(s, s)}")
    ax.axhline(0, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(range(len(layers)), [str(v + 1) for v in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("excess kurtosis (neurons)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlim(-0.6, len(layers) - 0.4)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8,
               frameon=False)
    ax.set_title(f"single-neuron excess kurtosis ({ds.attrs.get('n_images', '?')} images)\n"
                 "box: quartiles across neurons, whiskers: 5-95 %", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig
