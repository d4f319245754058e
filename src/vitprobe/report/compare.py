"""Compare finished runs side by side: ``vitprobe compare RUN RUN ... --out DIR``.

Researchers ask their questions across models (supervised ViT against DINO, DINOv2,
CLIP, MAE, DeiT; trained against random init; a checkpoint against its fine-tuned
version). This module reads finished run folders only (``manifest.json`` and
``results/*.nc``: no model, no images), checks that the runs can be compared, and
writes one report with one line or panel per model:

* mutual information against distance (one panel per model, lines per layer);
* per-layer numbers, one line per model: MI at distance 1 and its mean over
  distances >= 1, median excess kurtosis, the attention-weighted angle shift and the
  share of attention above 90 degrees, the query-key measures (symmetry score,
  singular-value-weighted cosine, positive share of M_sym's spectrum; median and
  quartiles over heads);
* any other analysis's per-layer variables (dims ``(layer,)``) and curves (one
  numeric non-layer dim), so that a new analysis such as salience appears without a
  change here;
* the same per-layer numbers as a table (``comparison_layers.csv``) and the MI
  curves in long form (``comparison_mi_vs_distance.csv``).

What is compared
----------------
Each run contributes its main model (the first entry along ``model``, see
:mod:`vitprobe.schema`); ``controls=True`` adds the run's controls (drawn dashed in
the run's colour). Runs must hold the same analyses (or the ones named in
``analyses``) over the same image set (``images.ids_sha256`` in the manifests);
anything else that differs is stated in the report's notes. Runs of different depth
are drawn against relative depth ``(layer + 0.5) / L``, so that layer 1 of 6 and layer
1 of 12 sit at 1/12 and 1/24 of the depth, and the last layers at 11/12 and 23/24.
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from vitprobe.cache import atomic_write
from vitprobe.errors import IncomparableRunsError, ResultsError
from vitprobe.netcdf import open_lazily
from vitprobe.plots.common import save_figure
from vitprobe.report.html import DPI
from vitprobe.schema import MODEL_DIM, TRAINED, model_style, stack_models

__all__ = [
    "Comparison",
    "ModelEntry",
    "Run",
    "compare",
    "compare_runs",
    "layer_table",
    "mi_table",
    "read_run",
    "write_comparison",
]

#: analyses with dedicated comparison figures; others get the generic per-layer panels
KNOWN_ANALYSES = ("mi", "moments", "histograms", "angles", "qk")
SUBLAYER_TITLES = {"attn": "MHA", "mlp": "MLP"}
REPORT = "comparison.html"
LAYERS_CSV = "comparison_layers.csv"
MI_CSV = "comparison_mi_vs_distance.csv"
FIGURES_DIR = "figures"


@dataclass
class Run:
    """One finished run folder, read from its files alone.

    Attributes
    ----------
    path : the run folder.
    manifest : ``manifest.json``.
    datasets : ``results/<analysis>.nc`` by analysis name, each with the leading
        ``model`` dimension (main model first, then controls).
    """

    path: Path
    manifest: dict
    datasets: dict[str, xr.Dataset]

    @property
    def n_layers(self) -> int:
        return int(self.manifest["model"]["n_layers"])

    @property
    def spec(self) -> str:
        return str(self.manifest["model"]["spec"])

    @property
    def variants(self) -> list[str]:
        """Model variants in the run's files: the main model first, then controls."""
        widest = max(self.datasets.values(), key=lambda ds: ds.sizes[MODEL_DIM])
        return [str(v) for v in widest[MODEL_DIM].values]


@dataclass
class ModelEntry:
    """One line (or panel) of the comparison: one model variant of one run.

    Attributes
    ----------
    label : unique display label (the run folder's name; ``name (control)`` for a control).
    run : the run it comes from.
    variant : its name along ``model`` in the run's files (``"trained"``, ``"random-init"``).
    index : the run's position in the comparison (picks the colour).
    datasets : the run's results sliced to this model (no ``model`` dimension).
    """

    label: str
    run: Run
    variant: str
    index: int
    datasets: dict[str, xr.Dataset]

    @property
    def n_layers(self) -> int:
        return self.run.n_layers

    def depth(self, layers: np.ndarray) -> np.ndarray:
        """Relative depth ``(layer + 0.5) / L`` of 0-based layers (dimensionless, 0..1)."""
        return (np.asarray(layers, dtype=np.float64) + 0.5) / self.n_layers


@dataclass
class Comparison:
    """Runs checked for comparability, ready to tabulate and draw.

    Attributes
    ----------
    entries : the models compared, in the order given.
    analyses : the analyses compared (results files every run holds).
    relative_depth : True when depths differ: layers are placed at ``(layer + 0.5) / L``.
    notes : plain statements of what differs between the runs but does not prevent
        the comparison (grids, bins, channels, image counts).
    """

    entries: list[ModelEntry]
    analyses: tuple[str, ...]
    relative_depth: bool
    notes: list[str] = field(default_factory=list)

    def x(self, entry: ModelEntry, layers: np.ndarray) -> np.ndarray:
        """The x position of 0-based ``layers``: 1-based layer number, or relative depth."""
        layers = np.asarray(layers)
        return entry.depth(layers) if self.relative_depth else layers + 1.0

    @property
    def x_label(self) -> str:
        return ("relative depth (layer + 0.5) / L" if self.relative_depth else "layer")


# -- reading -------------------------------------------------------------------------------
def read_run(path: str | Path) -> Run:
    """Read a finished run folder: ``manifest.json`` and every ``results/*.nc``.

    Files written before every result had the ``model`` dimension (statistics files of
    a run without control) hold the main model alone; they are given the dimension here,
    named after the run's own model variant.

    Raises
    ------
    ResultsError
        The folder has no manifest, the run did not finish (``status`` is not
        ``complete``), or it holds no results.
    """
    from vitprobe.runfolder import read_manifest

    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"{path} is not a folder; give run folders written by 'vitprobe run'")
    manifest = read_manifest(path)
    if manifest.get("status") != "complete":
        raise ResultsError(
            f"{path}: the run has status {manifest.get('status')!r}, not 'complete'; finish it "
            "first (vitprobe run ... --resume) and compare finished runs only")
    folder = path / "results"
    files = sorted(folder.glob("*.nc")) if folder.is_dir() else []
    if not files:
        raise ResultsError(f"{path} holds no results/*.nc files")
    # lazily: a comparison reads a few small variables of files that hold hundreds of
    # MB (per-neuron moments, bin edges), on first use
    datasets = {file.stem: open_lazily(file) for file in files}
    named = [ds for ds in datasets.values() if MODEL_DIM in ds.dims]
    main_name = str(named[0][MODEL_DIM].values[0]) if named else TRAINED
    datasets = {k: ds if MODEL_DIM in ds.dims else stack_models({main_name: ds})
                for k, ds in datasets.items()}
    return Run(path, manifest, datasets)


def _unique_labels(runs: Sequence[Run], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(runs):
            raise IncomparableRunsError(
                f"{len(labels)} labels for {len(runs)} runs; give one label per run")
        if len(set(labels)) != len(labels):
            raise IncomparableRunsError(f"labels must differ: {list(labels)}")
        return list(labels)
    names = [r.path.resolve().name for r in runs]
    if len(set(names)) == len(names):
        return names
    # same folder names: prefix the parent folder
    names = [f"{r.path.resolve().parent.name}/{r.path.resolve().name}" for r in runs]
    if len(set(names)) == len(names):
        return names
    return [str(r.path) for r in runs]


def compare_runs(runs: Sequence[str | Path | Run], *, labels: Sequence[str] | None = None,
                 analyses: Sequence[str] | None = None, controls: bool = False,
                 allow_different_images: bool = False) -> Comparison:
    """Read and check runs for a side-by-side comparison.

    Parameters
    ----------
    runs : two or more run folders (or :class:`Run` objects).
    labels : display labels, one per run (default: the folder names).
    analyses : the analyses to compare (default: every analysis of the first run);
        every run must hold them.
    controls : also compare each run's controls (random init), dashed in its colour.
    allow_different_images : compare runs on different image sets (otherwise refused);
        the report then says so.

    Returns
    -------
    Comparison

    Raises
    ------
    IncomparableRunsError
        Fewer than two runs; a run lacks an analysis the others have (or one named in
        ``analyses``); the image sets differ (``images.ids_sha256``); labels clash;
        nothing left to compare.
    ResultsError
        A folder is not a finished run.

    Examples
    --------
    >>> cmp = compare_runs(["runs/dinov2", "runs/dinov2-random"])  # doctest: +SKIP
    >>> layer_table(cmp).head()  # doctest: +SKIP
    """
    loaded = [r if isinstance(r, Run) else read_run(r) for r in runs]
    if len(loaded) < 2:
        raise IncomparableRunsError(f"compare needs at least two runs, got {len(loaded)}")
    seen: dict[Path, int] = {}
    for i, run in enumerate(loaded):
        first = seen.setdefault(run.path.resolve(), i)
        if first != i:
            raise IncomparableRunsError(
                f"the same run folder is given twice ({loaded[first].path} and {run.path}); "
                "compare different runs (a run's own control is drawn beside it already)")
    names = _unique_labels(loaded, labels)
    wanted = tuple(analyses) if analyses else tuple(loaded[0].datasets)
    missing = {name: [a for a in wanted if a not in run.datasets]
               for name, run in zip(names, loaded, strict=True)}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        common = sorted(set.intersection(*(set(r.datasets) for r in loaded)))
        what = "; ".join(f"{k} lacks {', '.join(f'results/{a}.nc' for a in v)}"
                         for k, v in missing.items())
        raise IncomparableRunsError(
            f"the runs do not hold the same analyses: {what}. Rerun those with "
            f"--analyses including them, or compare only the analyses all runs hold: "
            f"--analyses {','.join(common) if common else '(none in common)'}")
    hashes = {name: run.manifest["images"].get("ids_sha256")
              for name, run in zip(names, loaded, strict=True)}
    notes: list[str] = []
    if len(set(hashes.values())) > 1:
        groups: dict[str, list[str]] = {}
        for name, h in hashes.items():
            groups.setdefault(str(h), []).append(name)
        described = "; ".join(
            f"{', '.join(members)}: {_images_of(loaded[names.index(members[0])])} "
            f"(image set sha256 {h[:12]}...)" for h, members in groups.items())
        if not allow_different_images:
            raise IncomparableRunsError(
                "the runs were measured on different image sets, so their numbers differ for "
                f"that reason too: {described}. Run them with the same --images, --n-images "
                "and --seed, or pass --allow-different-images to compare anyway")
        notes.append(f"Different image sets (compared on request): {described}.")
    entries: list[ModelEntry] = []
    for index, (name, run) in enumerate(zip(names, loaded, strict=True)):
        main = run.variants[0]
        # a control counts where every compared file holds it (qk.nc always carries a
        # random-init baseline, also in runs without --control)
        extra = [v for v in run.variants[1:]
                 if all(v in run.datasets[a][MODEL_DIM].values for a in wanted)]
        entries.append(ModelEntry(name, run, main, index, {
            a: run.datasets[a].isel({MODEL_DIM: 0}) for a in wanted}))
        for variant in extra if controls else []:
            entries.append(ModelEntry(f"{name} ({variant})", run, variant, index, {
                a: run.datasets[a].sel({MODEL_DIM: variant}) for a in wanted}))
    depths = {e.run.n_layers for e in entries}
    relative = len(depths) > 1
    if relative:
        notes.append(
            "The models differ in depth (" + ", ".join(
                f"{n}: {r.n_layers} layers" for n, r in zip(names, loaded, strict=True))
            + "): layers are drawn at relative depth (layer + 0.5) / L.")
    notes += _differences(names, loaded, wanted)
    return Comparison(entries, wanted, relative, notes)


def _images_of(run: Run) -> str:
    images = run.manifest["images"]
    return f"{images.get('n_selected', '?')} images of {images.get('source', '?')} " \
           f"(seed {images.get('seed', '?')})"


def _differences(names: list[str], runs: list[Run], analyses: Sequence[str]) -> list[str]:
    """Plain notes on what differs between runs that stays comparable."""
    notes = []

    def differ(what: str, values: list, unit: str = "") -> None:
        if len({json.dumps(v, default=str) for v in values}) > 1:
            notes.append(f"{what} differ: " + ", ".join(
                f"{n} {v}{unit}" for n, v in zip(names, values, strict=True)) + ".")

    differ("Patch grids", ["x".join(map(str, r.manifest["model"]["grid"])) for r in runs])
    if len(notes) and notes[-1].startswith("Patch grids"):
        notes[-1] += (" MI against distance is in patch units, so the same distance covers a "
                      "different share of the image.")
    differ("Model widths (d_model)", [r.manifest["model"]["d_model"] for r in runs])
    differ("Images counted", [r.manifest.get("n_images_counted") for r in runs])
    if "mi" in analyses:
        differ("MI bins per neuron", [r.datasets["mi"].attrs.get("bins") for r in runs])
        differ("MI channels per sublayer", [r.datasets["mi"].sizes.get("channel") for r in runs])
    return notes


# -- numbers -------------------------------------------------------------------------------
def _median_quartiles(values: xr.DataArray, over: Sequence[str]) -> tuple[np.ndarray, ...]:
    """(median, 25th, 75th percentile) over ``over``, NaNs ignored; shape of the rest."""
    stacked = values.stack(_flat=list(over)).transpose(..., "_flat").values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN layers give NaN, as meant
        q = np.nanpercentile(stacked, [50, 25, 75], axis=-1)
    return q[0], q[1], q[2]


def _per_layer_columns(entry: ModelEntry) -> dict[str, np.ndarray]:
    """Per-layer numbers of one model: column name -> (layer,) values (0-based layers)."""
    d = entry.datasets
    cols: dict[str, np.ndarray] = {}
    if "mi" in d:
        mi = d["mi"]
        for sub in mi["sublayer"].values:
            curve = mi["mi_vs_distance"].sel(sublayer=sub)  # (layer, distance)
            name = str(sub)
            if 1 in curve["distance"].values:
                cols[f"mi_{name}_d1"] = curve.sel(distance=1).values
            far = curve.where(curve["distance"] >= 1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                cols[f"mi_{name}_mean_d_ge1"] = np.nanmean(far.values, axis=1)
            if "mi_null_level" in mi:
                cols[f"mi_{name}_null"] = mi["mi_null_level"].sel(sublayer=sub).values
    if "moments" in d:
        k = d["moments"]["excess_kurtosis"]
        for sub in k["sublayer"].values:
            med, q25, q75 = _median_quartiles(k.sel(sublayer=sub), ("channel", "position"))
            cols[f"kurtosis_{sub}_median"] = med
            cols[f"kurtosis_{sub}_q25"] = q25
            cols[f"kurtosis_{sub}_q75"] = q75
    if "angles" in d:
        a = d["angles"]
        for variant in a["variant"].values:
            cols[f"angle_shift_{variant}"] = a["layer_angle_shift"].sel(variant=variant).values
            cols[f"share_above_90_{variant}"] = (
                a["layer_share_attention_above_90"].sel(variant=variant).values)
    if "qk" in d:
        q = d["qk"]
        for var, short in (("symmetry", "symmetry"), ("weighted_cosine", "weighted_cosine"),
                           ("positive_share", "positive_share")):
            med, q25, q75 = _median_quartiles(q[var], ("head",))
            cols[f"{short}_median"] = med
            cols[f"{short}_q25"] = q25
            cols[f"{short}_q75"] = q75
        if "layer_symmetry" in q:
            cols["layer_symmetry"] = q["layer_symmetry"].values
    for analysis, ds in d.items():
        if analysis in KNOWN_ANALYSES:
            continue
        for var, da in ds.data_vars.items():
            if da.dims == ("layer",) and da.dtype.kind in "fiu":
                cols[f"{analysis}:{var}"] = da.values.astype(np.float64)
    return cols


def layer_table(comparison: Comparison) -> pd.DataFrame:
    """One row per model and layer: the per-layer numbers of every model compared.

    Columns: ``model`` (label), ``run`` (folder), ``variant``, ``spec``, ``layer``
    (1-based, as in the figures), ``n_layers``, ``relative_depth`` ((layer + 0.5) / L),
    then the measures: ``mi_<sublayer>_d1`` (mean MI with the central neuron at distance
    1, nats), ``mi_<sublayer>_mean_d_ge1`` (mean over distances >= 1), ``mi_<sublayer>_null``
    (shuffled-pair null level), ``kurtosis_<sublayer>_median|q25|q75`` (excess kurtosis
    across neurons), ``angle_shift_<variant>`` (attention-weighted minus baseline mean
    angle, degrees), ``share_above_90_<variant>`` (share of attention above 90 degrees),
    ``symmetry|weighted_cosine|positive_share_median|q25|q75`` (across heads),
    ``layer_symmetry``, and ``<analysis>:<variable>`` for other analyses' per-layer
    variables. Every value is read from, or a median of, the runs' results files.
    """
    frames = []
    for e in comparison.entries:
        layers = _layers_of(e)
        cols = _per_layer_columns(e)
        frame = pd.DataFrame({
            "model": e.label, "run": str(e.run.path), "variant": e.variant, "spec": e.run.spec,
            "layer": layers + 1, "n_layers": e.n_layers,
            "relative_depth": e.depth(layers),
            **{k: np.asarray(v, dtype=np.float64) for k, v in cols.items()},
        })
        frames.append(frame)
    return pd.concat(frames, ignore_index=True, sort=False)


def mi_table(comparison: Comparison) -> pd.DataFrame:
    """MI against distance in long form: model, layer (1-based), relative depth,
    sublayer, distance (patches), mi, stderr and null (nats)."""
    rows = []
    for e in comparison.entries:
        if "mi" not in e.datasets:
            continue
        mi = e.datasets["mi"]
        for layer in mi["layer"].values:
            for sub in mi["sublayer"].values:
                sel = dict(layer=layer, sublayer=sub)
                y = mi["mi_vs_distance"].sel(**sel).values
                err = (mi["mi_vs_distance_stderr"].sel(**sel).values
                       if "mi_vs_distance_stderr" in mi else np.full_like(y, np.nan))
                for dist, v, s in zip(mi["distance"].values, y, err, strict=True):
                    rows.append((e.label, e.variant, int(layer) + 1,
                                 float(e.depth(np.array([layer]))[0]), str(sub), int(dist),
                                 float(v), float(s)))
    return pd.DataFrame(rows, columns=["model", "variant", "layer", "relative_depth",
                                       "sublayer", "distance", "mi", "mi_stderr"])


def _layers_of(entry: ModelEntry) -> np.ndarray:
    for ds in entry.datasets.values():
        if "layer" in ds.coords:
            return np.asarray(ds["layer"].values, dtype=np.int64)
    return np.arange(entry.n_layers)


# -- figures -------------------------------------------------------------------------------
def _color(entry: ModelEntry) -> str:
    return matplotlib.colormaps["tab10"](entry.index % 10)


def _linestyle(entry: ModelEntry) -> str:
    return model_style(entry.run.variants, entry.variant).linestyle


def _layer_axis(ax, comparison: Comparison) -> None:
    ax.set_xlabel(comparison.x_label, fontsize=8)
    if comparison.relative_depth:
        ax.set_xlim(0, 1)
    else:
        n = comparison.entries[0].n_layers
        ax.set_xticks(range(1, n + 1))


def plot_mi_comparison(comparison: Comparison) -> Figure:
    """MI against distance: one row of panels per model (MHA, MLP), one line per layer
    coloured by relative depth, shared y axis; grey band: the model's shuffled-pair null."""
    entries = [e for e in comparison.entries if "mi" in e.datasets]
    subs = [s for s in ("attn", "mlp") if s in entries[0].datasets["mi"]["sublayer"].values]
    fig = Figure(figsize=(3.9 * len(subs) + 1.6, 2.4 * len(entries) + 0.8),
                 layout="constrained")
    axes = fig.subplots(len(entries), len(subs), squeeze=False, sharey=True)
    cmap = matplotlib.colormaps["viridis"]
    for i, e in enumerate(entries):
        mi = e.datasets["mi"]
        for j, sub in enumerate(subs):
            ax = axes[i, j]
            if "mi_null_level" in mi:
                lv = float(np.nanmean(mi["mi_null_level"].sel(sublayer=sub).values))
                sd = float(np.nanmean(mi["mi_null_std"].sel(sublayer=sub).values)) \
                    if "mi_null_std" in mi else 0.0
                if np.isfinite(lv):
                    ax.axhspan(lv - sd, lv + sd, color="0.88", zorder=0)
            for layer in mi["layer"].values:
                y = mi["mi_vs_distance"].sel(layer=layer, sublayer=sub).values
                ax.plot(mi["distance"].values, y, lw=1.1, marker="o", ms=2,
                        color=cmap(float(e.depth(np.array([layer]))[0])),
                        label=f"layer {int(layer) + 1}")
            ax.set_title(f"{e.label}: {SUBLAYER_TITLES.get(str(sub), str(sub))}", fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if i == len(entries) - 1:
                ax.set_xlabel("distance from the central patch (patches)", fontsize=8)
            if j == 0:
                ax.set_ylabel("MI (nats)", fontsize=8)
    sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 1))
    cbar = fig.colorbar(sm, ax=axes.ravel().tolist(), fraction=0.04, aspect=40)
    cbar.set_label("relative depth (layer + 0.5) / L", fontsize=8)
    fig.suptitle("MI with the central neuron against distance, one row per model "
                 "(grey band: shuffled-pair null)", fontsize=9)
    return fig


#: (column, panel title, y label) of the per-layer comparison figures, by group
PANELS = {
    "neurons": [
        ("mi_attn_d1", "MI at distance 1, MHA", "nats"),
        ("mi_mlp_d1", "MI at distance 1, MLP", "nats"),
        ("mi_attn_mean_d_ge1", "mean MI over distances >= 1, MHA", "nats"),
        ("mi_mlp_mean_d_ge1", "mean MI over distances >= 1, MLP", "nats"),
        ("kurtosis_attn_median", "excess kurtosis, MHA (median, quartiles)", "excess kurtosis"),
        ("kurtosis_mlp_median", "excess kurtosis, MLP (median, quartiles)", "excess kurtosis"),
    ],
    "angles": [
        ("angle_shift_raw", "angle shift, raw embeddings", "degrees"),
        ("angle_shift_centered", "angle shift, centred embeddings", "degrees"),
        ("share_above_90_raw", "attention above 90 degrees, raw", "share"),
        ("share_above_90_centered", "attention above 90 degrees, centred", "share"),
    ],
    "qk": [
        ("symmetry_median", "symmetry score 2s - 1 (heads: median, quartiles)", "score"),
        ("weighted_cosine_median", "weighted cosine (heads: median, quartiles)", "cosine"),
        ("positive_share_median", "positive share of M_sym (heads)", "share"),
        ("layer_symmetry", "symmetry score of the layer's summed M", "score"),
    ],
}

GROUP_TITLES = {
    "neurons": "Neurons: mutual information and kurtosis per layer",
    "angles": "Attention against embedding angles per layer",
    "qk": "Query-key weights per layer",
    "other": "Other analyses: per-layer variables",
}


def plot_layer_panels(comparison: Comparison, table: pd.DataFrame,
                      panels: Sequence[tuple[str, str, str]], title: str) -> Figure | None:
    """One panel per column of ``table``, one line per model against layer or relative
    depth; a ``<name>_median`` column gets its ``_q25``/``_q75`` band. None if no column
    is present."""
    panels = [p for p in panels if p[0] in table and table[p[0]].notna().any()]
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.4, 2.7 * nrows + 0.9))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (column, name, unit) in zip(axes.ravel(), panels, strict=False):
        for e in comparison.entries:
            rows = table[table["model"] == e.label]
            x = rows["relative_depth"].values if comparison.relative_depth else \
                rows["layer"].values.astype(float)
            y = rows[column].values
            ax.plot(x, y, color=_color(e), ls=_linestyle(e), marker="o", ms=3, lw=1.3,
                    label=e.label)
            if column.endswith("_median"):
                base = column[: -len("_median")]
                if f"{base}_q25" in rows:
                    ax.fill_between(x, rows[f"{base}_q25"].values, rows[f"{base}_q75"].values,
                                    color=_color(e), alpha=0.15, lw=0)
        if "kurtosis" in column:
            ax.set_yscale("symlog", linthresh=1.0)
        if "angle_shift" in column:
            ax.axhline(0, color="0.4", lw=0.8, ls="--")
        ax.set_title(name, fontsize=8)
        ax.set_ylabel(unit, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        _layer_axis(ax, comparison)
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) > 4), 1, 0.96))
    return fig


def _other_curves(comparison: Comparison) -> list[tuple[str, str]]:
    """(analysis, variable) of other analyses' curves: one numeric non-layer dim."""
    found = []
    first = comparison.entries[0].datasets
    for analysis in comparison.analyses:
        if analysis in KNOWN_ANALYSES or analysis not in first:
            continue
        for var, da in first[analysis].data_vars.items():
            if (da.ndim == 1 and da.dims[0] != "layer" and da.dtype.kind in "fiu"
                    and da.dims[0] in da.coords and da[da.dims[0]].dtype.kind in "fiu"):
                found.append((analysis, var))
    return found


def plot_other_curves(comparison: Comparison) -> Figure | None:
    """Curves of other analyses (a variable over one numeric coordinate, such as a
    salience curve), one line per model; None if there are none."""
    curves = _other_curves(comparison)
    if not curves:
        return None
    ncols = min(3, len(curves))
    nrows = -(-len(curves) // ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.4, 2.7 * nrows + 0.9))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel()[len(curves):]:
        ax.set_visible(False)
    for ax, (analysis, var) in zip(axes.ravel(), curves, strict=False):
        for e in comparison.entries:
            if analysis not in e.datasets or var not in e.datasets[analysis]:
                continue
            da = e.datasets[analysis][var]
            ax.plot(da[da.dims[0]].values, da.values, color=_color(e), ls=_linestyle(e),
                    marker="o", ms=3, lw=1.3, label=e.label)
        da0 = comparison.entries[0].datasets[analysis][var]
        ax.set_title(f"{analysis}: {da0.attrs.get('long_name', var)}", fontsize=8)
        ax.set_xlabel(f"{da0.dims[0]} {da0[da0.dims[0]].attrs.get('units', '')}".strip(),
                      fontsize=8)
        ax.set_ylabel(str(da0.attrs.get("units", "")), fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               frameon=False)
    fig.suptitle("Other analyses: curves, one line per model", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return fig


# -- the page ------------------------------------------------------------------------------
def _figures(comparison: Comparison, table: pd.DataFrame) -> list[tuple[str, str, Figure, str]]:
    """(slug, title, figure, caption) of every comparison figure that has data."""
    out = []
    n = len(comparison.entries)
    if "mi" in comparison.analyses:
        out.append(("compare_mi_vs_distance", "Mutual information against distance",
                     plot_mi_comparison(comparison),
                     f"Mean MI between the central neuron of each channel and the same channel "
                     f"at every other patch, against distance, for each of the {n} models (one "
                     "row each), lines coloured by relative depth; each run's own estimator "
                     "settings (see the notes where they differ). Data: <code>results/mi.nc"
                     "</code> of each run, <code>mi_vs_distance</code>."))
    other_cols = [(c, c, "") for c in table.columns if ":" in c]
    for group in ("neurons", "angles", "qk", "other"):
        panels = PANELS.get(group, other_cols)
        fig = plot_layer_panels(comparison, table, panels, GROUP_TITLES[group])
        if fig is None:
            continue
        out.append((f"compare_{group}", GROUP_TITLES[group], fig,
                    "One line per model against " + comparison.x_label + "; bands: quartiles "
                    "(across neurons for kurtosis, across heads for the query-key measures). "
                    "The same numbers are in the table below and in "
                    f"<code>{LAYERS_CSV}</code>."))
    fig = plot_other_curves(comparison)
    if fig is not None:
        out.append(("compare_other_curves", "Other analyses: curves", fig,
                    "Curves of analyses without a dedicated figure, one line per model."))
    return out


def _fig_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    save_figure(fig, buf, dpi=DPI, close=False)
    return buf.getvalue()


def _table_html(table: pd.DataFrame) -> str:
    shown = [c for c in table.columns if c not in ("run", "spec", "n_layers")
             and not c.endswith(("_q25", "_q75"))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = []
    for _, row in table[shown].iterrows():
        cells = []
        for c in shown:
            v = row[c]
            if isinstance(v, float | np.floating):
                text = "" if not np.isfinite(v) else f"{v:.4g}"
                cells.append(f'<td class="num">{text}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="tablewrap"><table class="layers"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _csv_link(data: str, name: str) -> str:
    b64 = base64.b64encode(data.encode("utf-8")).decode("ascii")
    return (f'<a download="{name}" href="data:text/csv;base64,{b64}">download '
            f"<code>{name}</code></a>")


def write_comparison(comparison: Comparison, out: str | Path, *, pdf: bool = False,
                     explorer: bool = True) -> Path:
    """Write the comparison report: ``comparison.html``, the CSV tables and the figures.

    Parameters
    ----------
    comparison : from :func:`compare_runs`.
    out : the output folder (created).
    pdf : also save every figure as PDF under ``figures/``.
    explorer : embed the interactive explorer (every neuron and head of every model).

    Returns
    -------
    Path of ``comparison.html``, one self-contained file (figures, tables and the
    explorer's data embedded; no network).
    """
    from vitprobe.report.html import STYLE

    out = Path(out)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    table = layer_table(comparison)
    layers_csv = table.to_csv(index=False, float_format="%.9g")
    mi_csv = mi_table(comparison).to_csv(index=False, float_format="%.9g")
    for name, text in ((LAYERS_CSV, layers_csv), (MI_CSV, mi_csv)):
        with atomic_write(out / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
    figures = []
    for slug, title, fig, caption in _figures(comparison, table):
        png = _fig_png(fig)
        with atomic_write(fig_dir / f"{slug}.png") as tmp:
            tmp.write_bytes(png)
        if pdf:
            save_figure(fig, fig_dir / f"{slug}.pdf", dpi=DPI, fmt="pdf", close=False)
        fig.clf()
        figures.append((slug, title, png, caption))
    title = "vitprobe comparison: " + ", ".join(e.label for e in comparison.entries)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{STYLE}{COMPARE_STYLE}</style></head>",
             "<body><main>", f"<h1>{html.escape(title)}</h1>"]
    parts.append('<table class="meta"><tr><th>model</th><th>run</th><th>spec</th>'
                  "<th>weights</th><th>layers x heads</th><th>images</th></tr>")
    for e in comparison.entries:
        m = e.run.manifest
        parts.append(
            f"<tr><td><b>{html.escape(e.label)}</b></td><td><code>{html.escape(str(e.run.path))}"
            f"</code></td><td>{html.escape(e.run.spec)}</td><td>{html.escape(e.variant)}: "
            f"{html.escape(str(m['model'].get('source', '')))}</td>"
            f"<td>{m['model']['n_layers']} x {m['model']['n_heads']}</td>"
            f"<td>{m.get('n_images_counted', '?')} of {html.escape(str(m['images']['source']))}"
            "</td></tr>")
    parts.append("</table>")
    parts.append("<h2>What is compared</h2><ul>")
    parts.append(f"<li>Analyses: {', '.join(comparison.analyses)}; every run holds them.</li>")
    parts += [f"<li>{html.escape(n)}</li>" for n in comparison.notes]
    if not comparison.notes:
        parts.append("<li>Same image set, depth, grid, width, image count and MI settings.</li>")
    parts.append("</ul>")
    parts.append("<h2>Figures</h2>")
    for slug, ftitle, png, caption in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="{slug}"><h3>{html.escape(ftitle)}</h3>'
                     f'<img alt="{html.escape(ftitle)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{caption} Figure: <code>{FIGURES_DIR}/{slug}.png</code>"
                     "</figcaption></figure>")
    parts.append("<h2>Per-layer numbers</h2><p class='meta'>Layers 1-based; relative depth "
                 "(layer + 0.5) / L. Quartile columns are in the CSV: "
                 f"{_csv_link(layers_csv, LAYERS_CSV)}; MI curves: "
                 f"{_csv_link(mi_csv, MI_CSV)}.</p>")
    parts.append(_table_html(table))
    if explorer:
        from vitprobe.report.explorer import explorer_html_models, models_from_entries

        parts.append(explorer_html_models(models_from_entries(comparison.entries)))
    parts.append("<h2>Notes</h2><ul><li>Drawn from the runs' saved files alone "
                 "(<code>vitprobe compare</code> needs no model and no images).</li>"
                 "<li>Layers are numbered 1..L (0..L-1 in the files).</li></ul>")
    parts.append("</main></body></html>")
    report = out / REPORT
    with atomic_write(report) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return report


COMPARE_STYLE = """
.tablewrap { max-height: 460px; overflow: auto; border: 1px solid #ddd; }
table.layers { border-collapse: collapse; font-size: 0.8em; }
table.layers th { position: sticky; top: 0; background: #f2f2f2; padding: 3px 6px; }
table.layers td { padding: 2px 6px; border-top: 1px solid #eee; white-space: nowrap; }
table.layers td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.meta th { text-align: left; padding-right: 12px; }
@media print { .tablewrap { max-height: none; overflow: visible; } }
"""


def compare(runs: Sequence[str | Path], out: str | Path, *, labels: Sequence[str] | None = None,
            analyses: Sequence[str] | None = None, controls: bool = False,
            allow_different_images: bool = False, pdf: bool = False,
            explorer: bool = True) -> Path:
    """Check runs and write their comparison report; see :func:`compare_runs` and
    :func:`write_comparison`. Returns the path of ``comparison.html``.

    Examples
    --------
    >>> from vitprobe.report.compare import compare
    >>> compare(["runs/dinov2", "runs/vit-s16"], "runs/compare")  # doctest: +SKIP
    """
    comparison = compare_runs(runs, labels=labels, analyses=analyses, controls=controls,
                              allow_different_images=allow_different_images)
    return write_comparison(comparison, out, pdf=pdf, explorer=explorer)
