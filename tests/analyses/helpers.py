"""Driving analysis plug-ins the way the study does, on tiny models and random pixels.

``run_analysis`` follows the study's contract (vitprobe.analyses.base): plan, build
accumulators per pass and model, calibrate, stream, rebuild the accumulators and load
their finished states (as the study does after merging ranks or resuming), call
``results`` with every pass, and stack the models along ``model``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
import xarray as xr

from vitprobe.analyses import Context, get_analysis
from vitprobe.models import ProbedViT
from vitprobe.netcdf import save_dataset
from vitprobe.schema import stack_models


def batches_of(pixels: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [pixels[i:i + size] for i in range(0, len(pixels), size)]


def _record(model: ProbedViT, batches: list[torch.Tensor], sites: set[str]) -> list[dict]:
    return [model.run_with_cache(b, sorted(sites))[1] for b in batches]


def run_analysis(name: str, models: Mapping[str, ProbedViT], context: Context,
                 pixels: torch.Tensor) -> dict[str, xr.Dataset]:
    """``{file: Dataset stacked along model}`` of analysis ``name`` over ``pixels``."""
    analysis = get_analysis(name)
    if not analysis.needs_images:
        return analysis.run(models, context)
    main = next(iter(models.values()))
    n_passes = analysis.plan(main, context)
    batches = batches_of(pixels, context.batch_size)
    # as the study does: the first batches calibrate; accumulators that count their own
    # calibration images take them then, and those batches are not streamed again
    n_calib = -(-context.calibration_images // context.batch_size)
    per_model: dict[str, dict[str, list]] = {v: {} for v in models}
    for p in range(n_passes):
        for variant, model in models.items():
            accs = analysis.accumulators(model, context, p)
            if not accs:
                continue
            sites = {s for a in accs.values() for s in a.sites}
            needs = [a for a in accs.values() if a.needs_calibration]
            counts_own = bool(needs) and all(a.counts_calibration for a in needs)
            streamed = batches
            if needs:
                for cache in _record(model, batches[:n_calib], sites):
                    for a in accs.values():
                        if a.needs_calibration:
                            a.calibrate(cache)
                        elif counts_own:
                            a.update(cache)
                for a in needs:
                    a.end_calibration()
                streamed = batches[n_calib:] if counts_own else batches
            for cache in _record(model, streamed, sites):
                for a in accs.values():
                    a.update(cache)
            # the study rebuilds accumulators and loads their states at the end
            rebuilt = analysis.accumulators(model, context, p)
            assert rebuilt.keys() == accs.keys()
            for file, a in accs.items():
                rebuilt[file].load_state_dict(a.state_dict())
                per_model[variant].setdefault(file, []).append(rebuilt[file])
    results = {variant: analysis.results(finished) for variant, finished in per_model.items()}
    assert all(set(r) == set(analysis.files) for r in results.values())
    return {file: stack_models({v: results[v][file] for v in models})
            for file in analysis.files}


def write_run_folder(out: Path, datasets: Mapping[str, xr.Dataset], *,
                     control: str | None) -> Path:
    """A run folder as the study leaves it: results/*.nc and a manifest."""
    (out / "results").mkdir(parents=True, exist_ok=True)
    for file, ds in datasets.items():
        save_dataset(ds.assign_attrs(analysis=file), out / "results" / f"{file}.nc")
    manifest = {
        "vitprobe_results": 1,
        "status": "complete",
        "model": {"spec": "timm-vit", "family": "timm", "model_class": "VisionTransformer",
                  "n_layers": 2, "n_heads": 3, "d_model": 192, "grid": [4, 4],
                  "source": "random init (tests)", "weights_sha256": "0" * 64},
        "control": control,
        "images": {"source": "random pixels", "description": "random pixels (tests)",
                   "demo": False, "n_selected": 24, "seed": 0},
        "n_images_counted": 24,
        "config": {"analyses": sorted({str(ds.attrs.get("analysis", f))
                                       for f, ds in datasets.items()}), "batch_size": 8},
        "skipped": [],
        "timings_s": {"total_s": 1.0},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
