"""Issue 12: random samples, multi-pass runs that finish, resume that checks, a safe folder.

Every test runs real studies on real image files (a class-sorted folder written here)
and real processes (killed with real signals).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.study.helpers import assert_same_results, env, run, vitprobe_cmd
from vitprobe import runfolder
from vitprobe.errors import ConfigurationError, InsufficientDataError, RunFolderError
from vitprobe.study import StudyConfig, run_study
from vitprobe.study.plan import RunPlan

N_CLASSES, PER_CLASS = 4, 16
# a random-init ViT-Ti/16: fast, and its activations still follow image brightness
TINY_ARGS = ["--model", "timm:vit_tiny_patch16_224", "--random-init", "--control", "none",
             "--workers", "0", "--batch-size", "8"]


def class_sorted_folder(root: Path, n_classes: int = N_CLASSES, per_class: int = PER_CLASS,
                        ) -> Path:
    """An ImageNet-style folder whose classes differ strongly in brightness: sorted by
    name, a prefix of it is one class at a time."""
    rng = np.random.default_rng(0)
    for k in range(n_classes):
        folder = root / f"n{k:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            level = 30 + 60 * k
            pixels = np.clip(rng.normal(level, 12, size=(64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return root


def class_of(image_id: str) -> str:
    return image_id.split("/")[0]


# -- 1. random order: calibration sample and null pairs --------------------------------------
def test_processing_order_mixes_a_class_sorted_folder(tmp_path):
    from vitprobe.data import open_images

    source = open_images(class_sorted_folder(tmp_path / "imgs"), seed=0)
    ids = source.ids
    assert [class_of(i) for i in ids] == sorted(class_of(i) for i in ids)  # sorted on disk
    plan = RunPlan.make(len(ids), 8, seed=0, calibration_images=16)
    calibration = [class_of(ids[i]) for i in plan.chunks(plan.calibration)]
    assert len(calibration) == 16 and len(set(calibration)) == N_CLASSES
    # neighbours within a batch (the null pairs) are of the same class about 1/4 of the time
    same = [class_of(ids[a]) == class_of(ids[b]) for c in range(plan.n_chunks)
            for a, b in zip(plan.chunk(c)[:-1], plan.chunk(c)[1:], strict=True)]
    assert np.mean(same) < 0.45
    # the same order for every seed-sharing run, another for another seed
    assert np.array_equal(plan.order, RunPlan.make(len(ids), 8, seed=0).order)
    assert not np.array_equal(plan.order, RunPlan.make(len(ids), 8, seed=1).order)
    assert sorted(plan.order.tolist()) == list(range(len(ids)))


@pytest.mark.slow
def test_calibration_edges_fit_the_whole_class_sorted_folder(tmp_path):
    """Quantile edges from a random calibration sample split the whole set evenly; edges
    from the first (darkest) class would put almost every image in the top bin."""
    images = class_sorted_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    run(vitprobe_cmd("run", *TINY_ARGS, "--images", str(images), "--analyses", "mi",
                     "--calibration-images", "16", "--mi-bins", "4", "--mi-channels", "8",
                     "--out", str(out), "--no-report"))
    with open(out / "results" / "mi.nc", "rb") as handle:
        import xarray as xr

        ds = xr.load_dataset(handle, engine="h5netcdf")
    counts = ds["joint_counts"].isel(model=0)  # (layer, sublayer, kept, position, bx, by)
    x_marginal = counts.sum("bin_y").isel(position=0)  # the central neuron's bins
    share = (x_marginal / x_marginal.sum("bin_x")).values
    total = N_CLASSES * PER_CLASS
    assert int(x_marginal.sum("bin_x").values.max()) == total
    assert share.max() <= 0.5, share.max()  # 0.25 each when the edges fit


# -- 2. and 3. multi-pass runs, and resuming later passes --------------------------------------
MULTI = ["--images", "demo?crops=3", "--n-images", "40", "--batch-size", "8",
         "--calibration-images", "16", "--analyses", "mi", "--mi-channels", "16",
         "--mi-bins", "4", "--workers", "0", "--model", "imgfocus-dinov2-s14",
         "--control", "none", "--no-report"]


def split_budget() -> int:
    """A memory budget that puts the 24 (layer, sublayer) groups of the offline model into
    several passes with a layer's two sublayers in different passes."""
    from vitprobe.analyses import Context, get_analysis
    from vitprobe.models import load_model

    model = load_model("imgfocus-dinov2-s14")
    for budget in (int(b) for b in np.geomspace(2e6, 4e9, 60)):
        mi = get_analysis("mi")
        ctx = Context(n_images=40, calibration_images=16, batch_size=8, memory_budget=budget,
                      options={"mi_channels": 16, "mi_bins": 4})
        n = mi.plan(model, ctx)
        if n < 2:
            continue
        passes = [{g for acc in mi.accumulators(model, ctx, p).values() for g in acc.groups}
                  for p in range(n)]
        layers = [{g[0] for g in groups} for groups in passes]
        if any(a & b for i, a in enumerate(layers) for b in layers[i + 1:]):
            return budget
    pytest.fail("no budget splits a layer across passes")


@pytest.fixture(scope="module")
def one_pass(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-pass")
    run(vitprobe_cmd("run", *MULTI, "--out", str(out)))
    return out


@pytest.mark.slow
def test_multi_pass_run_equals_one_pass_to_the_count(one_pass, tmp_path):
    budget = split_budget()
    out = tmp_path / "multi"
    proc = run(vitprobe_cmd("run", *MULTI, "--memory-budget", str(budget), "--out", str(out)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_passes"] >= 2 and manifest["status"] == "complete"
    # the run says why it passes over the images more than once, and what would need one
    assert f"need {manifest['n_passes']} passes over the images" in proc.stderr
    assert_same_results(one_pass, out)
    import xarray as xr

    a = xr.load_dataset(one_pass / "results" / "mi.nc", engine="h5netcdf")
    b = xr.load_dataset(out / "results" / "mi.nc", engine="h5netcdf")
    for name in a.data_vars:
        assert a[name].dtype == b[name].dtype, name
    assert b["joint_counts"].dtype.kind == "i" and b.attrs.keys() >= {"groups", "n_images"}


def _progress(out: Path) -> dict | None:
    try:
        with np.load(out / runfolder.CHECKPOINT) as data:
            return json.loads(bytes(data["progress"]).decode())
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _kill_when(out: Path, proc: subprocess.Popen, wanted, sig: int, timeout: float = 300):
    t0 = time.monotonic()
    while True:
        progress = _progress(out)
        if progress is not None and wanted(progress):
            proc.send_signal(sig)
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before the moment to kill it:\n{proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("the moment to kill never came")
        time.sleep(0.02)
    proc.communicate(timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["inside-pass-2", "between-passes"])
def test_kill_in_a_later_pass_then_resume(one_pass, tmp_path, moment):
    budget = split_budget()
    out = tmp_path / moment
    cmd = vitprobe_cmd("run", *MULTI, "--memory-budget", str(budget), "--out", str(out),
                       "--checkpoint-every", "0")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if moment == "inside-pass-2":  # pass 2 calibrated and partly counted: SIGTERM
        _kill_when(out, proc, lambda p: p["pass_index"] == 1 and p["calibrated"],
                   signal.SIGTERM)
    else:  # the checkpoint between pass 1 and 2, before pass 2 calibrates: SIGKILL
        _kill_when(out, proc, lambda p: p["pass_index"] == 1 and not p["calibrated"],
                   signal.SIGKILL)
    progress = _progress(out)
    assert progress["pass_index"] == 1
    done = run([*cmd, "--resume"])
    assert "resuming pass 2/" in done.stderr
    assert runfolder.status(out) == "complete"
    assert_same_results(one_pass, out)


# -- 4. resume checks the images ----------------------------------------------------------------
@pytest.mark.slow
def test_resume_refuses_when_the_images_changed(tmp_path):
    images = class_sorted_folder(tmp_path / "imgs", n_classes=2, per_class=16)
    out = tmp_path / "run"
    cmd = vitprobe_cmd("run", *TINY_ARGS, "--images", str(images), "--analyses", "moments",
                       "--calibration-images", "8", "--out", str(out), "--no-report",
                       "--checkpoint-every", "0")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _kill_when(out, proc, lambda p: len(p["done_chunks"]) >= 2, signal.SIGTERM)
    assert runfolder.status(out) == "interrupted"
    victim = images / "n00000001" / "img_003.png"
    victim.unlink()
    blocked = subprocess.run([*cmd, "--resume"], env=env(), capture_output=True, text=True)
    assert blocked.returncode == 1
    assert "no longer selected" in blocked.stderr and "img_003.png" in blocked.stderr
    assert "Traceback" not in blocked.stderr


# -- 5. --force deletes only a run's files, after the arguments are checked ------------------
def test_force_never_deletes_files_that_are_not_a_run(tmp_path):
    folder = tmp_path / "mine"
    (folder / "results").mkdir(parents=True)
    (folder / "results" / "thesis.tex").write_text("years of work")
    (folder / "report.html").write_text("<p>my report</p>")
    with pytest.raises(RunFolderError, match="not a vitprobe run"):
        run_study(model="timm:vit_tiny_patch16_224", pretrained=False, control=None,
                  images="stimuli:gratings", n_images=8, analyses=("moments",), workers=0,
                  out=folder, force=True, report=False)
    assert (folder / "results" / "thesis.tex").read_text() == "years of work"
    assert (folder / "report.html").exists()


def test_force_checks_the_model_before_deleting_a_run(tmp_path):
    out = tmp_path / "run"
    run_study(model="timm:vit_tiny_patch16_224", pretrained=False, control=None,
              images="stimuli:gratings", n_images=8, batch_size=8, analyses=("moments",),
              workers=0, out=out, report=False)
    before = sorted(p.name for p in (out / "results").iterdir())
    proc = subprocess.run(vitprobe_cmd("run", "--model", "timm:no_such_model", "--images",
                                       "stimuli:gratings", "--n-images", "8", "--out", str(out),
                                       "--force", "--no-report"),
                          env=env(), capture_output=True, text=True)
    assert proc.returncode == 1 and "no_such_model" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (out / "results").iterdir()) == before
    assert runfolder.status(out) == "complete"


# -- 6. one run per folder --------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        vitprobe_cmd("run", "--model", "timm:vit_tiny_patch16_224", "--random-init",
                     "--control", "none", "--images", "stimuli:gratings", "--n-images", "192",
                     "--analyses", "moments", "--workers", "0", "--out", str(out),
                     "--no-report", "--seed", "0"),
        env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not (out / runfolder.MANIFEST).exists():
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() - t0 < 120
        time.sleep(0.05)
    # paused, the first run holds the folder for as long as the second takes to start
    # (a stopped process keeps its lock); unpaused, it could finish first on a loaded machine
    first.send_signal(signal.SIGSTOP)
    second = subprocess.run(
        vitprobe_cmd("run", "--model", "timm:vit_tiny_patch16_224", "--random-init",
                     "--control", "none", "--images", "stimuli:gratings", "--n-images", "8",
                     "--analyses", "moments", "--workers", "0", "--out", str(out),
                     "--no-report", "--seed", "1"),
        env=env(), capture_output=True, text=True)
    first.send_signal(signal.SIGCONT)
    assert second.returncode == 1 and "in use by another vitprobe run" in second.stderr
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 0  # the second run wrote nothing


# -- also: sizes from the real image count, clean errors, failed runs, full disks ------------
def test_no_n_images_sizes_the_counts_from_the_real_number_of_images(tmp_path):
    images = class_sorted_folder(tmp_path / "imgs", n_classes=2, per_class=6)
    result = run_study(model="timm:vit_tiny_patch16_224", pretrained=False, control=None,
                       images=str(images), analyses=("mi",), batch_size=4, workers=0,
                       calibration_images=12, out=tmp_path / "run", report=False)
    assert result.n_images == 12


#: ViT-Ti/16 (197 tokens x 192 channels, float32) keeps 8 calibration images of 24 sites
#: (attn.out and mlp.out of 12 blocks: histograms, MI, bowtie) in 29.0 MB and of 36 sites
#: (ln1, q, k: angles) in 43.6 MB
KEPT_MB = {24: 8 * 24 * 197 * 192 * 4 / 1e6, 36: 8 * 36 * 197 * 192 * 4 / 1e6}


ALL = ("moments", "mi", "bowtie", "angles")


def _tiny_study(out: Path, memory_budget: str, analyses: tuple[str, ...]):
    """A random-init ViT-Ti/16 study of 24 generated images (8 calibrating): its result,
    the images its first block saw and its log lines."""
    from vitprobe.models import load_model
    from vitprobe.study.runner import Study

    cfg = StudyConfig(model="timm:vit_tiny_patch16_224", pretrained=False, control=None,
                      images="stimuli:gratings", n_images=24, batch_size=8, workers=0,
                      calibration_images=8, memory_budget=memory_budget, analyses=analyses,
                      mi_channels=8, mi_bins=4, out=out)
    model = load_model(cfg.model, pretrained=False, seed=cfg.seed)
    seen: list[int] = []
    model.adapter.blocks()[0].register_forward_hook(
        lambda module, args, output: seen.append(int(args[0].shape[0])))
    log: list[str] = []
    result = Study(cfg, progress=False, log=log.append, models={cfg.variants[0]: model}).run()
    return result, sum(seen), log


@pytest.fixture(scope="module")
def one_pass_runs(tmp_path_factory):
    """``analyses -> (folder, result, forwards, log)`` of the 4GB (one-pass) tiny study,
    each made once per module."""
    made = {}

    def get(analyses: tuple[str, ...]):
        if analyses not in made:
            out = tmp_path_factory.mktemp("one-pass") / "run"
            made[analyses] = (out, *_tiny_study(out, "4GB", analyses))
        return made[analyses]

    return get


@pytest.mark.parametrize(("budget", "analyses", "forwarded_again"), [
    ("4GB", ALL, ()),  # every analysis counts its own calibration images
    ("35MB", ALL, ("angles/angles",)),  # the angles' batches no longer fit: mixed
    # MI keeps copies of its 8 channels only (1.2 MB)
    ("20MB", ALL, ("angles/angles", "bowtie/bowtie", "moments/histograms")),
    # none counts its own: every calibrating accumulator sees the calibration images again
    ("20MB", ("moments", "bowtie", "angles"),
     ("angles/angles", "bowtie/bowtie", "moments/histograms")),
])
def test_every_image_is_forwarded_and_counted_once_by_every_analysis(
        tmp_path, one_pass_runs, budget, analyses, forwarded_again):
    """Every calibrating accumulator counts its own calibration images when keeping them
    fits the memory budget (issue 16: one pass where there were two): the model sees each
    image once. Above the budget the calibration images are forwarded again for those
    analyses (and only for them). Either way each accumulator counts every image exactly
    once, and the results are those of the one-pass run."""
    import xarray as xr

    assert KEPT_MB[24] < 35 < KEPT_MB[36] and 20 < KEPT_MB[24]
    one_pass = one_pass_runs(analyses)
    if budget == "4GB":
        out, result, forwards, log = one_pass
    else:
        out = tmp_path / "run"
        result, forwards, log = _tiny_study(out, budget, analyses)
        assert_same_results(one_pass[0], out)
    assert result.n_images == 24 and forwards == 24 + 8 * bool(forwarded_again)
    said = [line for line in log if "forwarded again" in line]
    if forwarded_again:
        assert len(said) == 1 and f"again for {', '.join(forwarded_again)}, which" in said[0]
    else:
        assert not said
    results = out / "results"
    if "mi" in analyses:
        mi = xr.load_dataset(results / "mi.nc", engine="h5netcdf")
        assert (mi["joint_counts"].sum(["bin_x", "bin_y"]) == 24).all()
    hist = xr.load_dataset(results / "histograms.nc", engine="h5netcdf")
    assert (hist["histogram"].sum("bin") == 24 * 196).all()
    for name in ("moments", "bowtie", "angles"):
        ds = xr.load_dataset(results / f"{name}.nc", engine="h5netcdf")
        assert int(ds.attrs["n_images"]) == 24, name
    bowtie = xr.load_dataset(results / "bowtie.nc", engine="h5netcdf")
    assert int(bowtie["counts"].isel(pair=0, distance=0).sum()) > 0


@pytest.mark.parametrize(("options", "message"), [
    ({"mi_channels": 0}, "mi-channels must be >= 1"),
    ({"batch_size": 0}, "batch-size must be >= 1"),
    ({"seed": -3}, "seed must be >= 0"),
    ({"resume": True, "force": True}, "pass one"),
])
def test_invalid_options_are_named(options, message):
    with pytest.raises(ConfigurationError, match=message):
        StudyConfig(**options)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clean_error(tmp_path):
    proc = subprocess.run(vitprobe_cmd("run", "--device", "cuda", "--out", str(tmp_path)),
                          env=env(), capture_output=True, text=True)
    assert proc.returncode == 1 and "no CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_out_that_is_a_file_fails_before_loading_the_model(tmp_path, monkeypatch):
    import vitprobe.models.registry

    monkeypatch.setattr(vitprobe.models.registry, "load_model",
                        lambda *a, **k: pytest.fail("model loaded before --out was checked"))
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        run_study(out=target, images="stimuli:gratings", n_images=8, report=False)


@pytest.mark.slow
def test_corrupt_checkpoint_is_a_clean_error(tmp_path):
    out = tmp_path / "run"
    cmd = vitprobe_cmd("run", *TINY_ARGS, "--images", "stimuli:gratings", "--n-images", "64",
                       "--analyses", "moments", "--calibration-images", "8", "--out", str(out),
                       "--no-report", "--checkpoint-every", "0")
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _kill_when(out, proc, lambda p: len(p["done_chunks"]) >= 2, signal.SIGTERM)
    path = out / runfolder.CHECKPOINT
    path.write_bytes(path.read_bytes()[:200])  # cut short, as by a crash of the disk
    proc = subprocess.run([*cmd, "--resume"], env=env(), capture_output=True, text=True)
    assert proc.returncode == 1 and "checkpoint" in proc.stderr and "--force" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_too_few_images_for_calibration_is_a_clean_error(tmp_path):
    with pytest.raises(ConfigurationError, match="calibration"):
        run_study(model="timm:vit_tiny_patch16_224", pretrained=False, control=None,
                  images="stimuli:gratings", n_images=4, analyses=("mi",), mi_bins=8,
                  workers=0, out=tmp_path / "run", report=False)
    assert runfolder.status(tmp_path / "run") != "running"


def test_a_source_of_one_image_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "only.png")
    import vitprobe.models

    def no_model(*args, **kwargs):
        raise AssertionError("no model should load for a one-image source")

    monkeypatch.setattr(vitprobe.models, "load_model", no_model)
    with pytest.raises(InsufficientDataError,
                       match=r"holds 1 image\(s\); the image analyses \(moments\) need at "
                             r"least 2"):
        run_study(model="timm:vit_tiny_patch16_224", pretrained=False, control=None,
                  images=str(tmp_path), analyses=("moments",), workers=0,
                  out=tmp_path / "run", report=False)


def test_too_few_readable_calibration_images_names_the_unreadable_ones(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png\nmissing.png\n")
    with pytest.raises(InsufficientDataError,
                       match=r"1 of the 2 calibration images could not be read "
                             r"\(.*missing\.png: file not found\)"):
        run_study(model="timm:vit_tiny_patch16_224", pretrained=False, control=None,
                  images=str(tmp_path / "list.txt"), analyses=("moments",),
                  calibration_images=2, workers=0, out=tmp_path / "run", report=False)


def _fill(path: Path, leave: int = 65536) -> None:
    """Write ``path`` until the disk is full (the run keeps writing meanwhile), then give
    back ``leave`` bytes: room for a manifest, not for a checkpoint or results."""
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 2**20)
        except OSError:
            pass
        handle.truncate(max(handle.tell() - leave, 0))


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (skips the test without root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs as a full disk")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _disk_run_args(out: Path, n_images: int) -> list[str]:
    """A tiny run that checkpoints after every batch."""
    return [*TINY_ARGS, "--images", "stimuli:gratings", "--n-images", str(n_images),
            "--analyses", "moments", "--calibration-images", "8", "--out", str(out),
            "--no-report", "--checkpoint-every", "0"]


@pytest.mark.slow
def test_full_disk_keeps_the_last_checkpoint_and_resume_finishes(tmp_path):
    with _small_disk(tmp_path / "disk", "512m") as disk:
        out = disk / "run"
        args = _disk_run_args(out, 96)
        proc = subprocess.Popen(vitprobe_cmd("run", *args), env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        while _progress(out) is None:  # the first checkpoint is on disk
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() - t0 < 300
            time.sleep(0.02)
        # Paused while the disk fills: unpaused, the tiny run can finish (12 batches of a
        # ViT-Ti) before 512 MB are written on a loaded machine.
        proc.send_signal(signal.SIGSTOP)
        try:
            _fill(disk / "ballast")  # later checkpoints and the results no longer fit
        finally:
            proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 1, err
        assert "Traceback" not in err and "No space left" in err and "--resume" in err
        assert "the previous checkpoint is kept" in err
        assert runfolder.status(out) in ("failed", "stopped")  # never "running"
        assert _progress(out) is not None  # the last good checkpoint is intact
        leftovers = [*out.glob(".*.tmp"), *(out / "results").glob(".*.tmp")]
        assert not leftovers
        (disk / "ballast").unlink()
        run(vitprobe_cmd("run", *args, "--resume"))
        assert runfolder.status(out) == "complete"


@pytest.mark.slow
def test_a_disk_too_small_for_any_checkpoint_says_so_and_resume_starts_over(tmp_path):
    """No checkpoint fits: the error must not promise a kept one, and the command it
    names (--resume, once there is room) finishes the run."""
    with _small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "run"
        args = _disk_run_args(out, 24)
        proc = subprocess.run(vitprobe_cmd("run", *args), env=env(), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 1, proc.stderr
        err = proc.stderr
        assert "Traceback" not in err and "No space left" in err
        assert "there is no earlier checkpoint" in err
        assert "no checkpoint could be written" in err and "checkpoint is kept" not in err
        assert runfolder.status(out) == "failed" and _progress(out) is None
        subprocess.run(["mount", "-o", "remount,size=512m", str(disk)], check=True)
        run(vitprobe_cmd("run", *args, "--resume"))
        assert runfolder.status(out) == "complete"


def test_run_study_with_a_module_you_built(tmp_path):
    """The README's own-module route: ``run_study(models=...)`` studies the given module
    (its hooks see every counted image), under the spec's name, with no model loaded."""
    import timm

    import vitprobe

    module = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2)
    seen: list[int] = []
    module.blocks[0].register_forward_hook(lambda m, a, o: seen.append(int(a[0].shape[0])))
    result = vitprobe.run_study(model="mine", models={"trained": vitprobe.load_model(module)},
                                control=None, images="stimuli:gratings", n_images=12,
                                batch_size=4, workers=0, calibration_images=4,
                                analyses=("moments",), out=tmp_path / "run", report=False,
                                progress=False)
    assert result.n_images == 12 and sum(seen) == 12
    saved = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert saved["config"]["model"] == "mine"
    import xarray as xr

    moments = xr.load_dataset(tmp_path / "run" / "results" / "moments.nc", engine="h5netcdf")
    assert moments.sizes["layer"] == 2
    with pytest.raises(ConfigurationError, match="random-init"):
        vitprobe.run_study(model="mine", models={"random-init": vitprobe.load_model(module)},
                           control=None, images="stimuli:gratings", n_images=4,
                           out=tmp_path / "other", report=False, progress=False)
