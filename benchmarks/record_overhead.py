"""Cost of recording: forward + every attn.out and mlp.out handed to a no-op consumer,
over the plain forward. ViT-S/16 and ViT-B/16, random init, batch 32, CPU.

Target (issue 2): ratio <= 1.10.

    python benchmarks/record_overhead.py [--batch 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import vitprobe
from _timing import interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+",
                        default=["timm:vit_small_patch16_224", "timm:vit_base_patch16_224"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for spec in args.models:
        model = vitprobe.load_model(spec, pretrained=False)
        pixels = torch.randn(args.batch, 3, *model.preprocess.input_size)
        sites = ["blocks.*.attn.out", "blocks.*.mlp.out"]

        def plain(model=model, pixels=pixels):
            model(pixels)

        def recorded(model=model, pixels=pixels, sites=sites):
            model.stream([pixels], sites, consumer=lambda batch, cache: None)

        t = interleaved({"plain": plain, "recorded": recorded}, repeats=args.repeats)
        ratio = t["recorded"] / t["plain"]
        verdict = "OK" if ratio <= 1.10 else "ABOVE TARGET"
        print(f"{spec:32s} plain {t['plain']:.3f} s  recorded {t['recorded']:.3f} s  "
              f"ratio {ratio:.3f}  (target <= 1.10: {verdict})")


if __name__ == "__main__":
    main()
