"""Figures of the query-key weight analysis, drawn from the saved Dataset alone.

- :func:`plot_qk_spectra`: the poster's Figure 5 layout (Philip, Pan & Schwartz,
  "Similarity or dissimilarity?"): per layer, sorted eigenvalues of M_sym, the lambda
  of M_asym's +-i*lambda pairs and the singular values of M, one thin line per head and
  the head median in bold, trained weights against the random-init baseline.
- :func:`plot_qk_summary`: per-layer curves (median and interquartile band across heads)
  of the positive share, symmetry score 2s-1 (Saponati et al. 2025, arXiv 2502.10927),
  weighted cosine (Pan et al. 2024, arXiv 2405.14880), ||M_asym||/||M_sym||, effective
  and stable rank, top-k energy and ||M||_F.
- :func:`plot_sym_asym_intuition`: the poster's Figure 6, what the symmetric and
  antisymmetric parts do to a pair of vectors.

All functions return a ``matplotlib.figure.Figure`` (Agg backend); layers are labelled
1..L.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter

from vitprobe.plots.common import as_results, model_color, model_label, model_names
from vitprobe.schema import MODEL_DIM

__all__ = ["plot_qk_spectra", "plot_qk_summary", "plot_sym_asym_intuition"]

#: the model under study; controls take their grey from :func:`vitprobe.schema.model_style`
_MAIN_COLOR = "tab:blue"


def _colors(ds: xr.Dataset) -> dict[str, str]:
    return {m: model_color(ds, m, _MAIN_COLOR) for m in model_names(ds)}


def _model_name(ds: xr.Dataset, label: str) -> str:
    return model_label(ds, label)


def _options(ds: xr.Dataset) -> str:
    opts = []
    if int(ds.attrs.get("fold_ln", 0)):
        opts.append("LN weight folded")
    if int(ds.attrs.get("scale", 0)):
        opts.append("1/sqrt(d_head) included")
    return ", ".join(opts) or "raw $W_Q W_K^T$"


def _nanmedian(vals: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # all-NaN columns (gaps, degenerate heads) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(vals, axis=axis)


def _truncate(
    x: np.ndarray, vals: np.ndarray, n: int | None, *, split: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first n modes, or (split) the first and last n/2 with a NaN gap between."""
    m = vals.shape[1]
    if n is None or n >= m:
        return x, vals
    if not split:
        return x[:n], vals[:, :n]
    head, tail = (n + 1) // 2, n // 2
    gap = np.full((vals.shape[0], 1), np.nan)
    return (
        np.r_[x[:head], np.nan, x[m - tail :]],
        np.hstack([vals[:, :head], gap, vals[:, m - tail :]]),
    )


def plot_qk_spectra(
    ds: xr.Dataset,
    *,
    layers: Sequence[int] | None = None,
    normalize: bool = True,
    n_modes: int | None = None,
) -> Figure:
    """Poster Fig. 5 layout: one row per layer, three spectra per row.

    Parameters
    ----------
    ds : Dataset from :func:`vitprobe.weights.analyze_qk` (or :func:`load_qk`).
    layers : 0-based layer indices to draw (default: all).
    normalize : divide each head's spectra by its ``||M||_F`` so that trained and
        random-init weights (very different scales) share the axes; False draws raw
        values (units of ``x M y^T`` for unit-norm tokens).
    n_modes : draw only the first n modes of each spectrum (the poster kept 40); for
        eig(M_sym) the first and last n/2 are kept, so the negative end stays visible.
    """
    ds = as_results(ds)
    layers = list(range(ds.sizes["layer"])) if layers is None else list(layers)
    colors = _colors(ds)
    nrow = len(layers)
    fig, axes = plt.subplots(
        nrow,
        3,
        figsize=(11.5, 1.75 * nrow + 1.2),
        squeeze=False,
        sharex="col",
        layout="constrained",
    )
    panels = (
        ("eig_sym", "eigenvalues of $M_{sym}$ (sorted)"),
        ("lambda_asym", r"$\lambda$ of $M_{asym}$ ($\pm i\lambda$ pairs)"),
        ("singular_value", "singular values of $M$"),
    )
    for row, layer in enumerate(layers):
        for col, (var, title) in enumerate(panels):
            ax = axes[row, col]
            for label in model_names(ds):
                sub = ds.sel({MODEL_DIM: label, "layer": layer})
                vals = sub[var].values  # (head, mode)
                if normalize:
                    vals = vals / sub["frobenius_norm"].values[:, None]
                x = np.arange(1, vals.shape[1] + 1)
                x, vals = _truncate(x.astype(float), vals, n_modes, split=var == "eig_sym")
                c = colors[str(label)]
                for h in range(vals.shape[0]):
                    ax.plot(x, vals[h], color=c, lw=0.6, alpha=0.35)
                ax.plot(x, _nanmedian(vals, axis=0), color=c, lw=1.8)
            if var == "eig_sym":
                ax.axhline(0, color="k", lw=0.6, ls=":")
            ax.tick_params(labelsize=8)
            if row == 0:
                ax.set_title(title, fontsize=10)
            if col == 0:
                ax.set_ylabel(
                    f"layer {layer + 1}" + ("\n/ $\\|M\\|_F$" if normalize else ""), fontsize=9
                )
            if row == nrow - 1:
                ax.set_xlabel("mode (sorted)", fontsize=9)
    handles = [
        Line2D([], [], color=colors[lb], lw=1.8, label=_model_name(ds, lb))
        for lb in model_names(ds)
    ]
    handles.append(Line2D([], [], color="k", lw=0.6, alpha=0.5, label="single heads (thin)"))
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False
    )
    fig.suptitle(
        f"Query-key spectra per layer: bold = median over heads ({_options(ds)})", fontsize=10
    )
    return fig


_SUMMARY = (
    ("positive_share", "positive share of eig($M_{sym}$)", 0.5),
    ("symmetry", "symmetry score 2s-1", 0.0),
    ("weighted_cosine", r"weighted cosine $\sum s_i u_i\cdot v_i / \sum s_i$", 0.0),
    ("asym_sym_ratio", r"$\|M_{asym}\|_F / \|M_{sym}\|_F$", 1.0),
    ("effective_rank", "effective rank (entropy)", None),
    ("stable_rank", r"stable rank $\|M\|_F^2/\|M\|_2^2$", None),
    ("energy_top_k", "energy share of top-k modes", None),
    ("frobenius_norm", r"$\|M\|_F$", None),
)


def plot_qk_summary(ds: xr.Dataset, *, band: tuple[float, float] = (25.0, 75.0)) -> Figure:
    """Per-layer curves of the summary measures: median over heads and a percentile band.

    The symmetry panel also shows the layer's summed-M score (``layer_symmetry``, dashed,
    Saponati et al. 2025's per-layer quantity). Dotted grey lines mark the value expected
    for a random matrix where one exists (0.5, 0, 0, 1).
    """
    ds = as_results(ds)
    colors = _colors(ds)
    fig, axes = plt.subplots(2, 4, figsize=(13.5, 6.2), layout="constrained")
    x = ds["layer"].values + 1
    for ax, (var, title, ref) in zip(axes.flat, _SUMMARY, strict=True):
        if var == "energy_top_k":
            title = title.replace("top-k", f"top-{ds.attrs.get('top_k', 'k')}")
        for label in model_names(ds):
            vals = ds[var].sel({MODEL_DIM: label}).values  # (layer, head)
            c = colors[label]
            with warnings.catch_warnings():  # all-NaN rows (degenerate heads) stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = np.nanpercentile(vals, band, axis=1)
            ax.fill_between(x, lo, hi, color=c, alpha=0.2, lw=0)
            ax.plot(x, _nanmedian(vals, axis=1), color=c, lw=1.8, marker="o", ms=3)
            if var == "symmetry" and "layer_symmetry" in ds:
                ax.plot(
                    x,
                    ds["layer_symmetry"].sel({MODEL_DIM: label}).values,
                    color=c,
                    lw=1.2,
                    ls="--",
                    marker="s",
                    ms=3,
                )
        if ref is not None:
            ax.axhline(ref, color="0.3", lw=0.8, ls=":")
        if var == "effective_rank":
            ax.axhline(ds.sizes["mode"], color="0.3", lw=0.8, ls=":")
        if var == "frobenius_norm":
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer", fontsize=9)
        ax.set_xticks(x if len(x) <= 12 else x[:: max(1, len(x) // 12)])
        ax.tick_params(labelsize=8)
    handles = [
        Line2D(
            [], [], color=colors[lb], lw=1.8, marker="o", ms=3, label=_model_name(ds, lb)
        )
        for lb in model_names(ds)
    ]
    handles += [
        Line2D(
            [],
            [],
            color="0.2",
            lw=1.2,
            ls="--",
            marker="s",
            ms=3,
            label="2s-1 of the layer's summed M",
        ),
        Line2D(
            [],
            [],
            color="0.3",
            lw=8,
            alpha=0.2,
            label=f"heads {band[0]:g}-{band[1]:g}th percentile",
        ),
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False
    )
    fig.suptitle(f"Query-key measures per layer (median over heads; {_options(ds)})", fontsize=11)
    return fig


def plot_sym_asym_intuition() -> Figure:
    """Poster Fig. 6: what M_sym and M_asym do to a pair of vectors (2-D example).

    (a) ``M_sym x`` stays on x's side (``x M_sym x^T > 0`` for a positive spectrum),
    ``M_asym x`` is perpendicular to x (``x M_asym x^T = 0``): the antisymmetric part
    scores pairs by their rotation, not their similarity. (b) For unit x, y at angle phi,
    ``x M y^T = mu cos(phi) + lambda sin(phi)`` with M = mu I + lambda J
    (``J = [[0, 1], [-1, 0]]``): the symmetric part peaks for aligned tokens, the
    antisymmetric one at 90 degrees. (c) The preferred angle ``atan2(lambda, mu)``
    grows with lambda/|mu| and exceeds 90 degrees when the symmetric eigenvalue is
    negative (dissimilarity).
    """
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), layout="constrained")
    ax = axes[0]
    t = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(t), np.sin(t), color="0.8", lw=0.8)
    x = np.array([np.cos(0.5), np.sin(0.5)])
    m_sym = np.array([[1.4, 0.3], [0.3, 0.6]])
    m_asym = 0.9 * np.array([[0.0, -1.0], [1.0, 0.0]])
    for vec, color, text in (
        (x, "k", "x"),
        (m_sym @ x, "tab:blue", r"$M_{sym}\,x$"),
        (m_asym @ x, "tab:red", r"$M_{asym}\,x$"),
    ):
        ax.annotate("", xy=vec, xytext=(0, 0), arrowprops=dict(arrowstyle="-|>", color=color, lw=2))
        ax.text(*(vec * 1.12), text, color=color, fontsize=11, ha="center", va="center")
    ax.text(
        0.02,
        0.02,
        r"$x M_{sym} x^T > 0$ (positive spectrum)"
        "\n"
        r"$x M_{asym} x^T = 0$ ($M_{asym}x \perp x$)",
        transform=ax.transAxes,
        fontsize=9,
        va="bottom",
    )
    ax.set_aspect("equal")
    ax.set(xlim=(-1.6, 1.9), ylim=(-1.4, 1.6))
    ax.set_title("(a) the two parts acting on a token x", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])

    ax = axes[1]
    phi = np.linspace(-180, 180, 361)
    rad = np.deg2rad(phi)
    for mu, lam, color, text in (
        (1, 0, "tab:blue", r"symmetric only ($\mu=1, \lambda=0$)"),
        (0, 1, "tab:red", r"antisymmetric only ($\mu=0, \lambda=1$)"),
        (1, 1, "tab:purple", r"both ($\mu=\lambda=1$)"),
    ):
        ax.plot(phi, mu * np.cos(rad) + lam * np.sin(rad), color=color, lw=1.8, label=text)
        peak = np.rad2deg(np.arctan2(lam, mu))
        ax.axvline(peak, color=color, lw=0.8, ls=":")
    ax.axhline(0, color="0.3", lw=0.6)
    ax.set_xticks(np.arange(-180, 181, 90))
    ax.set_xlabel("angle from query x to key y (degrees)", fontsize=9)
    ax.set_ylabel(r"score $x M y^T$ (unit vectors)", fontsize=9)
    ax.set_title("(b) attention score against the angle between tokens", fontsize=10)
    ax.set_ylim(-1.6, 2.4)
    ax.legend(fontsize=8, loc="upper left", frameon=False)

    ax = axes[2]
    ratio = np.linspace(0, 4, 200)
    ax.plot(
        ratio,
        np.rad2deg(np.arctan2(ratio, 1.0)),
        color="tab:blue",
        lw=1.8,
        label=r"$\mu > 0$ (similarity)",
    )
    ax.plot(
        ratio,
        np.rad2deg(np.arctan2(ratio, -1.0)),
        color="tab:red",
        lw=1.8,
        label=r"$\mu < 0$ (dissimilarity)",
    )
    ax.axhline(90, color="0.3", lw=0.8, ls=":")
    ax.set_xlabel(r"$\lambda / |\mu|$ (antisymmetric over symmetric)", fontsize=9)
    ax.set_ylabel("preferred angle from x to y (degrees)", fontsize=9)
    ax.set_yticks(np.arange(0, 181, 30))
    ax.set_title("(c) preferred key direction for a query", fontsize=10)
    ax.legend(fontsize=8, loc="center right")
    fig.suptitle(
        r"Symmetric and antisymmetric parts of $M = W_Q W_K^T$ in two dimensions", fontsize=11
    )
    return fig
