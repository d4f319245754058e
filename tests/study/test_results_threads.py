"""The models' results are built on one thread each where memory allows, one after the
other where it does not; both give the same files."""

from __future__ import annotations

import concurrent.futures

import pytest
import xarray as xr

from vitprobe.study import results as study_results
from vitprobe.study import run_study

# the offline trained model and its random-init control: two models to build results of
TINY = dict(model="imgfocus-dinov2-s14", images="demo?crops=4", n_images=16, batch_size=8,
            workers=0, calibration_images=8, mi_bins=4, analyses=("mi", "angles"),
            control="random-init", report=False, progress=False)


def _run(out, monkeypatch, free_bytes):
    widths = []

    class Recording(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, max_workers=None, **kw):
            widths.append(max_workers)
            super().__init__(max_workers=max_workers, **kw)

    monkeypatch.setattr(study_results, "ThreadPoolExecutor", Recording)
    monkeypatch.setattr(study_results, "available_memory", lambda: free_bytes)
    monkeypatch.setattr(study_results, "available_cpus", lambda: 2)
    run_study(out=out, **TINY)
    return widths


@pytest.mark.slow  # two small runs of the real model and its control (about a minute)
def test_threads_only_with_memory_to_spare_and_the_same_results(tmp_path, monkeypatch):
    wide = _run(tmp_path / "threads", monkeypatch, 10**15)
    narrow = _run(tmp_path / "serial", monkeypatch, 1)
    assert wide == [2] * 2 and narrow == [1] * 2  # one pool per streaming analysis
    for name in ("mi", "angles"):  # the two whose results silence all-NaN warnings
        a = xr.load_dataset(tmp_path / "threads" / "results" / f"{name}.nc")
        b = xr.load_dataset(tmp_path / "serial" / "results" / f"{name}.nc")
        xr.testing.assert_identical(a.drop_attrs(deep=False), b.drop_attrs(deep=False))
