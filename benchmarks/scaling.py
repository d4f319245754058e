"""Throughput of the whole study: 1 vs 2 CPU processes, and the study vs a plain forward.

CPU (default): runs ``vitprobe run`` once in 1 process and once under torchrun with 2
processes, each process with one thread, on the same images, and prints images/s of
the streaming pass (calibration excluded) and their ratio (ideal: 2.0).

GPU (``--device cuda``): the full study (moments, MI, angles) on ViT-B/16 against the
plain forward of the same model over the same batches on the same GPU.

    python benchmarks/scaling.py [--n-images 128] [--model timm:vit_small_patch16_224]
    python benchmarks/scaling.py --device cuda --model timm:vit_base_patch16_224 --n-images 2048
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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


def timed_run(cmd: list[str], threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    out = Path(cmd[cmd.index("--out") + 1])
    manifest = json.loads((out / "manifest.json").read_text())
    return manifest["n_images_counted"] / manifest["timings_s"]["pass1_s"]


def cpu(args) -> None:
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


def gpu(args) -> None:
    import torch

    import vitprobe

    with tempfile.TemporaryDirectory() as tmp:
        study = timed_run([sys.executable, "-m", "vitprobe",
                           *study_args(args, Path(tmp) / "gpu")], threads=4)
    model = vitprobe.load_model(args.model, pretrained=False, device=args.device)
    x = torch.randn(args.batch_size, 3, *model.preprocess.input_size, device=args.device)
    dtype = getattr(torch, args.dtype)
    n_batches = max(1, args.n_images // args.batch_size)
    for _ in range(3):
        with torch.autocast("cuda", dtype=dtype, enabled=args.dtype != "float32"):
            model(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n_batches):
        with torch.autocast("cuda", dtype=dtype, enabled=args.dtype != "float32"):
            model(x)
    torch.cuda.synchronize()
    plain = n_batches * args.batch_size / (time.perf_counter() - t0)
    print(f"{torch.cuda.get_device_name()}: {args.model} (random init), {args.dtype}, "
          f"batch {args.batch_size}, {args.n_images} images, MI channels {args.mi_channels}")
    print(f"plain forward     : {plain:8.1f} images/s")
    print(f"full study (pass) : {study:8.1f} images/s")
    print(f"study / forward   : {study / plain:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm:vit_small_patch16_224")
    parser.add_argument("--images", default="demo?crops=16")
    parser.add_argument("--n-images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes per rank (default: 0 on CPU, the "
                             "study's default on a GPU)")
    parser.add_argument("--mi-channels", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    (gpu if args.device.startswith("cuda") else cpu)(args)


if __name__ == "__main__":
    main()
