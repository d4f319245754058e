"""Time the exact low-rank query-key spectra against the dense route (ViT-B/16, random init).

For every head, M = W_Q W_K^T is 768 x 768 with rank <= 64. The low-rank route
(:func:`vitprobe.weights.qk_spectra`: one 768 x 128 QR, two 128 x 128 symmetric
eigenproblems and a 64 x 128 SVD per head, plus the top-k vectors) is timed on all
144 heads. The dense route forms M and runs ``numpy.linalg.eigvalsh(M_sym)``,
``eigvals(M_asym)`` and ``svd(M, compute_uv=False)`` (values only, an easier job than
the low-rank route's) on a sample of heads, extrapolated to 144 unless
``--dense-heads 144``. Both are timed in the same run, best of ``--repeats``.

    python benchmarks/qk_speed.py [--dense-heads N] [--repeats R] [--threads T]

Target (issue 5): under 1 s for all 144 heads on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def vit_b16_factors(seed: int = 0):
    """QKFactors of a random-init ViT-B/16 (timm), through vitprobe.load_model if present."""
    from vitprobe.weights import factors_from_module, factors_from_probed

    try:
        from vitprobe.models import load_model
    except ImportError:
        import timm

        torch.manual_seed(seed)
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
        return factors_from_module(model, spec="timm:vit_base_patch16_224")
    return factors_from_probed(load_model("timm:vit_base_patch16_224", pretrained=False, seed=seed))


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def dense_one(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu = np.linalg.eigvalsh(0.5 * (M + M.T))
    ev = np.linalg.eigvals(0.5 * (M - M.T))
    s = np.linalg.svd(M, compute_uv=False)
    return mu, ev, s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense-heads", type=int, default=6, help="heads timed densely")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vitprobe.weights import analyze_qk, dense_qk_spectra, qk_spectra

    f = vit_b16_factors()
    L, H, d, r = f.W_Q.shape
    n_heads = L * H
    print(f"model: {f.spec} (random init), {L} layers x {H} heads, d_model {d}, d_head {r}")
    print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}")

    qk_spectra(f.W_Q[:1, :2], f.W_K[:1, :2])  # warm-up (LAPACK initialisation)
    t_low, sp = best_of(lambda: qk_spectra(f.W_Q, f.W_K, top_k=args.top_k), args.repeats)
    t_all, _ = best_of(lambda: analyze_qk(f, top_k=args.top_k), args.repeats)

    n = min(args.dense_heads, n_heads)
    idx = [(i // H, i % H) for i in np.linspace(0, n_heads - 1, n).astype(int)]
    A, B = f.W_Q, f.W_K

    def dense_sample() -> list:
        return [dense_one(A[layer, h] @ B[layer, h].T) for layer, h in idx]

    t_dense_n, _ = best_of(dense_sample, max(1, args.repeats - 1))
    t_dense = t_dense_n / n * n_heads

    worst = 0.0
    for layer, h in idx:
        ref = dense_qk_spectra(A[layer, h] @ B[layer, h].T, r)
        scale = ref["singular_values"].max()
        for key, got in (
            ("eig_sym", sp.eig_sym[layer, h]),
            ("lambda_asym", sp.lambda_asym[layer, h]),
            ("singular_values", sp.singular_values[layer, h]),
        ):
            worst = max(worst, float(np.abs(got - ref[key]).max() / scale))

    extrap = "" if n == n_heads else f" (measured on {n} heads, x{n_heads / n:.0f})"
    print()
    print(f"{'route':<44} {'time [s]':>10}")
    print(f"{'low-rank qk_spectra, all ' + str(n_heads) + ' heads':<44} {t_low:>10.3f}")
    print(f"{'dense numpy, all ' + str(n_heads) + ' heads' + ('*' if extrap else ''):<44} "
          f"{t_dense:>10.2f}")  # fmt: skip
    print(f"{'analyze_qk (+ measures, layer-summed M)':<44} {t_all:>10.3f}")
    if extrap:
        print(f"* extrapolated{extrap}")
    print()
    print(f"speed-up dense / low-rank: {t_dense / t_low:.0f}x")
    print(f"max |low-rank - dense| / s_max over sampled heads: {worst:.1e}")
    verdict = "met" if t_low < 1.0 else "NOT met"
    print(f"target < 1 s for {n_heads} heads: {verdict} ({t_low:.3f} s)")


if __name__ == "__main__":
    main()
