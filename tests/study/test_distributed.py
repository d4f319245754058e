"""torchrun with 2 CPU processes (gloo) gives the numbers of 1 process; a killed rank resumes;
checkpoints follow rank 0's interval."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.study.helpers import (
    SMALL_RUN,
    assert_same_results,
    env,
    run,
    torchrun_cmd,
    vitprobe_cmd,
    wait_for,
)
from vitprobe import runfolder

pytestmark = pytest.mark.slow


def test_two_processes_equal_one(reference_run, tmp_path):
    out = tmp_path / "two"
    run(torchrun_cmd(2, "run", *SMALL_RUN, "--out", str(out), "--no-report"))
    assert runfolder.read_manifest(out)["world_size"] == 2
    assert_same_results(reference_run, out)


def test_killed_rank_then_resume(reference_run, tmp_path):
    out = tmp_path / "killed"
    cmd = torchrun_cmd(2, "run", *SMALL_RUN, "--out", str(out), "--no-report",
                       "--checkpoint-every", "0")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    wait_for(out / "checkpoint.npz", proc)
    # kill one worker process outright: no chance to checkpoint
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    workers = [int(p) for p in children.stdout.split()]
    assert len(workers) == 2, children.stdout
    os.kill(max(workers), signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert runfolder.status(out) in ("failed", "stopped", "interrupted")
    # resume with a different world size: the checkpoint lists images, not ranks
    run(vitprobe_cmd("run", *SMALL_RUN, "--out", str(out), "--no-report", "--resume"))
    assert_same_results(reference_run, out)


def test_two_processes_checkpoint_on_rank_0s_interval(tmp_path):
    """Every rank votes on checkpoints each batch, but only rank 0 writes them and knows
    when the last one was written: with many quick batches and a short interval the run
    writes about one per interval, not one per batch once the first interval is over."""
    interval = 1.0
    out = tmp_path / "interval"
    run(torchrun_cmd(2, "run", "--model", "timm:vit_tiny_patch16_224", "--random-init",
                     "--control", "none", "--images", "demo?crops=8", "--n-images", "96",
                     "--batch-size", "1", "--calibration-images", "8", "--workers", "0",
                     "--analyses", "moments", "--checkpoint-every", str(interval),
                     "--no-report", "--out", str(out)))
    manifest = runfolder.read_manifest(out)
    pass_s = manifest["timings_s"]["pass1_s"]
    assert pass_s > 3 * interval, "the pass must outlast a few intervals for this test"
    # at most one per interval of the pass, the calibration's and the pass's closing one
    assert 2 <= manifest["checkpoints_written"] <= pass_s / interval + 3, (
        manifest["checkpoints_written"], pass_s)
