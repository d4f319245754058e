"""The interactive explorer: every neuron and every head of a run, in one offline page.

The static report shows the channels and heads it picked; the explorer lets the
reader pick any of them:

* a neuron (layer, sublayer, channel): its mutual information with the central
  neuron against distance (with the layer's mean over channels and the shuffled-pair
  null), its activation distribution (standardised, pooled over positions, with the
  standard normal), its median excess kurtosis, and its bowties p(neighbour | centre)
  at a few distances where the run kept that channel's joint counts;
* a head (layer, head): the spectra of M = W_Q W_K^T (eigenvalues of M_sym, the
  lambda of M_asym's +-i lambda pairs, singular values), its query-key measures, and
  its attention-weighted angle distribution against the baseline of all pairs, with
  the per-head angle measures.

Everything is drawn by a small hand-written JavaScript plotter on ``<canvas>``
(no library, no network): hover shows values. The data are embedded in the page as
zlib-compressed little-endian arrays (base64), unpacked by the browser's own
``DecompressionStream``; :func:`explorer_data` returns them in the clear for tests.

Size: the default run (``vitprobe run``: DINOv2-S/14 on 512 demo crops, 12 layers x
2 sublayers x 384 channels, 12 x 6 heads and the weight analysis's random-init
baseline) gets a 0.92 MB explorer (measured; the whole ``report.html`` is 4.1 MB).
Nearly all of it is per neuron: 96-bin activation histograms (0.36 MB, uint8 log
codes, see :func:`log_quantize`) and MI curves (0.25 MB, float16). A ViT-B/16 run
(12 x 2 x 768 channels, 12 x 12 heads) scales these to about 1.7 MB without control
and about 3 MB with one (estimated from the measured per-neuron and per-head sizes).
"""

from __future__ import annotations

import base64
import json
import warnings
import zlib
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from vitprobe.schema import MODEL_DIM

if TYPE_CHECKING:
    from vitprobe.report.compare import ModelEntry

__all__ = ["bowtie_positions", "explorer_data", "explorer_html", "explorer_html_models",
           "models_from_entries", "neuron_mi_curves"]

#: distances (patches) at which the explorer shows a neuron's bowties, where they fit the grid
BOWTIE_DISTANCES = (1, 2, 4, 7)
#: per-head measures of the weight analysis shown in the head table (qk.nc variables)
QK_MEASURES = ("positive_share", "symmetry", "weighted_cosine", "asym_sym_ratio",
               "effective_rank", "stable_rank", "frobenius_norm")
#: per-head angle measures (angles.nc variables with dims (layer, variant, head))
ANGLE_MEASURES = ("mean_angle_attention", "angle_shift", "share_attention_above_90",
                  "logit_cos_correlation")


# -- data extraction -----------------------------------------------------------------------
def neuron_mi_curves(mi: xr.Dataset) -> xr.DataArray:
    """Each neuron's MI with its central neuron against rounded distance.

    Parameters
    ----------
    mi : one model's slice of ``results/mi.nc`` (no ``model`` dim), with ``mi``
        (layer, sublayer, channel, position) in nats and the ``position_distance_bin``
        coordinate.

    Returns
    -------
    DataArray (layer, sublayer, channel, distance), nats: the mean of ``mi`` over the
    positions at each rounded distance (NaN at distance 0, the centre itself). Its mean
    over channels is the file's ``mi_vs_distance``.
    """
    values = mi["mi"].values.astype(np.float64)  # (L, S, C, P)
    bins = mi["position_distance_bin"].values
    distances = mi["distance"].values
    out = np.full((*values.shape[:3], distances.size), np.nan)
    for k, d in enumerate(distances):
        at = bins == d
        if not at.any():
            continue
        sel = values[..., at]
        finite = np.isfinite(sel)
        n = finite.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[..., k] = np.where(n > 0, np.where(finite, sel, 0).sum(-1) / n, np.nan)
    return xr.DataArray(out, dims=("layer", "sublayer", "channel", "distance"),
                        coords={"layer": mi["layer"], "sublayer": mi["sublayer"],
                                "channel": mi["channel"], "distance": mi["distance"]},
                        attrs={"units": "nats"})


def bowtie_positions(mi: xr.Dataset, distances: Sequence[int] = BOWTIE_DISTANCES
                     ) -> list[tuple[int, int]]:
    """(distance, flat position) of the bowtie neighbours: on the centre's row, ``d``
    patches right (left, then along the column, where the grid ends), as in the static
    bowtie figure."""
    rows, cols = int(mi.attrs["grid_rows"]), int(mi.attrs["grid_cols"])
    r0, c0 = int(mi.attrs["centre_row"]), int(mi.attrs["centre_col"])
    out = []
    for d in distances:
        for r, c in ((r0, c0 + d), (r0, c0 - d), (r0 + d, c0), (r0 - d, c0)):
            if 0 <= r < rows and 0 <= c < cols:
                out.append((int(d), r * cols + c))
                break
    return out


def _strings(da: xr.DataArray) -> list[str]:
    return [str(v) for v in da.values]


def _neurons(datasets: Mapping[str, xr.Dataset]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    ref = next((datasets[a] for a in ("histograms", "moments", "mi") if a in datasets), None)
    if ref is None:
        return None
    out["layers"] = [int(v) for v in ref["layer"].values]
    out["sublayers"] = _strings(ref["sublayer"])
    out["channels"] = [int(v) for v in ref["channel"].values]
    if "mi" in datasets:
        mi = datasets["mi"]
        curves = neuron_mi_curves(mi).sel(layer=ref["layer"], sublayer=ref["sublayer"])
        out["mi"] = {
            "channels": [int(v) for v in mi["channel"].values],
            "distance": [int(v) for v in mi["distance"].values],
            # float16 (3 significant digits): the page's largest array after the histograms
            "curve": curves.values.astype(np.float16),
            "layer_mean": mi["mi_vs_distance"].sel(layer=ref["layer"], sublayer=ref["sublayer"])
            .values.astype(np.float32),
        }
        if "mi_null_level" in mi:
            out["mi"]["null"] = mi["mi_null_level"].sel(
                layer=ref["layer"], sublayer=ref["sublayer"]).values.astype(np.float32)
        if "joint_counts" in mi and "kept_channel" in mi:
            out["bowtie"] = _bowties(mi, ref)
    if "histograms" in datasets:
        h = datasets["histograms"]
        lo, hi = h["bin_lower"].values, h["bin_upper"].values
        inner = np.isfinite(lo) & np.isfinite(hi)
        counts = h["histogram"].sel(layer=ref["layer"], sublayer=ref["sublayer"]).values
        total = counts.sum(-1, keepdims=True).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, counts / total, np.nan)
        out["hist"] = {
            "lower": lo[inner].astype(np.float32), "upper": hi[inner].astype(np.float32),
            "share": log_quantize(share[..., inner]),
            "total": total[..., 0].astype(np.float64),
        }
    if "moments" in datasets:
        k = datasets["moments"]["excess_kurtosis"].sel(layer=ref["layer"],
                                                        sublayer=ref["sublayer"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neurons stay NaN
            out["kurtosis"] = np.nanmedian(k.values, axis=-1).astype(np.float16)
    return out


#: decades below 1 that :func:`log_quantize` resolves (shares < 1e-8 are stored as 1e-8)
LOG_DECADES = 8.0


def log_quantize(share: np.ndarray) -> np.ndarray:
    """Shares in (0, 1] as uint8 on a log scale: 0 for empty, else
    ``1 + round((log10(share) + 8) * 254 / 8)``, a step of 8/254 decades (7.5 %, so any
    share is within 3.7 % of its code's value). The page's log-density plot needs no
    more; as uint8 the histograms, the page's largest part, shrink 2-3x against
    float16 or integer counts after compression. NaN (no samples) maps to 0.
    """
    s = np.nan_to_num(np.asarray(share, dtype=np.float64), nan=0.0)
    code = 1 + np.round((np.log10(np.maximum(s, 10 ** -LOG_DECADES)) + LOG_DECADES)
                        * 254 / LOG_DECADES)
    return np.where(s > 0, code, 0).astype(np.uint8)


def log_unquantize(code: np.ndarray) -> np.ndarray:
    """The shares that :func:`log_quantize`'s codes stand for (0 for code 0)."""
    c = np.asarray(code, dtype=np.float64)
    return np.where(c > 0, 10 ** ((c - 1) * LOG_DECADES / 254 - LOG_DECADES), 0.0)


def _bowties(mi: xr.Dataset, ref: xr.Dataset) -> dict[str, Any]:
    """Joint counts of the kept channels at the bowtie distances, with their bin edges."""
    where = bowtie_positions(mi)
    positions = [p for _, p in where]
    cp = int(mi.attrs["centre_row"]) * int(mi.attrs["grid_cols"]) + int(mi.attrs["centre_col"])
    layers, subs = ref["layer"], ref["sublayer"]
    kept = mi["kept_channel"].sel(layer=layers, sublayer=subs).values  # (L, S, K)
    counts = mi["joint_counts"].sel(layer=layers, sublayer=subs,
                                    position=positions).values  # (L, S, K, D, B, B)
    lengths = (kept.shape[0], kept.shape[1], kept.shape[2])
    b = mi.sizes["bin_x"]
    x_edges = np.full((*lengths, b + 1), np.nan, np.float32)
    y_edges = np.full((*lengths, len(positions), b + 1), np.nan, np.float32)
    channel_index = {int(c): i for i, c in enumerate(mi["channel"].values)}
    edges = mi["edges"].sel(layer=layers, sublayer=subs).values  # (L, S, C, P, B-1)
    lo = mi["calibration_min"].sel(layer=layers, sublayer=subs).values
    hi = mi["calibration_max"].sel(layer=layers, sublayer=subs).values
    for i, j, k in np.ndindex(*lengths):
        ch = int(kept[i, j, k])
        if ch < 0:
            continue
        c = channel_index[ch]

        def cell_edges(p: int, i=i, j=j, c=c) -> np.ndarray:
            inner = edges[i, j, c, p]
            return np.concatenate([[min(lo[i, j, c, p], inner[0])], inner,
                                   [max(hi[i, j, c, p], inner[-1])]])

        x_edges[i, j, k] = cell_edges(cp)
        for n, p in enumerate(positions):
            y_edges[i, j, k, n] = cell_edges(p)
    return {"kept": kept.astype(np.int32), "distances": [d for d, _ in where],
            "counts": counts.astype(np.uint32), "x_edges": x_edges, "y_edges": y_edges}


def _heads(datasets: Mapping[str, xr.Dataset]) -> dict[str, Any] | None:
    if "qk" not in datasets and "angles" not in datasets:
        return None
    ref = datasets["qk"] if "qk" in datasets else datasets["angles"]
    out: dict[str, Any] = {"layers": [int(v) for v in ref["layer"].values],
                           "heads": [int(v) for v in ref["head"].values]}
    if "qk" in datasets:
        q = datasets["qk"]
        out["qk"] = {
            "eig_sym": q["eig_sym"].values.astype(np.float32),
            "lambda_asym": q["lambda_asym"].values.astype(np.float32),
            "singular_value": q["singular_value"].values.astype(np.float32),
            "measures": {m: q[m].values.astype(np.float32) for m in QK_MEASURES if m in q},
        }
    if "angles" in datasets:
        a = datasets["angles"]
        out["angles"] = {
            "variants": _strings(a["variant"]),
            "angle": a["angle"].values.astype(np.float32),
            "baseline": a["baseline_density"].values.astype(np.float32),  # (L, V, A)
            "attention": a["attention_density"].values.astype(np.float32),  # (L, V, H, A)
            "measures": {m: a[m].values.astype(np.float32) for m in ANGLE_MEASURES if m in a},
        }
    return out


def explorer_data(datasets: Mapping[str, xr.Dataset], label: str,
                  description: str = "") -> dict[str, Any]:
    """The explorer's data for one model, as numpy arrays and plain values.

    Parameters
    ----------
    datasets : the model's slice of each results file (no ``model`` dimension).
    label : the model's name in the explorer's model menu.
    description : one line shown under the menu (spec, weights).

    Returns
    -------
    dict with ``label``, ``description``, ``neurons`` (``layers``, ``sublayers``,
    ``channels``; ``mi`` with per-neuron ``curve`` (layer, sublayer, channel, distance)
    and ``layer_mean`` (layer, sublayer, distance) in nats; ``hist`` with ``counts``
    (layer, sublayer, channel, bin) over the finite bins ``lower``..``upper`` in
    standard deviations; ``kurtosis`` (layer, sublayer, channel): median excess
    kurtosis over positions; ``bowtie`` with ``counts`` (layer, sublayer, kept,
    distance, bin_x, bin_y) and edges in activation units), ``heads`` (``qk`` spectra
    (layer, head, mode) and measures (layer, head); ``angles`` densities (1/degree)
    and measures (layer, variant, head)). Missing analyses are absent.
    """
    return {"label": label, "description": description,
            "neurons": _neurons(datasets), "heads": _heads(datasets)}


def _run_models(datasets: Mapping[str, xr.Dataset], manifest: Mapping[str, Any] | None
                ) -> list[dict[str, Any]]:
    """One explorer model per variant along ``model`` (main model first)."""
    widest = max(datasets.values(), key=lambda ds: ds.sizes.get(MODEL_DIM, 1))
    names = [str(v) for v in widest[MODEL_DIM].values] if MODEL_DIM in widest.dims else [""]
    spec = str(manifest["model"]["spec"]) if manifest else ""
    models = []
    for k, name in enumerate(names):
        sliced = {}
        for analysis, ds in datasets.items():
            if MODEL_DIM not in ds.dims:
                if k == 0:
                    sliced[analysis] = ds
            elif k == 0:
                sliced[analysis] = ds.isel({MODEL_DIM: 0})
            elif name in ds[MODEL_DIM].values:
                sliced[analysis] = ds.sel({MODEL_DIM: name})
        label = f"{spec} ({name})" if spec and name else (spec or name or "model")
        models.append(explorer_data(sliced, label, _describe(manifest, k, name)))
    return models


def _describe(manifest: Mapping[str, Any] | None, k: int, name: str) -> str:
    if not manifest:
        return name
    m = manifest["model"]
    source = m.get("source", "") if k == 0 else f"{name} control of the same architecture"
    return (f"{m['spec']}: {source}; {m['n_layers']} layers x {m['n_heads']} heads, "
            f"d_model {m['d_model']}, {m['grid'][0]}x{m['grid'][1]} patches")


def models_from_entries(entries: Sequence[ModelEntry]) -> list[dict[str, Any]]:
    """Explorer models of a comparison's entries (one per model compared)."""
    return [explorer_data(e.datasets, e.label, _describe(e.run.manifest, 0 if e.variant ==
                                                         e.run.variants[0] else 1, e.variant))
            for e in entries]


# -- encoding and the page fragment ----------------------------------------------------------
_DTYPES = {np.dtype(np.float16): "f2", np.dtype(np.float32): "f4", np.dtype(np.float64): "f8",
           np.dtype(np.uint32): "u4", np.dtype(np.int32): "i4", np.dtype(np.uint8): "u1"}


def _encode(value: Any) -> Any:
    """JSON-able form: numpy arrays become {"a": dtype, "s": shape, "z": base64 zlib}."""
    if isinstance(value, np.ndarray):
        if value.dtype not in _DTYPES:
            value = value.astype(np.float32)
        code = _DTYPES[value.dtype]
        data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        return {"a": code, "s": list(value.shape),
                "z": base64.b64encode(zlib.compress(data.tobytes(), 9)).decode("ascii")}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _asset(name: str) -> str:
    # the assets ship inside this package (package-data)
    return resources.files(__package__).joinpath("assets", name).read_text("utf-8")


def explorer_html_models(models: Sequence[dict[str, Any]]) -> str:
    """The explorer's HTML fragment (a ``<section id="explorer">``) for ``models``
    (from :func:`explorer_data`): markup, the data, the plotter, all inline."""
    payload = json.dumps(_encode(list(models)), separators=(",", ":"), allow_nan=False)
    # "</" cannot close the script element inside JSON strings (base64 and labels)
    payload = payload.replace("</", "<\\/")
    return (f"<style>{_asset('explorer.css')}</style>\n{_asset('explorer.html')}\n"
            f'<script type="application/json" id="explorer-data">{payload}</script>\n'
            f"<script>{_asset('explorer.js')}</script>")


def explorer_html(datasets: Mapping[str, xr.Dataset], manifest: Mapping[str, Any] | None = None
                  ) -> str:
    """The explorer for one run: every model in its results (main model, controls).

    Parameters
    ----------
    datasets : ``results/<analysis>.nc`` by analysis name, as
        :func:`vitprobe.report.open_results` loads them (with the ``model`` dimension).
    manifest : the run's ``manifest.json`` (labels the models); optional.

    Returns
    -------
    str: an HTML fragment to place in ``report.html`` (self-contained, offline).
    """
    return explorer_html_models(_run_models(datasets, manifest))
