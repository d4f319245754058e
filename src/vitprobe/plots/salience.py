"""Figures of the salience battery, drawn from the saved Dataset alone.

- :func:`plot_salience_curves`: the headline: salience index (log2 attention ratio
  singleton / distractor) against feature difference, one line per layer, the
  random-init control dashed grey; rows: attention from the patch tokens, from the
  class token, and the singleton's ln1 angle excess.
- :func:`plot_popout_examples`: example arrays with each layer's attention to every
  patch overlaid as a heat map (the singleton outlined).
- :func:`plot_surround`: centre-surround suppression and like/unlike attention per layer.
- :func:`plot_eigen_gallery`: eigen-stimulus patches beside their attention.

Layers are labelled 1..L.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from vitprobe.schema import MODEL_DIM, model_style, split_models

__all__ = ["plot_eigen_gallery", "plot_popout_examples", "plot_salience_curves",
           "plot_surround"]

_UNITS = {"orientation": "deg", "colour": "deg hue", "contrast": "Michelson", "size": "x diam - 1"}


def _layer_colors(n: int) -> np.ndarray:
    return plt.get_cmap("viridis")(np.linspace(0.0, 0.95, n))


def _pick(ds: xr.Dataset, jitter: float, placement: str) -> xr.Dataset:
    return ds.sel(jitter=jitter, placement=placement)


def plot_salience_curves(ds: xr.Dataset, *, jitter: float = 0.0,
                         placement: str = "aligned") -> Figure:
    """Salience index against feature difference per layer (psychometric-style)."""
    main, ctrls = split_models(ds)
    features = [str(f) for f in ds["feature"].values]
    rows = [("patches", "salience index, from patches\n(log2 singleton / distractor)"),
            ("cls", "salience index, from [CLS]"), (None, "angle excess (deg)\nsinglet.-distr.")]
    fig, axes = plt.subplots(len(rows), len(features), figsize=(3.3 * len(features), 8.2),
                             squeeze=False, sharex="col")
    L = main.sizes["layer"]
    colors = _layer_colors(L)
    for j, feature in enumerate(features):
        x = main["difference"].sel(feature=feature).values
        for i, (source, label) in enumerate(rows):
            ax = axes[i, j]
            for name, part in [(str(main[MODEL_DIM].values), main), *ctrls.items()]:
                style = model_style(ds, name)
                sub = _pick(part, jitter, placement).sel(feature=feature)
                if source is None:
                    mean, lo, hi = (sub[f"angle_excess{s}"] for s in ("", "_lower", "_upper"))
                else:
                    mean, lo, hi = (sub[f"salience_index{s}"].sel(source=source)
                                    for s in ("", "_lower", "_upper"))
                # (layer, level) numpy once: per-line xarray selections cost more than drawing
                mean, lo, hi = (v.transpose("layer", ...).values for v in (mean, lo, hi))
                for layer in range(L):
                    if style.is_main:
                        ax.plot(x, mean[layer], color=colors[layer], lw=1.4,
                                label=f"L{layer + 1}" if (i, j) == (0, 0) else None)
                        ax.fill_between(x, lo[layer], hi[layer],
                                        color=colors[layer], alpha=0.12, lw=0)
                    else:
                        ax.plot(x, mean[layer], color=style.color,
                                ls=style.linestyle, lw=0.8, alpha=0.6,
                                label=style.label if (i, j, layer) == (0, 0, 0) else None)
            ax.axhline(0.0, color="k", lw=0.6)
            if i == 0:
                ax.set_title(feature)
            if i == len(rows) - 1:
                ax.set_xlabel(f"feature difference ({_UNITS.get(feature, '')})")
            if j == 0:
                ax.set_ylabel(label)
    axes[0, 0].legend(fontsize=6, ncol=2, loc="upper left")
    fig.suptitle(f"Pop-out: attention to the singleton against feature difference "
                 f"({placement}, distractor jitter {jitter:g}); bands: 95% CI over seeds",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_popout_examples(ds: xr.Dataset, layers: list[int] | None = None) -> Figure:
    """Example arrays (maximal difference) with each layer's attention as a heat map."""
    main = split_models(ds)[0]
    features = [str(f) for f in main["feature"].values]
    L = main.sizes["layer"]
    layers = layers if layers is not None else sorted({0, 1, L // 4, L // 2, 3 * L // 4, L - 1})
    fig, axes = plt.subplots(len(features), len(layers) + 1,
                             figsize=(1.9 * (len(layers) + 1), 2.0 * len(features)),
                             squeeze=False)
    rows, cols = main.sizes["patch_row"], main.sizes["patch_col"]
    for i, feature in enumerate(features):
        image = main["example_image"].sel(feature=feature).values
        weights = main["example_singleton"].sel(feature=feature).values.reshape(rows, cols)
        axes[i, 0].imshow(image)
        axes[i, 0].set_ylabel(feature)
        ph, pw = image.shape[0] / rows, image.shape[1] / cols
        ys, xs = np.nonzero(weights > 0)
        box = (xs.min() * pw, ys.min() * ph, (xs.max() + 1) * pw, (ys.max() + 1) * ph)
        for k, layer in enumerate(layers):
            ax = axes[i, k + 1]
            amap = main["example_attention"].sel(feature=feature).isel(layer=layer).values
            ax.imshow(image, alpha=0.45)
            ax.imshow(amap, cmap="magma", alpha=0.65, extent=(0, image.shape[1],
                                                               image.shape[0], 0))
            if i == 0:
                ax.set_title(f"layer {layer + 1}", fontsize=9)
        for ax in axes[i]:
            ax.add_patch(plt.Rectangle(box[:2], box[2] - box[0], box[3] - box[1],
                                       fill=False, ec="cyan", lw=1.0))
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("stimulus", fontsize=9)
    fig.suptitle("Attention each patch receives (mean over heads and patch queries); "
                 "singleton outlined", fontsize=9)
    fig.tight_layout()
    return fig


def plot_surround(ds: xr.Dataset) -> Figure:
    """Suppression index of centre neurons and like/unlike attention, per layer."""
    main, ctrls = split_models(ds)
    feats = [str(f) for f in main["surround_feature"].values]
    fig, axes = plt.subplots(len(feats), 3, figsize=(12, 3.2 * len(feats)), squeeze=False)
    L = main.sizes["layer"]
    x = np.arange(1, L + 1)
    dists = main["distance"].values
    dcol = plt.get_cmap("plasma")(np.linspace(0.0, 0.8, len(dists)))
    for i, feat in enumerate(feats):
        for name, part in [(str(main[MODEL_DIM].values), main), *ctrls.items()]:
            style = model_style(ds, name)
            for s, sub in enumerate(("attn", "mlp")):
                ax = axes[i, s]
                for rel, ls in (("iso", "-"), ("cross", ":")):
                    d0 = part.sel(surround_feature=feat, relation=rel, sublayer=sub,
                                  distance=dists[0])
                    color = "tab:red" if rel == "iso" else "tab:blue"
                    if not style.is_main:
                        color = style.color
                    ax.plot(x, d0["suppression_index"], color=color,
                            ls=ls if style.is_main else "--", lw=1.4 if style.is_main else 0.9,
                            label=f"{rel} ({name})")
                    if style.is_main:
                        ax.fill_between(x, d0["suppression_index_lower"],
                                        d0["suppression_index_upper"], color=color, alpha=0.15)
                ax.axhline(0, color="k", lw=0.6)
                ax.set_title(f"{feat}: {sub.upper() if sub == 'mlp' else 'MHA'} neurons at the "
                             f"centre, gap {dists[0]} cell", fontsize=9)
                ax.set_ylabel("suppression index")
                ax.set_xlabel("layer")
            ax = axes[i, 2]
            for d, dist in enumerate(dists):
                v = part.sel(surround_feature=feat, distance=dist)
                ax.plot(x, v["like_unlike_index"], color=dcol[d] if style.is_main else style.color,
                        ls="-" if style.is_main else "--", lw=1.4 if style.is_main else 0.8,
                        label=f"gap {dist} ({name})" if style.is_main or d == 0 else None)
            ax.axhline(0, color="k", lw=0.6)
            ax.set_title(f"{feat}: attention centre -> like / unlike surround", fontsize=9)
            ax.set_ylabel("log2 (iso / cross)")
            ax.set_xlabel("layer")
    for ax in axes[0]:
        ax.legend(fontsize=6)
    fig.suptitle("Centre-surround: positive suppression = weaker centre response with the "
                 "surround; positive like/unlike = attention prefers a like surround", fontsize=9)
    fig.tight_layout()
    return fig


def plot_eigen_gallery(ds: xr.Dataset, eigen_layer: int | None = None,
                       route: str = "optimised") -> Figure:
    """Eigen-stimulus patches (query | key) per head and mode, with their attention."""
    main = split_models(ds)[0]
    layer = int(main["eigen_layer"].values[0]) if eigen_layer is None else eigen_layer
    sub = main.sel(eigen_layer=layer, route=route)
    heads = sub.sizes["head"]
    searches = [str(s) for s in sub["search_pair"].values]
    fig, axes = plt.subplots(heads, len(searches) + 1, figsize=(2.3 * (len(searches) + 1),
                                                                 1.45 * heads + 0.8),
                             squeeze=False)
    pair_of = {"sym+": "sym+", "sym-": "sym-", "asym": "asym+", "random": "random"}
    for h in range(heads):
        for j, sp in enumerate(searches):
            ax = axes[h, j]
            pq = sub["eigen_patch"].sel(head=h, search_pair=sp, role="query").values
            pk = sub["eigen_patch"].sel(head=h, search_pair=sp, role="key").values
            gap = np.ones((pq.shape[0], 2, 3))
            ax.imshow(np.concatenate([pq, gap, pk], axis=1), interpolation="nearest")
            pr = pair_of[sp]
            cos = sub["eigen_cosine"].sel(head=h, pair=pr).values
            att = float(sub["eigen_attention"].sel(head=h, pair=pr))
            # 0: the softmax underflowed (the logit far below the query's others)
            shown = f"x{att:.2g}" if att > 0 else "x0 (underflow)"
            ax.set_title(f"{pr}: cos {cos[0]:.2f}/{cos[1]:.2f}\nattn {shown}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"head {h + 1}", fontsize=8)
        ax = axes[h, -1]
        pairs = [str(p) for p in sub["pair"].values]
        meas = sub["eigen_logit_adv"].sel(head=h).values
        pred = sub["eigen_logit_pred"].sel(head=h).values
        change = sub["eigen_logit_pred_change"].sel(head=h).values
        xs = np.arange(len(pairs))
        ax.bar(xs - 0.27, meas, 0.27, label="logit - query mean", color="tab:blue")
        ax.bar(xs, pred, 0.27, label="x^ M^ y^T", color="tab:orange")
        ax.bar(xs + 0.27, change, 0.27, label="dx^ M^ dy^T", color="tab:green")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(xs)
        ax.set_xticklabels(pairs, fontsize=6)
        ax.tick_params(labelsize=6)
        if h == 0:
            ax.legend(fontsize=5)
    # asym- has no image column: it is the asym+ pair with query and key swapped
    fig.suptitle(f"Eigen-stimuli of layer {layer + 1} ({route}): query | key patch per mode, "
                 "cosine with the target, attention relative to uniform; bars: asym- = the "
                 "asym+ patches with query and key swapped", fontsize=9)
    fig.tight_layout()
    return fig
