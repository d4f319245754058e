"""How many images the angle accumulator's mean token needs (issue 16).

Offline DINOv2-S/14, 512 demo images: the mean token of the centred variant learned from
the first 16, 32, 64 and 256 images (batches of 32), then the same 128 later images
streamed into each; the centred results are compared with those of n = 256. Pass
``shuffled`` to take the images in a random order (the calibration images a random
sample) instead of catalogue order (32 crops per photo).

    python benchmarks/mean_token_images.py [shuffled]
"""
import sys
import time

import numpy as np
import torch

import vitprobe
from vitprobe.attention import AngleAccumulator
from vitprobe.data import make_loader, open_images

torch.manual_seed(0)
model = vitprobe.load_model("imgfocus-dinov2-s14")
src = open_images("demo?crops=32", n_images=512, seed=0)
if len(sys.argv) > 1:  # random order: the calibration images a random sample
    src = src.take(np.random.default_rng(1).permutation(len(src)), "shuffled")
loader = make_loader(src, model.preprocess, batch_size=32, workers=0, patch_size=model.patch_size)
counts = (16, 32, 64, 256)
accs = {n: AngleAccumulator.from_model(model, calibration_images=n) for n in counts}
sites = accs[32].sites
t0 = time.time()
it = iter(loader)
for _ in range(8):
    b = next(it)
    _, cache = model.run_with_cache(b["pixels"], [s for s in sites if s.endswith("ln1")])
    for a in accs.values():
        a.calibrate(cache)
for a in accs.values():
    a.end_calibration()
print("calibrated", time.time() - t0, flush=True)
for _ in range(4):
    b = next(it)
    _, cache = model.run_with_cache(b["pixels"], sites)
    for a in accs.values():
        a.update(cache)
print("streamed", time.time() - t0, flush=True)
ref = accs[256].result()
VARS = ("mean_angle_baseline", "angle_shift", "layer_angle_shift", "logit_cos_correlation",
        "layer_logit_cos_correlation_within_query")
ref_mean = accs[256].mean_token.numpy()
for n in counts:
    ds = accs[n].result().sel(variant="centered")
    r = ref.sel(variant="centered")
    dm = (np.linalg.norm(accs[n].mean_token.numpy() - ref_mean, axis=1)
          / np.linalg.norm(ref_mean, axis=1))
    for v in VARS:
        d = np.abs(ds[v].values - r[v].values)
        lo, hi = np.nanmin(r[v].values), np.nanmax(r[v].values)
        print(f"mean from {n:3d} images: {v:42s} max |diff| {np.nanmax(d):.4f}  "
              f"(ref range {lo:.3f}..{hi:.3f})")
    print(f"   relative mean-token error per layer: max {dm.max():.4f}, "
          f"median {np.median(dm):.4f}")
