"""Study options: validation, memory sizes, and progress lines for batch jobs."""

from __future__ import annotations

import json
import re

import pytest

from vitprobe.errors import ImageSourceError, VitprobeError
from vitprobe.study import StudyConfig, run_study
from vitprobe.study import runner as study_runner
from vitprobe.study.config import parse_bytes

TINY = dict(model="timm:vit_tiny_patch16_224", pretrained=False, images="stimuli:gratings",
            batch_size=8, workers=0, calibration_images=8, report=False)


@pytest.mark.parametrize(("text", "expected"), [("4GB", 4e9), ("512MiB", 512 * 2**20),
                                                 ("2e9", 2e9), (1000, 1000), ("1.5 kb", 1500)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == int(expected)


def test_bad_options_are_named():
    with pytest.raises(VitprobeError, match="unknown analyses"):
        StudyConfig(analyses=("moments", "entropy"))
    with pytest.raises(VitprobeError, match="unknown control"):
        StudyConfig(control="shuffled-weights")
    with pytest.raises(VitprobeError, match="memory size"):
        StudyConfig(memory_budget="lots")
    for forgot_the_unit in ("8", "0.5", 2):
        with pytest.raises(VitprobeError, match=r"without a unit is bytes.*e\.g\. "
                           f"{forgot_the_unit}GB"):
            StudyConfig(memory_budget=forgot_the_unit)
    with pytest.raises(VitprobeError, match="must be positive"):
        StudyConfig(memory_budget="0MB")
    assert StudyConfig(memory_budget="0.5GB").memory_budget == 500_000_000
    with pytest.raises(VitprobeError, match="batch-size"):
        StudyConfig(batch_size=0)
    assert StudyConfig().n_images == 512 and StudyConfig().is_demo


def test_auto_memory_budget():
    from vitprobe.resources import CPU_MEMORY_BUDGET, auto_memory_budget

    assert StudyConfig().memory_budget == CPU_MEMORY_BUDGET == 4 * 1000**3  # the default
    assert StudyConfig(memory_budget=" Auto ").memory_budget == CPU_MEMORY_BUDGET
    assert StudyConfig(memory_budget="8GB").memory_budget == 8e9  # given: as given
    # on a GPU 30 % of its memory, at least the CPU's 4 GB (the device's own bytes are
    # asked of CUDA; tests/study/test_cuda.py checks that on a GPU)
    assert auto_memory_budget("cuda", gpu_total=141 * 2**30) == int(0.3 * 141 * 2**30)
    assert auto_memory_budget("cuda:1", gpu_total=8 * 2**30) == CPU_MEMORY_BUDGET
    assert auto_memory_budget("cpu", gpu_total=141 * 2**30) == CPU_MEMORY_BUDGET


def test_differences_name_the_changed_settings():
    run = StudyConfig(mi_bins=8)
    saved = StudyConfig(memory_budget="8GB", mi_bins=8, device="cpu").to_dict()
    assert run.differences(saved) == ["memory-budget: 8000000000 -> 4000000000"]
    assert StudyConfig(memory_budget="8GB", mi_bins=8).differences(saved) == []
    assert set(run.differences({})) >= {"model: None -> 'imgfocus-dinov2-s14'"}


def test_missing_images_fail_before_any_model_work(tmp_path, monkeypatch):
    import vitprobe.models.registry

    monkeypatch.setattr(vitprobe.models.registry, "load_model",
                        lambda *a, **k: pytest.fail("model loaded before images were checked"))
    with pytest.raises(ImageSourceError, match="nowhere"):
        run_study(**{**TINY, "images": str(tmp_path / "nowhere")}, out=tmp_path / "out")


def test_progress_lines_without_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study_runner, "LOG_EVERY_S", 0.0)
    result = run_study(**TINY, n_images=24, analyses=("moments",), out=tmp_path / "run")
    err = capsys.readouterr().err
    # the first 8 images calibrate and are counted then; the pass counts the other 16
    assert "pass 1/1: 16/24 images" in err and "pass 1/1: 24/24 images" in err
    assert err.count("24/24") == 1
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and result.n_images == 24


def test_counter_messages_are_thinned_to_one_a_minute_and_the_last():
    """The salience battery reports each batch ("salience arrays: 16/240 stimuli"): a
    batch job's log gets the finished counts and one line a minute, not 40 lines."""
    lines: list[str] = []
    now = [0.0]
    emit = study_runner.thinned_counters(lines.append, 60.0, clock=lambda: now[0])
    emit("salience: trained")
    for done in range(16, 241, 16):
        now[0] += 10.0  # first seen at 10 s: lines at 70 s (112) and 130 s (208)
        emit(f"salience arrays: {done}/240 stimuli")
    emit("salience centre-surround: 22/54 stimuli")
    emit("salience centre-surround: 54/54 stimuli")
    emit("salience arrays: 16/240 stimuli")  # the next model's count starts afresh
    now[0] += 61.0
    emit("salience arrays: 32/240 stimuli")
    assert lines == ["salience: trained", "salience arrays: 112/240 stimuli",
                     "salience arrays: 208/240 stimuli", "salience arrays: 240/240 stimuli",
                     "salience centre-surround: 54/54 stimuli", "salience arrays: 32/240 stimuli"]


def test_a_run_thins_the_salience_counters(tmp_path, capsys):
    """The runner hands the model-only analyses the thinned log: the battery's batches
    (16 stimuli each) leave one line per count, not one per batch."""
    options = {"salience_seeds": 2, "salience_features": ["colour"], "salience_levels": 3,
               "salience_eigen_layers": [], "salience_batch_size": 4}
    run_study(**TINY, n_images=8, analyses=("salience",), control=None, options=options,
              out=tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    counts = re.findall(r"salience arrays: (\d+)/(\d+)", err)
    assert counts and all(done == total for done, total in counts), err


def test_control_none_as_on_the_command_line():
    """``control="none"`` (what ``--control none`` and the error message say) is no control."""
    assert StudyConfig(control="none").control is None
    assert StudyConfig(control="none").fingerprint() == StudyConfig(control=None).fingerprint()


def test_run_help_names_each_default_once(capsys):
    from vitprobe.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split("options:", 1)[1].split())
    for option in ("--model", "--device", "--n-images", "--workers", "--batch-size",
                   "--checkpoint-every"):
        entry = text.split(f" {option}", 1)[1].split(" --", 1)[0]
        assert entry.count("(default") == 1, (option, entry)
