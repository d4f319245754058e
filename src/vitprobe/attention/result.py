"""The angle statistics as an xarray Dataset: histograms, per-head and per-layer summaries.

Definitions (``n`` pairs (i, j), i != j, per layer over all images; ``A`` attention,
``s`` logits, ``theta`` angle in degrees, ``c = cos theta``):

* mean angle, baseline: ``sum theta / n``; attention-weighted: ``sum A theta / sum A``
  (exact sums, not bin centres); ``angle_shift`` is their difference (negative: the head
  attends to patches more similar to the query than a random pair; positive: to
  dissimilar ones, the poster's later-layer finding).
* share of attention above 90 degrees: attention mass in the bins above 90 over the
  total mass on pairs (90 is a bin edge); the baseline share is that of pairs.
* ``logit_cos_correlation``: Pearson r between s and c pooled over pairs and images;
  ``..._within_query``: the same after subtracting each query's mean logit and mean
  cosine over its keys, i.e. only the variation the softmax sees.
* per-layer (``layer_*``): heads pooled (attention sums added over heads, since every
  head spends one unit of attention per query) or, for correlations, the head mean.

References: Philip, Pan & Schwartz, poster "Probing vision transformer attention"
("Similarity or dissimilarity?"); Pan et al. 2024, arXiv 2405.14880 (anisotropy of
embeddings, the weighted singular-vector cosine); Saponati et al. 2025, arXiv 2502.10927
(symmetry score).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from vitprobe.netcdf import load_dataset, save_dataset
from vitprobe.stats.nanreduce import nanmean

__all__ = ["angles_dataset", "attach_qk", "layer_table", "load_angles", "save_angles"]

REFERENCES = (
    "Philip, Pan & Schwartz, poster 'Probing vision transformer attention: image statistics "
    "and patch similarity'; Pan et al. 2024, arXiv 2405.14880; Saponati et al. 2025, "
    "arXiv 2502.10927"
)
_REQUIRED = ("baseline_hist", "attention_hist", "mean_angle_attention", "layer_angle_shift")


def _attrs(long_name: str, units: str, description: str) -> dict[str, str]:
    return {"long_name": long_name, "units": units, "description": description}


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _pearson(n: float, sx, sy, sxy, sxx, syy) -> np.ndarray:
    """Pearson r from raw sums (float64); NaN where either variance is zero."""
    cov = n * sxy - sx * sy
    vx = n * sxx - sx * sx
    vy = n * syy - sy * sy
    return _div(cov, np.sqrt(np.clip(vx, 0, None) * np.clip(vy, 0, None)))


def _head_mean(x: np.ndarray) -> np.ndarray:
    return nanmean(x, axis=-1)  # an all-NaN layer (constant logits) stays NaN, quietly


def derived(s: dict[str, np.ndarray], n_pairs: int, n_keys: int, bins: int) -> dict[str, Any]:
    """Summaries from the raw sums (shapes L, V, H, K as in the accumulator state)."""
    half = bins // 2
    count = s["count"].astype(np.float64)  # (L, V, K)
    hist = s["attn_hist"]  # (L, V, H, K)
    mass = hist.sum(-1)  # (L, V, H)
    base_mean = s["sum_theta"] / n_pairs
    base_var = np.clip(s["sum_theta2"] / n_pairs - base_mean**2, 0, None)
    attn_mean = _div(s["sum_attn_theta"], mass)
    # pooled: x = logit (L, H), y = cos (L, V)
    sx, sxx = s["sum_logit"][:, None, :], s["sum_logit2"][:, None, :]
    sy, syy = s["sum_cos"][:, :, None], s["sum_cos2"][:, :, None]
    r_pooled = _pearson(n_pairs, sx, sy, s["sum_logit_cos"], sxx, syy)
    # within query: sum_j (s_ij - r_i) = 0, so the numerator is sum dev * cos and the
    # cosine's within-query sum of squares is sum c^2 - sum_i (sum_j c_ij)^2 / n_keys
    c_within = s["sum_cos2"] - s["sum_rowcos2"] / n_keys  # (L, V)
    r_within = _div(s["sum_dev_cos"], np.sqrt(s["sum_dev2"][:, None, :]
                                               * np.clip(c_within, 0, None)[:, :, None]))
    mass_layer = mass.sum(-1)
    return {
        "count": count, "hist": hist, "mass": mass,
        "baseline_density": _div(count, count.sum(-1, keepdims=True) * (180.0 / bins)),
        "attention_density": _div(hist, mass[..., None] * (180.0 / bins)),
        "mean_attention_per_bin": _div(hist, count[:, :, None, :]),
        "mean_angle_baseline": base_mean,
        "std_angle_baseline": np.sqrt(base_var),
        "mean_cos_baseline": s["sum_cos"] / n_pairs,
        "share_pairs_above_90": count[..., half:].sum(-1) / n_pairs,
        "mean_angle_attention": attn_mean,
        "angle_shift": attn_mean - base_mean[:, :, None],
        "share_attention_above_90": _div(hist[..., half:].sum(-1), mass),
        "logit_cos_correlation": r_pooled,
        "logit_cos_correlation_within_query": r_within,
        "layer_mean_angle_attention": _div(s["sum_attn_theta"].sum(-1), mass_layer),
        "layer_angle_shift": _div(s["sum_attn_theta"].sum(-1), mass_layer) - base_mean,
        "layer_share_attention_above_90": _div(hist[..., half:].sum((-1, -2)), mass_layer),
        "layer_logit_cos_correlation": _head_mean(r_pooled),
        "layer_logit_cos_correlation_within_query": _head_mean(r_within),
    }


_LVK, _LVHK = ("layer", "variant", "angle_bin"), ("layer", "variant", "head", "angle_bin")
_LV, _LVH, _LH = ("layer", "variant"), ("layer", "variant", "head"), ("layer", "head")
_DEG = "degree"

_VARS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "baseline_hist": (_LVK, _attrs(
        "pairs per angle bin", "pairs",
        "Number of (query i, key j) pairs, i != j, of selected tokens over all images whose "
        "embedding angle falls in the bin (the baseline distribution; heads share it)")),
    "baseline_density": (_LVK, _attrs(
        "angle density of pairs", "1/degree", "baseline_hist / (n_pairs * bin width)")),
    "attention_hist": (_LVHK, _attrs(
        "attention mass per angle bin", "1 (attention probability)",
        "sum of A_ij over the pairs in the bin, all images")),
    "attention_density": (_LVHK, _attrs(
        "attention-weighted angle density", "1/degree",
        "attention_hist / (attention_mass * bin width): the angle distribution of the pairs "
        "weighted by attention")),
    "mean_attention_per_bin": (_LVHK, _attrs(
        "mean attention per angle bin", "1 (attention probability)",
        "attention_hist / baseline_hist: mean A_ij of the pairs in the bin (NaN if empty); "
        "uniform attention over the keys gives 1 / n_keys")),
    "mean_angle_baseline": (_LV, _attrs(
        "mean angle of pairs", _DEG, "sum theta / n_pairs (exact, not from bins)")),
    "std_angle_baseline": (_LV, _attrs(
        "standard deviation of the angle of pairs", _DEG, "population standard deviation")),
    "mean_cos_baseline": (_LV, _attrs(
        "mean cosine of pairs", "1",
        "sum cos / n_pairs: the anisotropy of the embeddings for the raw variant (positive "
        "when tokens share a common direction)")),
    "share_pairs_above_90": (_LV, _attrs(
        "share of pairs above 90 degrees", "1", "pairs with theta >= 90 over all pairs")),
    "attention_mass": (_LH, _attrs(
        "attention mass on pairs", "1 (attention probability)",
        "sum of A_ij over all pairs and images; each query has one unit over all keys, "
        "so prefix keys and the query itself hold the rest")),
    "pair_attention_share": (_LH, _attrs(
        "share of attention on the pair set", "1",
        "attention_mass / (n_images * n_selected_tokens): mean share of a query's attention "
        "given to the other selected tokens")),
    "mean_angle_attention": (_LVH, _attrs(
        "attention-weighted mean angle", _DEG, "sum A_ij theta_ij / sum A_ij over pairs")),
    "angle_shift": (_LVH, _attrs(
        "attention-weighted minus baseline mean angle", _DEG,
        "mean_angle_attention - mean_angle_baseline: < 0 attention to similar patches, "
        "> 0 to dissimilar ones")),
    "share_attention_above_90": (_LVH, _attrs(
        "share of attention above 90 degrees", "1",
        "attention mass on pairs with theta >= 90 over the mass on all pairs")),
    "logit_cos_correlation": (_LVH, _attrs(
        "correlation of logits with cos(angle)", "1",
        "Pearson r between the logit s_ij = q_i k_j^T / sqrt(d_head) and cos theta_ij, "
        "pooled over pairs and images")),
    "logit_cos_correlation_within_query": (_LVH, _attrs(
        "within-query correlation of logits with cos(angle)", "1",
        "Pearson r after subtracting, per query, the mean logit and mean cosine over its "
        "keys (the softmax ignores a per-query logit offset)")),
    "layer_mean_angle_attention": (_LV, _attrs(
        "attention-weighted mean angle, heads pooled", _DEG,
        "sum over heads and pairs of A theta / sum of A")),
    "layer_angle_shift": (_LV, _attrs(
        "attention-weighted minus baseline mean angle, heads pooled", _DEG,
        "layer_mean_angle_attention - mean_angle_baseline")),
    "layer_share_attention_above_90": (_LV, _attrs(
        "share of attention above 90 degrees, heads pooled", "1",
        "attention mass above 90 degrees over all mass on pairs, heads added")),
    "layer_logit_cos_correlation": (_LV, _attrs(
        "correlation of logits with cos(angle), head mean", "1",
        "mean over heads of logit_cos_correlation")),
    "layer_logit_cos_correlation_within_query": (_LV, _attrs(
        "within-query correlation, head mean", "1",
        "mean over heads of logit_cos_correlation_within_query")),
}


def angles_dataset(
    sums: dict[str, np.ndarray],
    config: dict[str, Any],
    n_images: int,
    *,
    mean_token: np.ndarray | None = None,
) -> xr.Dataset:
    """Build the result Dataset from an accumulator's sums and configuration.

    Dims: ``layer`` (followed layers, 0-based; figures label them 1..L), ``variant``
    (``raw``, ``centered``), ``head``, ``angle_bin`` (coordinates ``angle`` = bin centre,
    ``angle_lower``/``angle_upper`` = edges, degrees) and ``component`` (d_model, for
    ``mean_token``).
    """
    from vitprobe import __version__

    bins = int(config["bins"])
    start = 0 if config["include_prefix"] else int(config["n_prefix"])
    n_sel = int(config["n_tokens"]) - start
    n_pairs = n_images * n_sel * (n_sel - 1)
    d = derived(sums, n_pairs, n_sel - 1, bins)
    values = dict(d)
    values["baseline_hist"] = sums["count"]
    values["attention_hist"] = d["hist"]
    values["attention_mass"] = d["mass"][:, 0, :]
    values["pair_attention_share"] = d["mass"][:, 0, :] / (n_images * n_sel)
    data_vars = {name: (dims, values[name], attrs) for name, (dims, attrs) in _VARS.items()}
    if mean_token is not None:
        data_vars["mean_token"] = (("layer", "component"), mean_token, _attrs(
            "dataset mean token", "embedding units",
            "mean of the selected tokens' embeddings over the calibration images, "
            "subtracted by the centered variant"))
    edges = np.linspace(0.0, 180.0, bins + 1)
    coords = {
        "layer": ("layer", np.asarray(config["layers"]), _attrs(
            "layer", "1", "0-based block index; labelled 1..L in figures")),
        "variant": ("variant", np.asarray(config["variants"]), {
            "long_name": "embedding variant",
            "description": "raw: the embeddings as recorded; centered: the dataset mean "
                           "token (calibration pass) subtracted first"}),
        "head": ("head", np.arange(int(config["n_heads"])), {"long_name": "attention head"}),
        "angle_bin": ("angle_bin", np.arange(bins), {"long_name": "angle bin index"}),
        "angle": ("angle_bin", 0.5 * (edges[:-1] + edges[1:]),
                  _attrs("angle (bin centre)", _DEG, "angle between the two embeddings")),
        "angle_lower": ("angle_bin", edges[:-1], _attrs("lower bin edge", _DEG, "inclusive")),
        "angle_upper": ("angle_bin", edges[1:], _attrs(
            "upper bin edge", _DEG, "exclusive, except 180 which belongs to the last bin")),
    }
    ds = xr.Dataset(data_vars, coords=coords)
    ds.attrs = {
        "title": "Attention against embedding angle (vitprobe angles)",
        "n_images": int(n_images),
        "n_pairs": int(n_pairs),
        "n_selected_tokens": n_sel,
        "n_tokens": int(config["n_tokens"]),
        "n_prefix": int(config["n_prefix"]),
        "n_heads": int(config["n_heads"]),
        "n_layers": int(config["n_layers"]),
        "embedding": str(config["embedding"]),
        "include_prefix": int(bool(config["include_prefix"])),
        "bins": bins,
        "bin_width_deg": 180.0 / bins,
        "precision": str(config["precision"]),
        "pair_set": "ordered pairs (query i, key j), i != j, of the selected tokens (patch "
                    "tokens, plus prefix tokens when include_prefix); the diagonal is "
                    "excluded because a token's angle with itself is 0 by definition",
        "layer_convention": "layer coordinate is 0-based; figures label layers 1..L",
        "vitprobe_version": __version__,
        "references": REFERENCES,
    }
    return ds


# -- query-key weight measures next to the angles -------------------------------------------
QK_MEASURES = {
    "qk_positive_share": ("positive_share", "positive share of eig(M_sym), head mean"),
    "qk_weighted_cosine": ("weighted_cosine", "weighted singular-vector cosine, head mean"),
    "qk_symmetry": ("symmetry", "symmetry score 2s-1, head mean"),
    "qk_layer_symmetry": ("layer_symmetry", "symmetry score 2s-1 of the layer's summed M"),
}


def attach_qk(ds: xr.Dataset, qk: xr.Dataset) -> xr.Dataset:
    """Add per-layer query-key weight measures (``vitprobe.weights.analyze_qk``) to ``ds``.

    Head means of ``positive_share``, ``weighted_cosine`` and ``symmetry``, and the
    layer's ``layer_symmetry``, as ``qk_*`` variables on the angle Dataset's ``layer``
    (and ``model``, where both have it) dims: the poster links dissimilarity in later
    layers to M_asym outweighing M_sym, which these measures quantify.
    """
    out = ds.copy()
    for name, (source, long_name) in QK_MEASURES.items():
        if source not in qk:
            continue
        v = qk[source]
        if "head" in v.dims:
            v = v.mean("head")
        v = v.sel(layer=ds["layer"].values)
        if "model" in v.dims:
            if "model" not in ds.dims:
                v = v.isel(model=0)
            else:
                v = v.sel(model=ds["model"].values)
        v = v.drop_vars([c for c in v.coords if c not in ("layer", "model")])
        out[name] = v.assign_attrs(
            long_name=long_name, units="1",
            description=f"from vitprobe.weights.analyze_qk ({source}; fold_ln="
                        f"{qk.attrs.get('fold_ln', '?')}): "
                        + str(qk[source].attrs.get("description", "")))
    out.attrs["qk_fold_ln"] = int(qk.attrs.get("fold_ln", 0))
    return out


# -- table, files --------------------------------------------------------------------------
def layer_table(ds: xr.Dataset) -> str:
    """Per-layer table (layers 1-based) of every model and variant in ``ds``."""
    cols = [
        ("base.deg", "mean_angle_baseline"),
        ("attn.deg", "layer_mean_angle_attention"),
        ("shift", "layer_angle_shift"),
        ("pairs>90", "share_pairs_above_90"),
        ("attn>90", "layer_share_attention_above_90"),
        ("r", "layer_logit_cos_correlation"),
        ("r.query", "layer_logit_cos_correlation_within_query"),
        ("mean.cos", "mean_cos_baseline"),
    ]
    qk_cols = [("qk.pos", "qk_positive_share"), ("qk.wcos", "qk_weighted_cosine"),
               ("qk.2s-1", "qk_symmetry")]
    qk_cols = [c for c in qk_cols if c[1] in ds]
    models = [str(m) for m in ds["model"].values] if "model" in ds.dims else [None]
    lines = [f"embedding {ds.attrs.get('embedding')}, {ds.attrs.get('n_images')} images, "
             f"{'prefix included' if ds.attrs.get('include_prefix') else 'patch tokens'}; "
             "angles in degrees; r: logit-cos correlation (head mean); qk: head means"]
    for model in models:
        sub = ds if model is None else ds.sel(model=model)
        for variant in sub["variant"].values:
            v = sub.sel(variant=variant)
            spec = f" {sub['model_spec'].values}" if "model_spec" in sub.coords else ""
            lines.append(f"[{model or 'model'}{spec}] {variant}")
            names = [c for c, _ in cols] + [c for c, _ in qk_cols]
            lines.append(f"{'layer':>5} " + " ".join(f"{c:>8}" for c in names))
            for i, layer in enumerate(v["layer"].values):
                vals = [float(v[var].values[i]) for _, var in cols + qk_cols]
                lines.append(f"{int(layer) + 1:>5} " + " ".join(f"{x:>8.3f}" for x in vals))
    return "\n".join(lines)


def save_angles(ds: xr.Dataset, path: str | Path) -> Path:
    """Write ``ds`` as netCDF4/HDF5 (``engine="h5netcdf"``); returns the path."""
    return save_dataset(ds, path)


def load_angles(path: str | Path) -> xr.Dataset:
    """Read a Dataset written by :func:`save_angles` (ResultsError if not one)."""
    return load_dataset(path, kind="angles", required=_REQUIRED)
