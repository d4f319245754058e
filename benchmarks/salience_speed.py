"""Time the salience battery against a plain forward pass of the same stimuli (CPU).

1. The pop-out, conjunction and centre-surround stimuli of the default battery (or
   ``--seeds``) are generated once; then, side by side and alternating (best of
   ``--repeats``), the battery's measurement (:func:`measure_arrays` and
   :func:`measure_surround`: recording ln1, attention patterns, attn.out and mlp.out and
   every reduction) and a plain forward of the same pixels in the same batches. Printed:
   the ratio battery / forward (target <= 1.5). Stimulus generation is timed and printed
   apart.
2. The eigen-stimulus search for all heads of one layer (``--layer``, 1-based, default 1)
   with the default steps: printed in seconds (target < 2 min on 2 CPU cores).

    python benchmarks/salience_speed.py [--model SPEC] [--seeds N] [--threads T]
        [--layer L] [--repeats R] [--search-only]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imgfocus-dinov2-s14")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer", type=int, default=1, help="1-based layer of the search")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--search-only", action="store_true", help="skip part 1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import vitprobe

    model = vitprobe.load_model(args.model)
    if not args.search_only:
        battery_ratio(model, args)
    search_time(model, args)


def battery_ratio(model, args: argparse.Namespace) -> None:
    from vitprobe.salience.battery import SalienceConfig, stimulus_sets
    from vitprobe.salience.measure import measure_arrays, measure_surround, pixels_of

    cfg = SalienceConfig(seeds=args.seeds, batch_size=args.batch_size)
    t0 = time.perf_counter()
    generated = stimulus_sets(model, cfg)
    sets = [generated.popout, generated.conjunction, generated.surround]
    generate = time.perf_counter() - t0
    n = sum(len(s) for s in sets)
    masks = np.stack([m["surround"] for m in sets[2].meta])

    def battery() -> None:
        measure_arrays(model, sets[0], batch_size=args.batch_size)
        measure_arrays(model, sets[1], batch_size=args.batch_size)
        measure_surround(model, sets[2], masks, batch_size=args.batch_size)

    def forward() -> None:
        for stim in sets:
            for start in range(0, len(stim), args.batch_size):
                model(pixels_of(model, stim.images[start:start + args.batch_size]))

    forward()  # warm-up (allocator, kernels)
    times: dict[str, list[float]] = {"battery": [], "forward": []}
    for _ in range(args.repeats):
        for name, fn in (("forward", forward), ("battery", battery)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    print(f"{args.model}: {n} stimuli, batch {args.batch_size}, {args.threads} threads")
    print(f"stimulus generation: {generate:.1f} s")
    print(f"plain forward: {best['forward']:.1f} s; battery measurement: {best['battery']:.1f} s")
    print(f"battery / forward: {best['battery'] / best['forward']:.3f}  (target <= 1.5); "
          f"with stimulus generation: {(best['battery'] + generate) / best['forward']:.3f}")


def search_time(model, args: argparse.Namespace) -> None:
    from vitprobe.salience.battery import SalienceConfig
    from vitprobe.salience.eigen import (
        _demo_pixels,
        eigen_targets,
        reachable_basis,
        search_patches,
    )

    layer = args.layer - 1
    context = _demo_pixels(model, 1)[1][0]
    t0 = time.perf_counter()
    basis = reachable_basis(model, layer, context)
    basis_s = time.perf_counter() - t0
    t = eigen_targets(model, layer, basis=basis)
    q = np.concatenate([t["query"][:, :3].reshape(-1, model.d_model), t["query"][:1, 3]])
    k = np.concatenate([t["key"][:, :3].reshape(-1, model.d_model), t["key"][:1, 3]])
    steps = SalienceConfig().eigen_steps
    found = search_patches(model, layer, q, k, context, steps=steps)
    search = time.perf_counter() - t0
    print(f"eigen-stimulus search, all {model.n_heads} heads of layer {args.layer} "
          f"({len(q)} pairs, reachable subspace of rank {basis.shape[1]} in {basis_s:.1f} s, "
          f"{found['steps']} of at most {steps} steps): {search:.1f} s (target < 120 s)")
    print(f"cosines reached: median {np.median(found['cosine']):.2f}, "
          f"max {found['cosine'].max():.2f}, min {found['cosine'].min():.2f}; heads with "
          f"every target >= 0.9: {_heads_at(found['cosine'], model.n_heads)} of {model.n_heads}")
    print("overlap of the reachable modes with the whole form's (sym+, sym-, plane), "
          f"median over heads: {np.round(np.median(t['overlap'], axis=0), 2).tolist()}")


def _heads_at(cosine: np.ndarray, heads: int, level: float = 0.9) -> int:
    """Heads whose three searched pairs (sym+, sym-, asym) all reach ``level``."""
    per_head = cosine[: 3 * heads].reshape(heads, 3 * 2)
    return int((per_head.min(axis=1) >= level).sum())


if __name__ == "__main__":
    main()
