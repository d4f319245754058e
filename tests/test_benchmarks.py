"""The GPU figure's benchmark runs end to end on a CPU, so a session lent a GPU can run it
at once (`benchmarks/scaling.py --mode forward`, issue 16)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.study.helpers import env

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"


def _rate(text: str, label: str) -> float:
    match = re.search(re.escape(label) + r"\s*:\s*([0-9.]+) images/s", text)
    assert match, f"no {label!r} line in:\n{text}"
    return float(match.group(1))


def test_study_against_the_plain_forward_on_written_jpegs():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--mode", "forward", "--model",
         "timm:vit_tiny_patch16_224", "--n-images", "16", "--batch-size", "8"],
        capture_output=True, text=True, env=env(threads=2), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "16 JPEG files written" in out and "16 images" in out
    ceiling = _rate(out, "plain forward, batch on the device")
    fed = _rate(out, "plain forward, fed by the loader")
    study = _rate(out, "control none)")
    assert ceiling > 0 and fed > 0 and study > 0
    # the printed ratios are the rates' own
    with_decoding = float(re.search(r"with decoding\s*:\s*([0-9.]+)", out).group(1))
    # the rates are printed to 0.1 images/s: on a busy machine (a few images/s) that
    # rounding alone moves their quotient by percents
    rounding = 0.05 / study + 0.05 / fed
    assert with_decoding == pytest.approx(study / fed, rel=rounding + 0.002)
    # the study does more than the forward over the same images
    assert study < ceiling
    assert re.search(r"passes 1, memory budget 4\.0 GB; peak host_rss [0-9.]+ GB", out)


def test_counting_pass_on_the_accelerator_path_waits_for_nothing():
    """The GPU session's second command, its accelerator path taken on the CPU: every
    accumulator of the default study, a line each, no host waits."""
    script = SCRIPT.parent / "study_overhead.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--skip-run", "--device-path", "--model",
         "timm:vit_tiny_patch16_224", "--random-init", "--batch", "4", "--rounds", "0"],
        capture_output=True, text=True, env=env(threads=2), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = re.findall(r"^\s+(\S+/\S+)\s+([0-9,]+) calls, (\d+) waits", proc.stdout, re.M)
    assert {name for name, _, _ in lines} == {"moments/moments", "moments/histograms",
                                              "mi/mi", "bowtie/bowtie", "angles/angles"}
    assert all(int(calls.replace(",", "")) > 0 and waits == "0" for _, calls, waits in lines)


def test_counting_pass_timed_beside_its_floor():
    """The CPU timing of the default study's counting pass on a small model: the pass, its
    parts and its floor (the forward with recording plus the unavoidable arithmetic), each
    over the plain forward, and the floor's two parts add up to it."""
    script = SCRIPT.parent / "study_overhead.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--skip-run", "--model", "timm:vit_tiny_patch16_224",
         "--random-init", "--batch", "4", "--rounds", "1", "--repeats", "1"],
        capture_output=True, text=True, env=env(threads=2), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    ratio = float(re.search(r"^counting pass / plain\s+([0-9.]+)", out, re.M).group(1))
    floor = re.search(r"^floor of the counting pass\s+([0-9.]+).*: forward \+ recording "
                      r"([0-9.]+), unavoidable arithmetic ([0-9.]+)$", out, re.M)
    assert floor, out
    total, recording, arithmetic = (float(x) for x in floor.groups())
    assert ratio > 1 and recording > 0.5 and arithmetic > 0
    assert total == pytest.approx(recording + arithmetic, rel=0.1)
    parts = dict(re.findall(r"(angles/angles|mi/mi|moments/moments) ([0-9.]+)", out))
    assert len(parts) == 3 and all(float(v) > 0 for v in parts.values())


def test_host_time_per_batch_with_tiny_tensors():
    """ViT-B/16's structure with tiny tensors: the accelerator path's calls and the host's
    milliseconds per accumulator, and their total; the stacked accumulators (histograms,
    bowtie, angles) make a few hundred calls, not thousands."""
    script = SCRIPT.parent / "study_overhead.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--skip-run", "--device-path", "--rounds", "0",
         "--model", "timm:vit_base_patch16_224", "--tiny-tensors", "--batch", "4"],
        capture_output=True, text=True, env=env(threads=2), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = re.findall(r"^\s+(\S+/\S+)\s+([0-9,]+) calls, 0 waits,\s+([0-9.]+) ms",
                      proc.stdout, re.M)
    calls = {name: int(n.replace(",", "")) for name, n, _ in rows}
    assert len(calls) == 5 and all(float(ms) > 0 for _, _, ms in rows)
    assert max(calls["moments/histograms"], calls["bowtie/bowtie"],
               calls["angles/angles"]) < 600
    total = float(re.search(r"^\s+all\s+([0-9.]+) ms per batch", proc.stdout, re.M).group(1))
    assert total == pytest.approx(sum(float(ms) for _, _, ms in rows), abs=0.1 * len(rows))


def test_gpu_session_script_names_what_exists():
    """benchmarks/gpu_session.sh (the GPU session's one command) parses, and every test
    file and script it runs exists, and its test files hold the GPU tests."""
    script = SCRIPT.parent / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    root = SCRIPT.parents[1]
    named = set(re.findall(r"(?:tests|benchmarks)/[\w/]+\.py", text))
    assert {"benchmarks/scaling.py", "benchmarks/study_overhead.py"} <= named
    for path in named:
        assert (root / path).is_file(), path
    marked = {str(p.relative_to(root)) for p in (root / "tests").rglob("test_*.py")
              if "pytest.mark.gpu" in p.read_text() and p.name != "test_benchmarks.py"}
    assert marked and marked <= named, marked - named
