"""The whole salience battery on one model or a model and its controls -> ``xarray.Dataset``.

:func:`measure_salience` generates the stimuli (:mod:`vitprobe.salience.stimuli`),
measures them (:mod:`vitprobe.salience.measure`, :mod:`vitprobe.salience.eigen`) and
returns one Dataset with a leading ``model`` dimension (:mod:`vitprobe.schema`).

Confidence intervals are Student-t 95% intervals of the mean over the ``seed`` axis
(each seed draws its own singleton or centre position and base feature values, so the
seeds resample stimuli and target positions together): ``mean +- t_{0.975, n-1} *
sd / sqrt(n)``; NaN with one seed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from vitprobe.errors import ConfigurationError
from vitprobe.models import ProbedViT
from vitprobe.salience import stimuli as st
from vitprobe.salience.measure import attention_maps, measure_arrays, measure_surround
from vitprobe.schema import RANDOM_INIT, TRAINED, stack_models

__all__ = ["SalienceConfig", "StimulusSets", "measure_salience", "salience_dataset",
           "salience_datasets", "stimulus_sets"]

Progress = Callable[[str], None] | None


@dataclass(frozen=True)
class SalienceConfig:
    """Size of the battery. The defaults run in a few minutes on 2 CPU cores for
    DINOv2-S/14 (trained and random-init); raise ``seeds`` for tighter intervals.

    Attributes
    ----------
    seeds : int
        Stimulus seeds (each: its own target position and base values).
    levels : int
        Feature-difference levels, evenly spaced from 0 (the null) to the maximum.
    jitters : tuple of float
        Distractor heterogeneity levels (fraction of the maximum difference).
    placements : tuple of str
        ``aligned`` and/or ``straddling``.
    features : tuple of str
        Pop-out features.
    cell : int
        Element cell side in patches.
    surround_distances : tuple of int
        Gap between centre and surround, in cells (Chebyshev distance).
    eigen_layers : tuple of int or None
        Layers (0-based) whose heads get eigen-stimuli; None: the first (deeper layers
        cost a forward and backward through every layer before them per step);
        ``()`` skips the experiment.
    eigen_steps : int
        The most Adam steps of the eigen-stimulus search (it stops once every target
        reaches a cosine of 0.95).
    eigen_images : int
        Demo photographs searched for best-aligned real patches.
    batch_size : int
        Stimuli per forward.
    """

    seeds: int = 3
    levels: int = 5
    jitters: tuple[float, ...] = (0.0, 0.3)
    placements: tuple[str, ...] = st.PLACEMENTS
    features: tuple[str, ...] = st.FEATURES
    cell: int = 2
    surround_distances: tuple[int, ...] = (1, 2, 3)
    eigen_layers: tuple[int, ...] | None = None
    eigen_steps: int = 300
    eigen_images: int = 8
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name, least in (("seeds", 1), ("levels", 2), ("cell", 1), ("eigen_steps", 0),
                            ("eigen_images", 1), ("batch_size", 1)):
            if getattr(self, name) < least:
                raise ConfigurationError(f"salience {name.replace('_', '-')} must be >= "
                                         f"{least}, got {getattr(self, name)}")
        for name, allowed in (("features", st.FEATURES), ("placements", st.PLACEMENTS)):
            unknown = [v for v in getattr(self, name) if v not in allowed]
            if unknown or not getattr(self, name):
                raise ConfigurationError(f"salience {name} {list(getattr(self, name))}: "
                                         f"choose one or more of {', '.join(allowed)}")
        # the curves, findings and controls compare aligned arrays without jitter
        if "aligned" not in self.placements or 0.0 not in self.jitters:
            raise ConfigurationError("salience placements must include 'aligned' and jitters "
                                     "0.0 (the reference arrays every figure compares)")
        if any(not 0.0 <= j <= 1.0 for j in self.jitters):
            raise ConfigurationError(f"salience jitters are fractions in [0, 1], got "
                                     f"{list(self.jitters)}")
        if any(d < 1 for d in self.surround_distances):
            raise ConfigurationError(f"salience surround distances are gaps of >= 1 cell, "
                                     f"got {list(self.surround_distances)}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SalienceConfig:
        """From ``salience_<name>`` options (``Context.options``), the rest default."""
        kwargs: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            value = options.get(f"salience_{name}")
            if value is not None:
                kwargs[name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    @property
    def level_values(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.levels)


# -- stimulus sets ------------------------------------------------------------------------
def popout_set(model: ProbedViT, cfg: SalienceConfig) -> st.StimulusBatch:
    """Every pop-out array, in C order of (feature, level, jitter, placement, seed)."""
    size, patch = model.preprocess.input_size, model.patch_size
    items = [st.popout_stimulus(size, patch, feature=f, level=lv, jitter=j, placement=p,
                                seed=s, cell=cfg.cell)
             for f, lv, j, p, s in itertools.product(cfg.features, cfg.level_values, cfg.jitters,
                                                     cfg.placements, range(cfg.seeds))]
    return st.StimulusBatch.stack(items)


def conjunction_set(model: ProbedViT, cfg: SalienceConfig) -> st.StimulusBatch:
    """Conjunction arrays in C order of (null/target, placement, seed)."""
    size, patch = model.preprocess.input_size, model.patch_size
    items = [st.conjunction_stimulus(size, patch, target=t, placement=p, seed=s, cell=cfg.cell)
             for t, p, s in itertools.product((False, True), cfg.placements, range(cfg.seeds))]
    return st.StimulusBatch.stack(items)


def surround_set(model: ProbedViT, cfg: SalienceConfig) -> st.StimulusBatch:
    """Centre-surround stimuli in C order of (feature, relation, distance, seed)."""
    size, patch = model.preprocess.input_size, model.patch_size
    items = [st.surround_stimulus(size, patch, feature=f, relation=r, distance=d, seed=s,
                                  cell=cfg.cell)
             for f, r, d, s in itertools.product(st.SURROUND_FEATURES, st.RELATIONS,
                                                 cfg.surround_distances, range(cfg.seeds))]
    return st.StimulusBatch.stack(items)


@dataclass(frozen=True)
class StimulusSets:
    """The battery's three stimulus sets for one configuration and input geometry (models
    of the same input size and patch size, such as a model and its random-init control,
    share them)."""

    config: SalienceConfig
    geometry: tuple[tuple[int, int], int]  # (input size, patch size)
    popout: st.StimulusBatch
    conjunction: st.StimulusBatch
    surround: st.StimulusBatch

    def fits(self, model: ProbedViT, cfg: SalienceConfig) -> bool:
        return self.geometry == _geometry(model) and self.config == cfg


def _geometry(model: ProbedViT) -> tuple[tuple[int, int], int]:
    return tuple(model.preprocess.input_size), int(model.patch_size)  # type: ignore[return-value]


def stimulus_sets(model: ProbedViT, cfg: SalienceConfig) -> StimulusSets:
    """Generate the pop-out, conjunction and centre-surround sets at ``model``'s geometry."""
    return StimulusSets(cfg, _geometry(model), popout_set(model, cfg),
                        conjunction_set(model, cfg), surround_set(model, cfg))


# -- statistics -----------------------------------------------------------------------------
def mean_ci(da: xr.DataArray, dim: str = "seed") -> tuple[xr.DataArray, xr.DataArray,
                                                           xr.DataArray]:
    """Mean over ``dim`` and its Student-t 95% interval (lower, upper)."""
    from scipy.stats import t as student

    n = da.count(dim)
    mean = da.mean(dim)
    sem = da.std(dim, ddof=1) / np.sqrt(n)
    q = xr.apply_ufunc(lambda k: student.ppf(0.975, np.maximum(k - 1, 1)), n)
    half = (q * sem).where(n > 1)
    return mean, mean - half, mean + half


def _add_ci(ds: xr.Dataset, name: str, source: str, attrs: dict[str, str]) -> None:
    mean, lo, hi = mean_ci(ds[source])
    ds[name] = mean.assign_attrs(attrs)
    ds[f"{name}_lower"] = lo.assign_attrs(long_name=f"{name}: lower end of the 95% CI over seeds")
    ds[f"{name}_upper"] = hi.assign_attrs(long_name=f"{name}: upper end of the 95% CI over seeds")


# -- one model ------------------------------------------------------------------------------
def salience_dataset(model: ProbedViT, cfg: SalienceConfig | None = None, *,
                     progress: Progress = None,
                     stimuli: StimulusSets | None = None) -> xr.Dataset:
    """The battery on one model (no ``model`` dimension).

    ``stimuli``: sets from :func:`stimulus_sets` with ``cfg`` at this model's geometry, to
    reuse across models (generated here when None).
    """
    cfg = cfg or SalienceConfig()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if stimuli is None:
        stimuli = stimulus_sets(model, cfg)
    elif not stimuli.fits(model, cfg):
        raise ValueError(
            f"the stimuli were generated for input and patch size {stimuli.geometry} and "
            f"{stimuli.config}, not {_geometry(model)} of {model.spec} and {cfg}")
    timings["generate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = [_popout(model, cfg, stimuli.popout, progress),
             _conjunction(model, cfg, stimuli.conjunction, progress)]
    timings["arrays_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts.append(_surround(model, cfg, stimuli.surround, progress))
    timings["surround_s"] = time.perf_counter() - t0
    layers = _eigen_layers(model, cfg)
    if layers:
        from vitprobe.salience.eigen import eigen_dataset

        t0 = time.perf_counter()
        parts.append(eigen_dataset(model, layers, steps=cfg.eigen_steps,
                                   n_images=cfg.eigen_images, progress=progress))
        timings["eigen_s"] = time.perf_counter() - t0
    ds = xr.merge(parts, combine_attrs="drop_conflicts")
    ds = ds.assign_coords(layer=("layer", np.arange(model.n_layers)),
                          head=("head", np.arange(model.n_heads)))
    ds.attrs.update({
        "analysis": "salience",
        "model_spec": model.spec,
        "model_source": model.source,
        "patch_size": model.patch_size,
        "input_size": list(model.preprocess.input_size),
        "cell_patches": cfg.cell,
        "seeds": cfg.seeds,
        "ci": "Student-t 95% interval of the mean over stimulus seeds (positions and bases)",
        **{f"time_{k}": round(v, 3) for k, v in timings.items()},
    })
    return ds


def _eigen_layers(model: ProbedViT, cfg: SalienceConfig) -> tuple[int, ...]:
    if cfg.eigen_layers is None:
        return (0,)
    bad = [layer for layer in cfg.eigen_layers if not 0 <= layer < model.n_layers]
    if bad:
        raise ValueError(f"eigen_layers {bad} outside 0..{model.n_layers - 1}")
    return tuple(cfg.eigen_layers)


_SOURCE = ("patches", "cls")


def _popout(model: ProbedViT, cfg: SalienceConfig, stim: st.StimulusBatch,
            progress: Progress) -> xr.Dataset:
    raw = measure_arrays(model, stim, batch_size=cfg.batch_size, progress=progress)
    shape = (len(cfg.features), cfg.levels, len(cfg.jitters), len(cfg.placements), cfg.seeds)
    cond = ("feature", "level", "jitter", "placement", "seed")
    ds = xr.Dataset(
        {
            "popout_log2_ratio": ((*cond, "layer", "head", "source"),
                                  raw["log2_ratio"].reshape(shape + raw["log2_ratio"].shape[1:])),
            "popout_percentile": ((*cond, "layer", "head", "source"),
                                  raw["percentile"].reshape(shape + raw["percentile"].shape[1:])),
            "popout_log2_ratio_heads": ((*cond, "layer", "source"), raw["log2_ratio_heads"]
                                        .reshape(shape + raw["log2_ratio_heads"].shape[1:])),
            "popout_percentile_heads": ((*cond, "layer", "source"), raw["percentile_heads"]
                                        .reshape(shape + raw["percentile_heads"].shape[1:])),
            "popout_angle_singleton": ((*cond, "layer"), raw["angle_singleton"]
                                       .reshape((*shape, model.n_layers))),
            "popout_angle_distractors": ((*cond, "layer"), raw["angle_distractors"]
                                         .reshape((*shape, model.n_layers))),
        },
        coords={
            "feature": list(cfg.features),
            "level": ("level", cfg.level_values, {"long_name": "feature difference / maximum"}),
            "jitter": ("jitter", np.asarray(cfg.jitters, dtype=float),
                       {"long_name": "distractor jitter / maximum difference"}),
            "placement": list(cfg.placements),
            "seed": np.arange(cfg.seeds),
            "source": list(_SOURCE),
            "difference": (("feature", "level"),
                           np.array([[st.feature_difference(f, lv) for lv in cfg.level_values]
                                     for f in cfg.features]),
                           {"long_name": "feature difference, in the feature's units",
                            "units": "; ".join(f"{f}: {st.UNITS[f]}" for f in cfg.features)}),
        },
    )
    # one example per feature (maximal difference, first seed, aligned, no jitter) with
    # the attention every patch receives in every layer, for the figures
    size, patch = model.preprocess.input_size, model.patch_size
    examples = [st.popout_stimulus(size, patch, feature=f, level=1.0, seed=0, cell=cfg.cell)
                for f in cfg.features]
    ex_images = np.stack([e[0] for e in examples])
    ds["example_image"] = (("feature", "y", "x", "rgb"),
                           np.round(ex_images * 255).astype(np.uint8),
                           {"long_name": "example stimulus (maximal difference, seed 0)"})
    ds["example_attention"] = (("feature", "layer", "patch_row", "patch_col"),
                               attention_maps(model, ex_images),
                               {"long_name": "attention received per patch, mean over heads "
                                "and patch queries"})
    ds["example_singleton"] = (("feature", "patch"), np.stack([e[1][e[2]] for e in examples]),
                               {"long_name": "patch-area weights of the example's singleton"})
    ds["popout_log2_ratio"].attrs.update(
        long_name="log2 (attention to the singleton / mean attention to a distractor), per head",
        units="log2 ratio")
    ds["popout_percentile"].attrs.update(
        long_name="share of distractors receiving less attention than the singleton",
        units="fraction (0.5 at chance)")
    ds["popout_angle_singleton"].attrs.update(
        long_name="mean ln1 angle between singleton and distractor tokens", units="degrees")
    ds["popout_angle_distractors"].attrs.update(
        long_name="mean ln1 angle between tokens of different distractors", units="degrees")
    ds["popout_angle_excess"] = (ds["popout_angle_singleton"] - ds["popout_angle_distractors"]
                                 ).assign_attrs(long_name="singleton-distractor minus "
                                                "distractor-distractor angle", units="degrees")
    _add_ci(ds, "salience_index", "popout_log2_ratio_heads",
            {"long_name": "salience index: log2 attention ratio singleton / distractor, "
             "attention averaged over heads, mean over seeds", "units": "log2 ratio"})
    _add_ci(ds, "salience_index_head", "popout_log2_ratio",
            {"long_name": "salience index per head, mean over seeds", "units": "log2 ratio"})
    _add_ci(ds, "salience_percentile", "popout_percentile_heads",
            {"long_name": "share of distractors below the singleton (head-averaged attention)",
             "units": "fraction"})
    _add_ci(ds, "angle_excess", "popout_angle_excess",
            {"long_name": "singleton-distractor minus distractor-distractor ln1 angle",
             "units": "degrees"})
    return ds


def _conjunction(model: ProbedViT, cfg: SalienceConfig, stim: st.StimulusBatch,
                 progress: Progress) -> xr.Dataset:
    raw = measure_arrays(model, stim, batch_size=cfg.batch_size, progress=progress)
    shape = (2, len(cfg.placements), cfg.seeds)
    cond = ("conjunction", "placement", "seed")
    ds = xr.Dataset(
        {
            "conj_log2_ratio": ((*cond, "layer", "head", "source"),
                                raw["log2_ratio"].reshape(shape + raw["log2_ratio"].shape[1:])),
            "conj_log2_ratio_heads": ((*cond, "layer", "source"), raw["log2_ratio_heads"]
                                      .reshape(shape + raw["log2_ratio_heads"].shape[1:])),
            "conj_angle_excess": ((*cond, "layer"), (raw["angle_singleton"]
                                                      - raw["angle_distractors"])
                                  .reshape((*shape, model.n_layers))),
        },
        coords={"conjunction": ["null", "target"], "placement": list(cfg.placements),
                "seed": np.arange(cfg.seeds), "source": list(_SOURCE)},
    )
    _add_ci(ds, "conj_salience_index", "conj_log2_ratio_heads",
            {"long_name": "salience index of an orientation x colour conjunction target",
             "units": "log2 ratio"})
    return ds


def _surround(model: ProbedViT, cfg: SalienceConfig, stim: st.StimulusBatch,
              progress: Progress) -> xr.Dataset:
    mask = np.stack([m["surround"] for m in stim.meta])
    raw = measure_surround(model, stim, mask, batch_size=cfg.batch_size, progress=progress)
    nf, nr, nd = len(st.SURROUND_FEATURES), len(st.RELATIONS), len(cfg.surround_distances)
    shape = (nf, nr, nd, cfg.seeds)
    response = raw["response"].reshape(shape + raw["response"].shape[1:])
    attention = raw["attention"].reshape(shape + raw["attention"].shape[1:])
    # the centre alone is the same stimulus at every distance: the first is the reference
    alone = np.abs(response[:, 0, :1])
    mag = np.abs(response[:, 1:])  # iso, cross
    suppression = (alone - mag) / (alone + mag + 1e-12)  # (f, rel, dist, seed, L, S, D)
    cond = ("surround_feature", "relation", "distance", "seed")
    ds = xr.Dataset(
        {
            "surround_suppression": ((*cond, "layer", "sublayer"), suppression.mean(-1)),
            "surround_attention": (("surround_feature", "surround_relation", "distance", "seed",
                                    "layer", "head"), attention),
            "surround_like_unlike": (("surround_feature", "distance", "seed", "layer", "head"),
                                     np.log2(attention[:, 1] / attention[:, 2])),
            "surround_like_unlike_heads": (
                ("surround_feature", "distance", "seed", "layer"),
                np.log2(attention[:, 1].mean(-1) / attention[:, 2].mean(-1))),
        },
        coords={"surround_feature": list(st.SURROUND_FEATURES), "relation": ["iso", "cross"],
                "surround_relation": list(st.RELATIONS),
                "distance": ("distance", np.asarray(cfg.surround_distances),
                             {"long_name": "gap from centre to surround", "units": "cells"}),
                "seed": np.arange(cfg.seeds), "sublayer": ["attn", "mlp"]},
    )
    ds["surround_suppression"].attrs.update(
        long_name="suppression index of the centre's neurons, mean over channels: "
        "(|r_alone| - |r_surround|) / (|r_alone| + |r_surround|)", units="index (-1..1)")
    ds["surround_attention"].attrs.update(
        long_name="attention mass from the centre's tokens to the surround cells", units="")
    ds["surround_like_unlike"].attrs.update(
        long_name="log2 (attention to an iso surround / to a cross surround)", units="log2 ratio")
    _add_ci(ds, "suppression_index", "surround_suppression",
            {"long_name": "suppression index of centre neurons, mean over seeds",
             "units": "index"})
    _add_ci(ds, "like_unlike_index", "surround_like_unlike_heads",
            {"long_name": "log2 attention to a like / an unlike surround (head-averaged)",
             "units": "log2 ratio"})
    return ds


# -- public ----------------------------------------------------------------------------------
def measure_salience(
    model: ProbedViT | str,
    control: ProbedViT | str | None = None,
    *,
    progress: Progress = None,
    **options: Any,
) -> xr.Dataset:
    """The salience battery on a model and, optionally, its random-init control.

    Parameters
    ----------
    model : ProbedViT or str
        The model under study (a spec is loaded with :func:`vitprobe.load_model`).
    control : ProbedViT, str or None
        ``"random-init"`` (the same architecture, seeded random weights), a model, or
        None.
    progress : callable, optional
        Receives progress lines.
    **options
        :class:`SalienceConfig` fields (``seeds=8``, ``eigen_layers=(0, 5)``, ...).

    Returns
    -------
    xarray.Dataset
        Leading ``model`` dimension (the model first, then the control); see the
        module docstrings of :mod:`vitprobe.salience.measure` and
        :mod:`vitprobe.salience.eigen` for the variables.

    Examples
    --------
    >>> ds = measure_salience("imgfocus-dinov2-s14", control="random-init")  # doctest: +SKIP
    >>> ds["salience_index"].sel(model="trained", feature="orientation", jitter=0,
    ...                          placement="aligned", source="patches")  # doctest: +SKIP
    """
    from vitprobe.models import load_model

    cfg = SalienceConfig(**options)
    if isinstance(model, str):
        model = load_model(model)
    models = {TRAINED if model.pretrained else RANDOM_INIT: model}
    if control is not None:
        if isinstance(control, str):
            if control != RANDOM_INIT:
                raise ValueError(f"control must be {RANDOM_INIT!r} or a model, not {control!r}")
            control = load_model(model.spec, pretrained=False)
        models[RANDOM_INIT if TRAINED in models else "control"] = control
    return stack_models(salience_datasets(models, cfg, progress=progress))


def salience_datasets(models: Mapping[str, ProbedViT], cfg: SalienceConfig, *,
                      progress: Progress = None,
                      announce: bool = False) -> dict[str, xr.Dataset]:
    """:func:`salience_dataset` of every model, generating each geometry's stimuli once
    (a model and its random-init control see the same stimuli). ``announce``: a progress
    line naming each model first."""
    sets: list[StimulusSets] = []
    out = {}
    for name, model in models.items():
        if announce and progress is not None:
            progress(f"salience: {name}")
        stimuli = next((s for s in sets if s.fits(model, cfg)), None)
        if stimuli is None:
            stimuli = stimulus_sets(model, cfg)
            sets.append(stimuli)
        out[name] = salience_dataset(model, cfg, progress=progress, stimuli=stimuli)
    return out

