"""Running real ``vitprobe run`` processes and comparing their saved results."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

# a small but real study: the trained offline model over the built-in photos
SMALL_RUN = [
    "--model", "imgfocus-dinov2-s14", "--images", "demo?crops=4", "--n-images", "48",
    "--batch-size", "8", "--calibration-images", "16", "--workers", "0",
    "--mi-channels", "16", "--mi-bins", "4", "--analyses", "moments,mi,angles",
    "--control", "none",
]


def env(threads: int = 1) -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
             PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return e


def vitprobe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vitprobe", *args]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "vitprobe", *args]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {path} appeared:\n"
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


#: results computed from integer counts only: must match bit for bit
EXACT = {"mi.nc", "histograms.nc"}


def assert_same_results(a: Path, b: Path, *, rtol: float = 1e-10) -> None:
    """Counts and everything derived from them identical; float64 sums (moments, angle
    sums) equal to ``rtol`` (merging shards adds in another order)."""
    names = sorted(p.name for p in (a / "results").glob("*.nc"))
    assert names == sorted(p.name for p in (b / "results").glob("*.nc")) and names
    for name in names:
        with xr.open_dataset(a / "results" / name) as x, xr.open_dataset(b / "results" / name) as y:
            assert set(x.data_vars) == set(y.data_vars), name
            for var in x.data_vars:
                u, v = x[var].values, y[var].values
                if u.dtype.kind in "iubUSO" or name in EXACT:
                    np.testing.assert_array_equal(u, v, err_msg=f"{name}:{var}")
                else:
                    # float32 results derived from float64 sums that agree to ``rtol`` may
                    # still round one unit in the last place apart
                    tol = max(rtol, 2 * float(np.finfo(u.dtype).eps))
                    np.testing.assert_allclose(u, v, rtol=tol, atol=1e-12,
                                               err_msg=f"{name}:{var}")
