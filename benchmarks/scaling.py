"""Throughput of the whole study: 1 vs 2 CPU processes, and the study vs a plain forward.

``--mode ranks`` (the default on a CPU): runs ``vitprobe run`` once in 1 process and once
under torchrun with 2 processes, each process with one thread, on the same images, and
prints images/s of the streaming pass (calibration excluded) and their ratio (ideal 2.0).

``--mode forward`` (the default on a GPU; issue 16's GPU figure): the study's counting
pass against the plain forward of the same model over the same images on one device.
Unless ``--images`` names a source, it first writes ``--n-images`` real JPEG files of
ImageNet-val's typical size (500 x 375 or 375 x 500 pixels, quality 90, random crops of
the demo photos) into a temporary folder, so that decoding costs what it costs on
ImageNet. It prints images/s of

* the plain forward of one batch already on the device (the device's ceiling);
* the plain forward fed by the loader the study uses (its decoding workers and pinned
  batches: JPEG decoding included, the issue's reference);
* the study's counting pass (``vitprobe run`` in a subprocess: every image analysis,
  the calibration images included, no control unless ``--control random-init``),

their ratios (issue 16's target: study >= 0.5 x the plain forward with decoding), the
passes, the memory budget and the run's peak memory, and what the rate means for
ImageNet-val (50,000 images).

    python benchmarks/scaling.py [--n-images 128] [--model timm:vit_small_patch16_224]
    python benchmarks/scaling.py --device cuda --model timm:vit_base_patch16_224 \\
        --batch-size 128 --dtype bfloat16 --n-images 4096 [--mi-bins 32]
    python benchmarks/scaling.py --mode forward --model timm:vit_tiny_patch16_224 \\
        --n-images 32 --batch-size 16          # the same measurement on a CPU (a check)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: the image analyses: the study's per-image work (qk and salience are model-only)
IMAGE_ANALYSES = "moments,mi,bowtie,angles"
IMAGENET_VAL = 50_000


def study_args(args, out: Path) -> list[str]:
    return ["run", "--model", args.model, "--random-init", "--images", args.images,
            "--n-images", str(args.n_images), "--batch-size", str(args.batch_size),
            "--calibration-images", str(args.batch_size), *workers_args(args),
            "--mi-channels", str(args.mi_channels), "--device", args.device,
            "--dtype", args.dtype, "--out", str(out), "--no-report"]


def workers_args(args) -> list[str]:
    """CPU: decode in each rank's main process (the ranks already share the cores); GPU:
    the study's default (one worker per free core, pinned batches)."""
    if args.workers is None:
        return ["--workers", "0"] if args.device == "cpu" else []
    return ["--workers", str(args.workers)]


def run_manifest(cmd: list[str], threads: int | None = None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    out = Path(cmd[cmd.index("--out") + 1])
    return json.loads((out / "manifest.json").read_text())


def timed_run(cmd: list[str], threads: int) -> float:
    manifest = run_manifest(cmd, threads)
    return manifest["n_images_counted"] / manifest["timings_s"]["pass1_s"]


def ranks(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        one = timed_run([sys.executable, "-m", "vitprobe",
                         *study_args(args, Path(tmp) / "one")], threads=1)
        two = timed_run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node=2", "-m", "vitprobe",
                         *study_args(args, Path(tmp) / "two")], threads=1)
    print(f"model {args.model} (random init), {args.n_images} images, batch {args.batch_size}, "
          "1 thread per process")
    print(f"1 process : {one:7.2f} images/s")
    print(f"2 processes: {two:7.2f} images/s")
    print(f"ratio 2/1 : {two / one:.2f} (ideal 2.00)")


# -- forward mode ------------------------------------------------------------------------------
def write_jpegs(folder: Path, n: int, seed: int = 0) -> tuple[int, float]:
    """``n`` JPEG files of ImageNet-val's typical size from the demo photos; returns
    (files, mean kilobytes per file). Written by one process per core (about 11 ms a
    file on one core: 45 s for 4096 files, device time on a lent GPU machine)."""
    from concurrent.futures import ProcessPoolExecutor

    from vitprobe.resources import available_cpus

    folder.mkdir(parents=True, exist_ok=True)
    parts = max(1, min(available_cpus(), n // 64))
    bounds = [n * k // parts for k in range(parts + 1)]
    jobs = [(folder, bounds[k], bounds[k + 1], seed) for k in range(parts)]
    if parts == 1:
        sizes = [_write_jpeg_range(*jobs[0])]
    else:
        with ProcessPoolExecutor(parts) as pool:
            sizes = list(pool.map(_write_jpeg_range, *zip(*jobs, strict=True)))
    return n, sum(sizes) / n / 1e3


def _write_jpeg_range(folder: Path, first: int, stop: int, seed: int) -> int:
    """Files ``first..stop-1`` (each from its own seeded generator); their total bytes."""
    import numpy as np
    from PIL import Image

    from vitprobe.data.decode import decode_image
    from vitprobe.data.demo import PHOTOS, photo_path

    photos = [decode_image(p) for p in (photo_path(name) for name in PHOTOS) if p]
    total = 0
    for i in range(first, stop):
        rng = np.random.default_rng([seed, i])
        photo = photos[i % len(photos)]
        w, h = (500, 375) if rng.random() < 0.75 else (375, 500)  # mostly landscape
        scale = rng.uniform(0.5, 1.0) * min(photo.width / w, photo.height / h)
        cw, ch = max(1, int(w * scale)), max(1, int(h * scale))
        x, y = rng.integers(0, photo.width - cw + 1), rng.integers(0, photo.height - ch + 1)
        crop = photo.crop((int(x), int(y), int(x) + cw, int(y) + ch)).resize(
            (w, h), Image.Resampling.BICUBIC)
        path = folder / f"{i:06d}.JPEG"
        crop.save(path, quality=90)
        total += path.stat().st_size
    return total


def forward_rates(args, images: str) -> tuple[float, float, str]:
    """(images/s of the plain forward on a device batch, images/s fed by the study's
    loader, the device's name)."""
    import torch

    import vitprobe
    from vitprobe.data import make_loader, open_images
    from vitprobe.resources import loader_settings
    from vitprobe.study.stream import autocast

    model = vitprobe.load_model(args.model, pretrained=False, device=args.device)
    name = (torch.cuda.get_device_name(torch.device(args.device))
            if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)")

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def forward(x: torch.Tensor) -> None:
        with autocast(args.device, args.dtype):
            model(x)

    x = torch.randn(args.batch_size, 3, *model.preprocess.input_size, device=args.device)
    for _ in range(3):
        forward(x)
    n_batches = max(1, args.n_images // args.batch_size)
    sync()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        forward(x)
    sync()
    ceiling = n_batches * args.batch_size / (time.perf_counter() - t0)

    settings = loader_settings(args.device, args.workers)
    loader = make_loader(open_images(images, n_images=args.n_images, seed=0), model.preprocess,
                         batch_size=args.batch_size, patch_size=model.patch_size,
                         workers=int(settings["workers"]),
                         pin_memory=bool(settings["pin_memory"]))
    for _ in range(2):  # the first pass starts the workers and warms the file cache
        n = 0
        sync()
        t0 = time.perf_counter()
        for batch in loader:
            forward(batch["pixels"].to(args.device, non_blocking=True))
            n += len(batch["ids"])
        sync()
        fed = n / (time.perf_counter() - t0)
    return ceiling, fed, name


def study_rate(args, images: str, out: Path) -> tuple[float, dict]:
    """Images/s of the study's counting pass (calibration images included) and its
    manifest."""
    cmd = [sys.executable, "-m", "vitprobe", "run", "--model", args.model, "--random-init",
           "--images", images, "--n-images", str(args.n_images),
           "--batch-size", str(args.batch_size), "--device", args.device,
           "--dtype", args.dtype, "--analyses", IMAGE_ANALYSES, "--control", args.control,
           *(["--workers", str(args.workers)] if args.workers is not None else []),
           *(["--mi-bins", str(args.mi_bins)] if args.mi_bins is not None else []),
           "--out", str(out), "--no-report"]
    manifest = run_manifest(cmd)
    t = manifest["timings_s"]
    passes = sum(v for k, v in t.items() if re.fullmatch(r"pass\d+_s", k))
    counting = t.get("calibration_s", 0.0) - t.get("end_calibration_s", 0.0) + passes
    return manifest["n_images_counted"] / counting, manifest


def forward(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        images = args.images
        note = images
        if images is None:
            t0 = time.perf_counter()
            n, kb = write_jpegs(Path(tmp) / "jpegs", args.n_images)
            images = str(Path(tmp) / "jpegs")
            note = (f"{n} JPEG files written ({kb:.0f} kB mean, 500 x 375 / 375 x 500, "
                    f"{time.perf_counter() - t0:.0f} s)")
        ceiling, fed, device = forward_rates(args, images)
        study, manifest = study_rate(args, images, Path(tmp) / "run")
    t = manifest["timings_s"]
    fixed = t["total_s"] - sum(v for k, v in t.items() if re.fullmatch(r"pass\d+_s", k)) - (
        t.get("calibration_s", 0.0) - t.get("end_calibration_s", 0.0))
    from vitprobe.resources import loader_settings

    workers = loader_settings(args.device, args.workers)["workers"]
    peak = manifest.get("peak_memory_bytes", {})
    budget = manifest["config"].get("memory_budget")
    print(f"{device}: {args.model} (random init), {args.dtype}, batch {args.batch_size}, "
          f"{manifest['n_images_counted']} images; {note}")
    print(f"plain forward, batch on the device    : {ceiling:9.1f} images/s")
    print(f"plain forward, fed by the loader      : {fed:9.1f} images/s  (JPEG decoding, "
          f"{workers} workers)")
    print(f"study counting pass ({IMAGE_ANALYSES}, control {args.control}): "
          f"{study:9.1f} images/s  (calibration images included)")
    print(f"study / plain forward with decoding   : {study / fed:.3f}  (target >= 0.5)")
    print(f"study / plain forward on the device   : {study / ceiling:.3f}")
    print(f"passes {manifest['n_passes']}, memory budget "
          + (f"{budget / 1e9:.1f} GB" if isinstance(budget, int | float) else str(budget))
          + "; peak " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sorted(peak.items())))
    print(f"fixed costs of this run (load, results, writing): {fixed:.1f} s; ImageNet-val "
          f"({IMAGENET_VAL:,} images) at this rate: {IMAGENET_VAL / study / 60:.1f} min of "
          "counting")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("ranks", "forward"), default=None,
                        help="default: ranks on a CPU, forward on a GPU")
    parser.add_argument("--model", default=None,
                        help="default: timm:vit_small_patch16_224 (ranks), "
                             "timm:vit_base_patch16_224 (forward)")
    parser.add_argument("--images", default=None,
                        help="default: demo?crops=16 (ranks); JPEG files written first "
                             "(forward)")
    parser.add_argument("--n-images", type=int, default=None,
                        help="default: 128 (ranks), 2048 (forward)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes per rank (default: 0 in ranks mode on a "
                             "CPU, else the study's default)")
    parser.add_argument("--mi-channels", type=int, default=64, help="ranks mode only")
    parser.add_argument("--mi-bins", type=int, default=None,
                        help="forward mode: MI bins per neuron (default: the study's, from "
                             "the number of images; 32 sizes the counts as for ImageNet-val)")
    parser.add_argument("--control", choices=("none", "random-init"), default="none",
                        help="forward mode: the study's control (default none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    mode = args.mode or ("forward" if args.device.startswith("cuda") else "ranks")
    if mode == "ranks":
        args.model = args.model or "timm:vit_small_patch16_224"
        args.images = args.images or "demo?crops=16"
        args.n_images = args.n_images or 128
        ranks(args)
    else:
        args.model = args.model or "timm:vit_base_patch16_224"
        args.n_images = args.n_images or 2048
        forward(args)


if __name__ == "__main__":
    main()
