"""Real run folders for the comparison and explorer tests, made once per session.

* ``trained_run``: the default model (offline DINOv2-S/14, 12 layers) on 24 demo crops,
  every analysis, with its random-init control along ``model``; report drawn by
  ``vitprobe report`` afterwards (no model, no images);
* ``random_run``: the same architecture randomly initialised (``--random-init``), no
  control, the same images: "the default run and its random-init control" as two runs;
* ``shallow_run``: timm's 6-layer ``test_vit`` (random init), the same images: a model
  of another depth, grid (10x10) and width.
"""

from __future__ import annotations

import pytest

from tests.study.helpers import run, vitprobe_cmd

TINY = ["--images", "demo?crops=4", "--n-images", "24", "--batch-size", "8",
        "--calibration-images", "8", "--workers", "0", "--mi-bins", "4",
        "--analyses", "moments,mi,angles,qk", "--no-report"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dinov2"
    run(vitprobe_cmd("run", "--model", "imgfocus-dinov2-s14", *TINY, "--control",
                     "random-init", "--out", str(out)))
    run(vitprobe_cmd("report", str(out)))
    return out


@pytest.fixture(scope="session")
def random_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dinov2-random"
    run(vitprobe_cmd("run", "--model", "imgfocus-dinov2-s14", "--random-init", *TINY,
                     "--out", str(out)))
    return out


@pytest.fixture(scope="session")
def shallow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "test-vit"
    run(vitprobe_cmd("run", "--model", "timm:test_vit", "--random-init", *TINY,
                     "--out", str(out)))
    return out
