"""Finished states -> labelled Datasets -> ``DIR/results/<analysis>.nc``.

Each analysis is one netCDF file (h5netcdf engine). When a control ran, the file
has a leading ``model`` dimension (``"trained"``, ``"random-init"``) so that every
figure can overlay the two from the file alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from vitprobe.netcdf import save_dataset

if TYPE_CHECKING:
    from vitprobe.study.runner import Study

RESULTS_DIR = "results"


def combine_variants(datasets: dict[str, xr.Dataset]) -> xr.Dataset:
    """Stack per-model Datasets along a new ``model`` dimension (one model: no new dim)."""
    if len(datasets) == 1:
        ds = next(iter(datasets.values()))
        return ds.assign_attrs(models=next(iter(datasets)))
    parts = [ds.expand_dims(model=[variant]) for variant, ds in datasets.items()]
    combined = xr.concat(parts, dim="model", coords="different", compat="equals",
                         join="outer", combine_attrs="drop_conflicts")
    combined["model"].attrs["long_name"] = "model weights (trained or control)"
    return combined.assign_attrs(models=list(datasets))


def _analysis_of(name: str) -> str:
    return name.split(".")[0]


def write(study: Study, states: dict[str, dict[str, np.ndarray]]) -> dict[str, Path]:
    """Turn every finished state into its Dataset and write one file per analysis."""
    out = study.out / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    accumulators = {}
    for p in range(len(study.passes)):
        accumulators |= study._build(p)
    per_name: dict[str, dict[str, list[xr.Dataset]]] = {}
    for key, state in states.items():
        variant, name = key.split("/", 1)
        acc = accumulators[key]
        acc.load_state_dict(state)
        per_name.setdefault(_analysis_of(name), {}).setdefault(variant, []).append(acc.result())
    written: dict[str, Path] = {}
    common = _common_attrs(study)
    for analysis, variants in per_name.items():
        merged = {v: (parts[0] if len(parts) == 1 else
                      xr.merge(parts, join="outer", combine_attrs="drop_conflicts"))
                  for v, parts in variants.items()}
        ds = combine_variants(merged).assign_attrs(common | {"analysis": analysis})
        written[analysis] = save_dataset(ds, out / f"{analysis}.nc")
    if "qk" in study.config.analyses:
        written["qk"] = save_dataset(qk_dataset(study).assign_attrs(common | {"analysis": "qk"}),
                                     out / "qk.nc")
    return written


def qk_dataset(study: Study) -> xr.Dataset:
    """The weight analysis of the trained model with its random-init baseline."""
    from vitprobe.models import load_model
    from vitprobe.weights import analyze_qk

    trained = study.models["trained"]
    baseline = study.models.get("random-init") or load_model(
        study.config.model, pretrained=False, seed=study.config.seed)
    return analyze_qk(trained, baseline=baseline)


def _common_attrs(study: Study) -> dict[str, Any]:
    from vitprobe import __version__

    cfg = study.config
    return {
        "model_spec": cfg.model,
        "weights_source": study.models["trained"].source,
        "images": cfg.images,
        "image_description": study.source.description,
        "demo_images": int(cfg.is_demo),
        "n_images_selected": len(study.source),
        "seed": cfg.seed,
        "vitprobe_version": __version__,
        "layer_numbering": "0-based in files and code; figures label layers 1..L",
    }
