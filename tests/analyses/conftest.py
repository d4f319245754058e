"""A tiny random-init ViT (2 layers, d_model 192, 4x4 patches), its control, and results."""

from __future__ import annotations

import pytest

from tests.analyses.helpers import run_analysis
from tests.models import zoo
from vitprobe.analyses import Context
from vitprobe.schema import RANDOM_INIT, TRAINED

N_IMAGES = 24
CONTEXT = Context(n_images=N_IMAGES, calibration_images=8, batch_size=8, seed=0,
                  options={"mi_bins": 4, "mi_channels": 8})


@pytest.fixture(scope="session")
def models():
    return {TRAINED: zoo.make("timm-vit", seed=0), RANDOM_INIT: zoo.make("timm-vit", seed=1)}


@pytest.fixture(scope="session")
def pixels(models):
    return zoo.pixels(models[TRAINED], N_IMAGES, seed=4)


@pytest.fixture(scope="session")
def results(models, pixels):
    """The image and weight analyses' files (bowtie and salience have their own tests),
    main model and control."""
    out = {}
    for name in ("moments", "mi", "angles", "qk"):
        out |= run_analysis(name, models, CONTEXT, pixels)
    return out
