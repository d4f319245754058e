"""Peak memory of the one-pass calibration, and what the budget's fallback costs (issue 16).

An analysis that counts its own calibration images keeps every calibration batch (the
recorded tensors of its sites) until its edges are fixed
(:func:`vitprobe.analyses.base.one_pass_calibration`); above ``--memory-budget`` it only
calibrates on them and the study forwards them once more. This script runs the same
study (moments, MI, bowtie, angles; no control) once per budget, one after the other, in
fresh processes, and prints each run's peak resident memory (``ru_maxrss`` of the
child), whether the calibration images were forwarded again, and the calibration and
counting times. MI runs on a channel subset (``--mi-channels``) so that its counts fit
one pass under every budget here (a smaller budget also splits MI into more passes,
each calibrating again, which is another cost).

    python benchmarks/calibration_memory.py [--budgets 4GB 2GB] [--n-images 320]
        [--mi-channels 64] [--model imgfocus-dinov2-s14]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the CLI in a child that prints its own peak RSS (RUSAGE_CHILDREN would give the
#: largest of all children so far)
_PROBE = r"""
import resource, sys
from vitprobe.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def run_once(args, budget: str, out: Path) -> dict:
    cmd = [sys.executable, "-c", _PROBE, "run", "--model", args.model, "--n-images",
           str(args.n_images), "--batch-size", str(args.batch_size), "--control", "none",
           "--analyses", "moments,mi,bowtie,angles", "--memory-budget", budget,
           "--mi-channels", str(args.mi_channels),
           "--out", str(out), "--no-report"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_kb = next(int(line.split()[1]) for line in proc.stdout.splitlines()
                   if line.startswith("PEAK_RSS_KB"))
    manifest = json.loads((out / "manifest.json").read_text())
    t = manifest["timings_s"]
    again = [line.split(" for ", 1)[1].split(":")[0]
             for line in (proc.stdout + proc.stderr).splitlines() if "forwarded again" in line]
    passes = sum(t[f"pass{k}_s"] for k in range(1, manifest["n_passes"] + 1))
    return {"budget": budget, "peak_gb": peak_kb * 1024 / 1e9, "wall_s": wall,
            "calibration_s": t["calibration_s"], "passes_s": passes,
            "n_passes": manifest["n_passes"], "again": again[0] if again else "none",
            "counted": manifest["n_images_counted"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", nargs="+", default=["4GB", "2GB"])
    ap.add_argument("--mi-channels", type=int, default=64)
    ap.add_argument("--model", default="imgfocus-dinov2-s14")
    ap.add_argument("--n-images", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, budget in enumerate(args.budgets):
            rows.append(run_once(args, budget, Path(tmp) / f"run{i}"))
    print(f"{args.model}, {args.n_images} images (256 calibration), batch {args.batch_size}, "
          f"moments + MI ({args.mi_channels} channels) + bowtie + angles, no control, "
          "one run per budget")
    print(f"{'budget':>8} {'peak RSS':>10} {'calibration':>12} {'counting':>9} {'wall':>8} "
          f"{'passes':>6}  calibration images forwarded again for")
    for r in rows:
        print(f"{r['budget']:>8} {r['peak_gb']:8.2f} GB {r['calibration_s']:10.1f} s "
              f"{r['passes_s']:7.1f} s {r['wall_s']:6.1f} s {r['n_passes']:6d}  {r['again']} "
              f"({r['counted']} images counted)")


if __name__ == "__main__":
    main()
