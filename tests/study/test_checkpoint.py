"""The checkpoint file: what is written comes back byte for byte, calibration arrays that
repeat the counted state or are all zeros are not stored twice, and older files load."""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict

import numpy as np
import pytest

from vitprobe.errors import ResultsError
from vitprobe.runfolder import CHECKPOINT, read_manifest
from vitprobe.study import checkpoint as ckpt


def _states(rng: np.random.Generator):
    edges = rng.standard_normal((64, 300)).astype(np.float32)
    edges[0, :3] = (np.nan, -0.0, np.inf)
    counts = rng.integers(0, 9, (40, 500)).astype(np.int32)
    states = {"p0/trained/mi/mi": {"edges": edges, "counts_0": counts,
                                   "n": np.asarray(512, np.int64)},
              "p0/trained/moments/histograms": {"mu": rng.standard_normal(20_000)}}
    calibration = {
        "trained/mi/mi": {"edges": edges.copy(),  # the same bytes: not stored again
                          "counts_0": np.zeros_like(counts),  # zeros: not stored
                          "n": np.asarray(0, np.int64)},
        # -0.0 everywhere equals zero but is not its bytes: stored as it is
        "trained/moments/histograms": {"mu": np.full(20_000, -0.0)},
    }
    return states, calibration


def test_round_trip_is_exact_and_skips_copies_and_zeros(tmp_path):
    states, calibration = _states(np.random.default_rng(0))
    progress = ckpt.Progress(fingerprint="f", ids_sha256="h", calibrated=True,
                             done_chunks=[0, 3])
    path = ckpt.save(tmp_path, ckpt.Checkpoint(states, calibration, progress))
    with zipfile.ZipFile(path) as z:
        stored = {n.removesuffix(".npy") for n in z.namelist()}
    assert "calibration/trained/mi/mi/edges" not in stored
    assert "calibration/trained/mi/mi/counts_0" not in stored
    assert "calibration/trained/mi/mi/n" in stored  # small arrays are stored as they are
    assert "calibration/trained/moments/histograms/mu" in stored

    back = ckpt.load(tmp_path)
    assert back.progress == progress
    for want, got in ((states, back.states), (calibration, back.calibration)):
        assert want.keys() == got.keys()
        for key in want:
            assert want[key].keys() == got[key].keys()
            for name, value in want[key].items():
                assert got[key][name].dtype == value.dtype
                assert got[key][name].tobytes() == value.tobytes(), (key, name)
    # the restored calibration copy is its own array, not a view of the counted state
    assert not np.shares_memory(back.calibration["trained/mi/mi"]["edges"],
                                back.states["p0/trained/mi/mi"]["edges"])


def test_a_format_2_checkpoint_still_loads(tmp_path):
    states, calibration = _states(np.random.default_rng(1))
    progress = ckpt.Progress(fingerprint="f", ids_sha256="h", calibrated=True)
    raw = asdict(progress) | {"format": 2}
    arrays = {f"state/{k}/{n}": v for k, s in states.items() for n, v in s.items()}
    arrays |= {f"calibration/{k}/{n}": v for k, s in calibration.items() for n, v in s.items()}
    arrays["progress"] = np.frombuffer(json.dumps(raw).encode(), np.uint8)
    np.savez(tmp_path / CHECKPOINT, **arrays)
    back = ckpt.load(tmp_path)
    assert back.progress.format == 2
    np.testing.assert_array_equal(back.calibration["trained/mi/mi"]["counts_0"], 0)
    assert back.calibration["trained/mi/mi"]["edges"].tobytes() == \
        calibration["trained/mi/mi"]["edges"].tobytes()


def test_unknown_format_is_refused_naming_the_file(tmp_path):
    progress = ckpt.Progress(fingerprint="f", ids_sha256="h", format=99)
    ckpt.save(tmp_path, ckpt.Checkpoint({}, {}, progress))
    with pytest.raises(ResultsError, match=r"checkpoint\.npz is unreadable .*format 99"):
        ckpt.load(tmp_path)


def test_checkpoints_follow_the_interval_from_calibration_on(tmp_path, monkeypatch):
    """A run shorter than the interval writes only the checkpoint that guards its results
    (deleted once they are written); interval 0 also checkpoints the calibration and every
    batch. The real files are written either way (a spy, not a stand-in)."""
    from vitprobe.study import run_study

    saved: list[tuple[int, bool, int]] = []
    real_save = ckpt.save

    def spy(directory, checkpoint):
        p = checkpoint.progress
        saved.append((p.pass_index, p.calibrated, len(p.done_chunks)))
        return real_save(directory, checkpoint)

    monkeypatch.setattr(ckpt, "save", spy)
    options = dict(model="imgfocus-dinov2-s14", images="demo?crops=2", n_images=24,
                   batch_size=8, calibration_images=8, analyses=("moments", "angles"),
                   control=None, workers=0, report=False, progress=False)
    run_study(out=tmp_path / "short", **options)
    assert saved == [(1, False, 0)]
    assert not (tmp_path / "short" / CHECKPOINT).exists()
    assert read_manifest(tmp_path / "short")["checkpoints_written"] == 1
    saved.clear()
    run_study(out=tmp_path / "every", checkpoint_every_s=0, **options)
    assert saved[0] == (0, True, 1)  # calibrated, its chunk counted
    assert saved[-1] == (1, False, 0)
    # calibration, the two later batches, the end of the pass, then the final one
    assert len(saved) == 1 + 2 + 1 + 1
    assert read_manifest(tmp_path / "every")["checkpoints_written"] == len(saved)
