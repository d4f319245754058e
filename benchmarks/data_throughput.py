"""Is loading the bottleneck? Decode+preprocess images/s against ViT-S/16 forward images/s.

Writes a folder of ImageNet-sized JPEGs (random crops of the built-in demo photos,
about 500x375, quality 90: ImageNet validation's typical size and encoding), then
measures, in one run on this machine:

* the loader: ``make_loader(open_images(folder), ...)`` with ``--workers`` worker
  processes (default 2), and in-process (0 workers) for the per-core cost;
* the forward pass of ``timm.create_model("vit_small_patch16_224", pretrained=False)``
  on CPU, batch 32, with ``torch.get_num_threads()`` threads.

Target: loading >= 3x faster than the forward. Absolute numbers move with machine
load (other jobs share the cores); the ratio measured in the same run is what counts.

    python benchmarks/data_throughput.py [--images SPEC] [--n 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import numpy as np
import timm
import torch
from PIL import Image

from vitprobe.data import make_loader, open_images
from vitprobe.models.preprocess import PreprocessConfig

TARGET_RATIO = 3.0


def write_jpeg_folder(folder: str, n_images: int) -> None:
    """``n_images`` JPEGs of ImageNet-like size from the demo photos."""
    demo = open_images("demo?crops=32")
    rng = np.random.default_rng(0)
    for index in range(n_images):
        photo = demo.load(index % len(demo))
        width = int(rng.integers(400, 600))
        height = int(width * rng.uniform(0.66, 0.8))
        photo = photo.resize((width, height), Image.Resampling.BICUBIC)
        photo.save(os.path.join(folder, f"img_{index:05d}.jpg"), quality=90)


def preprocess_for(model: torch.nn.Module) -> PreprocessConfig:
    config = timm.data.resolve_data_config({}, model=model)
    _, height, width = config["input_size"]
    return PreprocessConfig(
        input_size=(height, width),
        resize_size=math.floor(min(height, width) / config["crop_pct"]),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=config["interpolation"],
    )


def loader_rate(spec: str, cfg: PreprocessConfig, batch_size: int, workers: int) -> float:
    """Images/s for one full pass (worker start-up included), after a warm-up pass
    that fills the page cache."""
    loader = make_loader(open_images(spec), cfg, batch_size=batch_size, workers=workers)
    for _ in loader:
        pass
    start = time.perf_counter()
    count = sum(len(batch["ids"]) for batch in loader)
    elapsed = time.perf_counter() - start
    if loader.skipped:
        print(loader.report())
    return count / elapsed


def forward_rate(
    model: torch.nn.Module, cfg: PreprocessConfig, batch_size: int, batches: int
) -> float:
    pixels = torch.randn(batch_size, 3, *cfg.input_size)
    with torch.inference_mode():
        model(pixels)  # warm-up: allocator, kernels
        start = time.perf_counter()
        for _ in range(batches):
            model(pixels)
        elapsed = time.perf_counter() - start
    return batch_size * batches / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", help="image source spec (default: generated JPEGs)")
    parser.add_argument("--n", type=int, default=256, help="JPEGs to generate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--forward-batches", type=int, default=3)
    args = parser.parse_args()

    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    cfg = preprocess_for(model)
    with tempfile.TemporaryDirectory() as folder:
        spec = args.images
        if spec is None:
            write_jpeg_folder(folder, args.n)
            spec = folder
        source = open_images(spec)
        in_process = loader_rate(spec, cfg, args.batch_size, 0)
        with_workers = loader_rate(spec, cfg, args.batch_size, args.workers)
    forward = forward_rate(model, cfg, args.batch_size, args.forward_batches)

    print(f"source:   {source.description}")
    print(f"preprocess: {cfg}")
    print(
        f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
        f"batch {args.batch_size}"
    )
    print(f"{'stage':<44}{'images/s':>10}")
    print(f"{'decode+preprocess, 0 workers (in process)':<44}{in_process:>10.1f}")
    print(f"{f'decode+preprocess, {args.workers} workers (DataLoader)':<44}{with_workers:>10.1f}")
    print(f"{'ViT-S/16 forward (timm, CPU)':<44}{forward:>10.1f}")
    ratio = with_workers / forward
    verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
    print(f"loading / forward = {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x): {verdict}")


if __name__ == "__main__":
    main()
