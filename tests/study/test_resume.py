"""An interrupted run (SIGTERM mid-pass) resumes to the same numbers as one that never stopped."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.study.helpers import SMALL_RUN, assert_same_results, env, run, vitprobe_cmd, wait_for
from vitprobe import runfolder
from vitprobe.errors import ResultsError

pytestmark = pytest.mark.slow


def test_sigterm_then_resume_gives_identical_counts(reference_run, tmp_path):
    out = tmp_path / "interrupted"
    cmd = vitprobe_cmd("run", *SMALL_RUN, "--out", str(out), "--no-report",
                       "--checkpoint-every", "0")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for(out / "checkpoint.npz", proc)  # the first batch is counted and checkpointed
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err
    assert "--resume" in err
    assert runfolder.status(out) == "interrupted"
    # without --resume the unfinished run is protected
    blocked = subprocess.run(cmd, env=env(), capture_output=True, text=True)
    assert blocked.returncode == 1 and "--resume" in blocked.stderr
    done = run([*cmd, "--resume"])
    assert "resuming pass 1/1" in done.stderr
    assert runfolder.status(out) == "complete"
    assert not (out / "checkpoint.npz").exists()
    assert_same_results(reference_run, out)


def test_finished_run_is_not_overwritten_without_force(reference_run):
    proc = subprocess.run(vitprobe_cmd("run", *SMALL_RUN, "--out", str(reference_run)),
                          env=env(), capture_output=True, text=True)
    assert proc.returncode == 1 and "--force" in proc.stderr
    # it ran with --no-report: the message says how to draw the report without rerunning
    assert f"vitprobe report {reference_run}" in proc.stderr


def test_killed_run_is_refused_as_stopped(tmp_path):
    """A run killed outright (kill -9) leaves its manifest saying running and no lock
    holder: a new run in that folder is refused, and the message calls it stopped, not
    running (the new run's own lock must not make it look alive)."""
    from vitprobe.study import run_study

    (tmp_path / "manifest.json").write_text('{"vitprobe_results": 1, "status": "running"}')
    assert runfolder.status(tmp_path) == "stopped"
    settings = dict(model="imgfocus-dinov2-s14", images="demo?crops=2", n_images=8,
                    analyses=("moments",), out=tmp_path, control=None)
    with pytest.raises(ResultsError, match=r"unfinished run \(stopped\); pass --resume"):
        run_study(**settings, report=False, workers=0)


def test_resume_with_other_settings_is_refused(tmp_path):
    from vitprobe.study import checkpoint

    # an interrupted run's folder whose checkpoint holds other settings
    (tmp_path / "manifest.json").write_text('{"vitprobe_results": 1, "status": "interrupted"}')
    checkpoint.save(tmp_path, checkpoint.Checkpoint(
        {}, {}, checkpoint.Progress(fingerprint="other", ids_sha256="")))
    from vitprobe.study import run_study

    settings = dict(model="imgfocus-dinov2-s14", images="demo?crops=2", n_images=8,
                    analyses=("moments",), out=tmp_path, resume=True, control=None)
    with pytest.raises(ResultsError, match=r"other settings \(model, images"):
        run_study(**settings, report=False, workers=0)
    # with the interrupted run's settings in its manifest the message names the change
    from vitprobe.study import StudyConfig

    saved = StudyConfig(**settings, memory_budget="8GB").to_dict()
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"vitprobe_results": 1, "status": "interrupted", "config": saved}))
    with pytest.raises(ResultsError, match="changed: memory-budget: 8000000000 -> 4000000000"):
        run_study(**settings, report=False, workers=0)
