"""How long a report takes to read its results and draw: the reading engine side by side.

On a finished run folder (default: ``vitprobe-out``, the default run's), in alternating
rounds:

1. opening every ``results/*.nc`` and reading its small variables, as the report does
   (:class:`vitprobe.report.builder.ResultFiles`), with h5netcdf (the writer, and the
   reader until the tenth session) against the netCDF C library (the reader now);
2. ``vitprobe report`` on a copy of the folder (its default drawing processes, start-up
   included), in a fresh process per reader: this script run with ``--report-only``,
   whose drawing processes re-import it and so read with the same engine.

    python benchmarks/report_speed.py [RUN_DIR] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vitprobe.netcdf as nc
from vitprobe.report.builder import ResultFiles, build_report

ENGINES = ("h5netcdf", "netcdf4")
# set here, at import, so that the report's drawing processes (which re-import this
# script as their main module) read with the engine under test too
if os.environ.get("REPORT_SPEED_ENGINE"):
    nc.READ_ENGINE = os.environ["REPORT_SPEED_ENGINE"]


def _open_all(run: Path) -> None:
    with ResultFiles.from_folder(run) as files:
        files.check()


def _report(copy: Path, engine: str) -> float:
    """Wall seconds of a fresh process that draws the report reading with ``engine``."""
    env = dict(os.environ, REPORT_SPEED_ENGINE=engine)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--report-only", str(copy)], env=env,
                   check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="vitprobe-out")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    run = Path(args.run)
    if args.report_only:
        build_report(run)
        return
    n_files = len(list((run / "results").glob("*.nc")))
    opened: dict[str, list[float]] = {e: [] for e in ENGINES}
    report: dict[str, list[float]] = {e: [] for e in ENGINES}
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".vitprobe.lock"))
        _open_all(copy)  # imports and the file cache
        for _ in range(args.rounds):
            for engine in ENGINES:
                nc.READ_ENGINE = engine
                t0 = time.perf_counter()
                _open_all(copy)
                opened[engine].append(time.perf_counter() - t0)
                report[engine].append(_report(copy, engine))
    med = {e: statistics.median(v) for e, v in opened.items()}
    rep = {e: statistics.median(v) for e, v in report.items()}
    print(f"{run}: {n_files} result files, {args.rounds} alternating rounds (median)")
    print("open + small variables: " + ", ".join(f"{e} {med[e]:.2f} s" for e in ENGINES)
          + f"  ({med['h5netcdf'] / med['netcdf4']:.1f}x)")
    print("vitprobe report       : " + ", ".join(
        f"{e} {rep[e]:.1f} s ({', '.join(f'{t:.1f}' for t in report[e])})" for e in ENGINES)
        + f"  ({rep['netcdf4'] / rep['h5netcdf']:.2f} of the time)")


if __name__ == "__main__":
    main()
