"""Images whose activations turn NaN or inf are skipped, reported and leave the rest intact."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from vitprobe.models import load_model
from vitprobe.study import StudyConfig
from vitprobe.study.runner import Study


def test_nonfinite_activations_skip_the_image_and_name_the_site(tmp_path):
    cfg = StudyConfig(model="timm:vit_tiny_patch16_224", pretrained=False,
                      images="stimuli:gratings", n_images=24, batch_size=8, workers=0,
                      calibration_images=8, analyses=("moments", "mi"), mi_channels=8,
                      mi_bins=4, out=tmp_path / "run", control=None)
    model = load_model(cfg.model, pretrained=False, seed=cfg.seed)

    def overflow_first_image(module, args, output):
        # a real model failing numerically on some inputs (as fp16 overflow would):
        # block 1 emits inf for the first image of every batch
        output[0, 3] = float("inf")

    model.adapter.blocks()[1].register_forward_hook(overflow_first_image)
    study = Study(cfg, progress=False, log=lambda msg: None, models={cfg.variants[0]: model})
    result = study.run()

    # batches follow the seeded processing order (vitprobe.study.plan)
    first_of_batch = [study.ids[study.plan.chunk(c)[0]] for c in range(3)]
    reasons = dict(result.skipped)
    assert sorted(reasons) == sorted(first_of_batch)
    # the first recorded site after block 1's output: block 2's attention output
    assert all(r.startswith("non-finite activations (NaN or inf) at blocks.2.attn.out")
               for r in reasons.values()), reasons
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert sorted(s["path"] for s in manifest["skipped"]) == sorted(first_of_batch)
    with xr.open_dataset(tmp_path / "run" / "results" / "moments.nc") as ds:
        assert int(ds.attrs["n_images"]) == 21
        assert np.isfinite(ds["mean"].values).all()
    with xr.open_dataset(tmp_path / "run" / "results" / "mi.nc") as ds:
        assert int(ds.attrs["n_images"]) == 21
