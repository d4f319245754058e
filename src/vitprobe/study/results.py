"""Finished states -> each analysis's Datasets -> ``DIR/results/<file>.nc``.

Every file follows :mod:`vitprobe.schema`: a leading ``model`` dimension with the
main model first, then its controls. Streaming analyses turn the finished
accumulators of every pass into one Dataset per model (:meth:`Analysis.results`,
which combines passes exactly); model-only analyses compute theirs from the models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from vitprobe.netcdf import save_dataset
from vitprobe.resources import available_cpus, available_memory
from vitprobe.runfolder import RESULTS_DIR
from vitprobe.schema import stack_models
from vitprobe.study.checkpoint import parse_state_key

if TYPE_CHECKING:
    from vitprobe.analyses import Analysis, Context
    from vitprobe.models import ProbedViT


#: the models' results are built on parallel threads only while the system has this many
#: times their states' size free (else one after the other)
PARALLEL_RESULTS_MEMORY = 4


def streaming_results(analysis: Analysis, models: Mapping[str, ProbedViT], context: Context,
                      states: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, xr.Dataset]:
    """One analysis's Datasets (stacked along ``model``) from its finished states.

    ``states`` holds ``p<pass>/<model>/<analysis>/<file>`` keys (see
    :mod:`vitprobe.study.checkpoint`); only this analysis's keys are read.
    """
    per_variant: dict[str, dict[str, list[tuple[int, dict[str, np.ndarray]]]]] = {}
    for key, state in states.items():
        p, variant, name, file = parse_state_key(key)
        if name == analysis.name:
            per_variant.setdefault(variant, {}).setdefault(file, []).append((p, dict(state)))

    def results_of(variant: str, model: ProbedViT) -> dict[str, xr.Dataset]:
        finished = {}
        for file, parts in per_variant.get(variant, {}).items():
            accs = []
            for p, state in sorted(parts, key=lambda item: item[0]):
                acc = analysis.accumulators(model, context, p)[file]
                acc.load_state_dict(state)
                accs.append(acc)
            finished[file] = accs
        return analysis.results(finished) if finished else {}

    # the models' results are independent and mostly numpy and compiled kernels, which
    # release the GIL: one thread per model (map keeps the main model first), where the
    # memory allows it: building them at once raised the default run's peak by 1.25 GB
    # (10 %), about their states' size again
    state_bytes = sum(a.nbytes for parts in per_variant.values() for pieces in parts.values()
                      for _, state in pieces for a in state.values() if hasattr(a, "nbytes"))
    free = available_memory()
    threads = min(len(models), available_cpus())
    if free is not None and free < PARALLEL_RESULTS_MEMORY * state_bytes:
        threads = 1
    by_file: dict[str, dict[str, xr.Dataset]] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for variant, produced in zip(models, pool.map(results_of, models, models.values()),
                                     strict=True):
            for file, ds in produced.items():
                by_file.setdefault(file, {})[variant] = ds
    return {file: stack_models(parts) for file, parts in by_file.items()}


def write_results(out: Path, datasets: Mapping[str, xr.Dataset],
                  attrs: Mapping[str, Any]) -> dict[str, Path]:
    """Write each Dataset to ``out/results/<file>.nc`` with the run's common attrs."""
    folder = Path(out) / RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return {file: save_dataset(ds.assign_attrs(dict(attrs) | {"result": file}),
                               folder / f"{file}.nc")
            for file, ds in datasets.items()}


def collect(analyses: Mapping[str, Analysis], models: Mapping[str, ProbedViT],
            context: Context, states: Mapping[str, Mapping[str, np.ndarray]],
            log: Callable[[str], None],
            timings: dict[str, float] | None = None) -> dict[str, xr.Dataset]:
    """Every analysis's Datasets, by file name; ``timings`` (optional) gets each
    analysis's seconds as ``results_s/<analysis>``."""
    out: dict[str, xr.Dataset] = {}
    for name, analysis in analyses.items():
        t0 = time.perf_counter()
        if analysis.needs_images:
            produced = streaming_results(analysis, models, context, states)
        else:
            produced = analysis.run(models, context, log)
        for file, ds in produced.items():
            out[file] = ds.assign_attrs(analysis=name)
        if timings is not None:
            timings[f"results_s/{name}"] = time.perf_counter() - t0
    return out
