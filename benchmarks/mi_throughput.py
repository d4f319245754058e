"""MI throughput and bias: scikit-learn KSG vs ``vitprobe.stats.mutual_info`` vs the neuron path.

One run, one data set: a channel of ``N = 10,000`` images on a 14 x 14 grid (196
positions, ViT-B/16's) whose central neuron ``z`` is shared by every position as
``y_p = rho_p z + sqrt(1 - rho_p^2) e_p``, with ``rho_p`` cycling over
{0, 0.3, 0.6, 0.9} (analytic MI ``-1/2 log(1 - rho^2)``). Timed:

1. ``sklearn.feature_selection.mutual_info_regression`` (KSG, k = 3) on a subset of
   the (centre, position) pairs (median time per pair);
2. ``mutual_info`` on the 195 (centre, position) pairs and on 2,000 independent pairs;
3. the neuron path: :class:`vitprobe.stats.JointCounts` streaming all 10,000 images of
   the channel (bins already calibrated on the first 1,000; calibration not timed),
   then the MI of all 196 pairs from the counts (``mi_from_counts``).

Prints pairs/s, the speed-ups over scikit-learn, and the mean bias per correlation.
vitprobe timings are the best of three runs (the machine may be shared); with
``--device cuda`` the vitprobe estimators run on the GPU, scikit-learn on the CPU.

    python benchmarks/mi_throughput.py [--n 10000] [--sklearn-pairs 12] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vitprobe.stats import JointCounts, NeuronLayout, choose_bins, mi_from_counts, mutual_info

RHOS = (0.0, 0.3, 0.6, 0.9)


def truth(rho: np.ndarray) -> np.ndarray:
    return -0.5 * np.log1p(-np.square(rho))


def make_channel(n: int, seed: int = 0) -> tuple[NeuronLayout, np.ndarray, np.ndarray]:
    lay = NeuronLayout(n_layers=1, d_model=1, grid=(14, 14), n_prefix=1, sublayers=("attn",))
    p = lay.n_positions
    rho = np.array([RHOS[i % len(RHOS)] for i in range(p)])
    rho[lay.centre_position] = 1.0
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 1))
    x = rho * z + np.sqrt(1 - rho**2) * rng.standard_normal((n, p))
    return lay, x.astype(np.float32), rho


def bias_table(est: np.ndarray, rho: np.ndarray) -> dict[float, float]:
    return {r: float(np.mean(est[rho == r] - truth(np.asarray(r)))) for r in RHOS
            if np.any(rho == r)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images (samples per pair)")
    ap.add_argument("--sklearn-pairs", type=int, default=12)
    ap.add_argument("--independent-pairs", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (all methods)")
    ap.add_argument("--device", default="cpu",
                    help="device of the vitprobe estimators (scikit-learn runs on CPU)")
    args = ap.parse_args()
    dev = torch.device(args.device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    torch.set_num_threads(args.threads)
    n = args.n
    lay, data, rho = make_channel(n)
    cp = lay.centre_position
    others = np.flatnonzero(np.arange(lay.n_positions) != cp)
    z = data[:, cp]
    b = choose_bins(n)
    print(f"N = {n} samples per pair, bins B = {b} (N/B^2 = {n / b**2:.0f}), "
          f"torch threads = {torch.get_num_threads()}, vitprobe estimators on {dev}"
          + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))

    # 1. scikit-learn (KSG) on a subset covering every rho
    from sklearn.feature_selection import mutual_info_regression

    sub = others[: args.sklearn_pairs]
    sk, times = [], []
    for p in sub:
        t0 = time.perf_counter()
        sk.append(mutual_info_regression(z[:, None].astype(np.float64),
                                         data[:, p].astype(np.float64), n_neighbors=3,
                                         random_state=0)[0])
        times.append(time.perf_counter() - t0)
    sk = np.array(sk)
    t_sk = float(np.median(times))  # median per-pair time
    # 2. mutual_info: the same pairs, and independent pairs
    def on_dev(a: np.ndarray) -> np.ndarray | torch.Tensor:
        return a if dev.type == "cpu" else torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    def to_np(a: np.ndarray | torch.Tensor) -> np.ndarray:
        return a.cpu().numpy() if isinstance(a, torch.Tensor) else a

    xs = on_dev(np.broadcast_to(z, (others.size, n)))
    ys = on_dev(np.ascontiguousarray(data[:, others].T))
    mutual_info(xs[:8], ys[:8])  # warm-up
    sync()
    t0 = time.perf_counter()
    mi = to_np(mutual_info(xs, ys))
    t_mi_same = (time.perf_counter() - t0) / others.size
    rng = np.random.default_rng(1)
    ix = on_dev(rng.standard_normal((args.independent_pairs, n), dtype=np.float32))
    iy = on_dev(rng.standard_normal((args.independent_pairs, n), dtype=np.float32))
    best = np.inf
    for _ in range(3):  # best of three: the machine is shared
        sync()
        t0 = time.perf_counter()
        ind = to_np(mutual_info(ix, iy))
        sync()
        best = min(best, time.perf_counter() - t0)
    t_mi = best / args.independent_pairs
    # 3. the neuron path: calibrated edges, stream, MI from counts
    cache = torch.zeros(n, lay.n_positions + 1, 1)
    cache[:, 1:, 0] = torch.from_numpy(data)
    cache = cache.to(dev)
    batch = 1000
    best = np.inf
    for _ in range(3):  # best of three
        acc = JointCounts(lay, b, calibration_images=1000, split_half=False, null_channels=0)
        acc.calibrate({"blocks.0.attn.out": cache[:1000]})
        acc.end_calibration()
        sync()
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            acc.update({"blocks.0.attn.out": cache[s : s + batch]})
        counts = acc.canonical(0)[0, :, 0].to(torch.int64)  # (P, B_x, B_y), on device
        neuron = to_np(mi_from_counts(counts if dev.type != "cpu" else counts.numpy()))
        sync()
        best = min(best, time.perf_counter() - t0)
    t_np = best / lay.n_positions

    rows = [
        ("scikit-learn mutual_info_regression (KSG k=3)", t_sk, bias_table(sk, rho[sub])),
        ("vitprobe mutual_info, same pairs", t_mi_same, bias_table(mi, rho[others])),
        ("vitprobe mutual_info, independent pairs", t_mi, {0.0: float(ind.mean())}),
        ("neuron path (JointCounts, 196 positions)", t_np,
         bias_table(neuron[others], rho[others])),
    ]
    print(f"\n{'method':48s} {'pairs/s':>10s} {'x sklearn':>10s}   mean bias (nats) at rho = "
          + "  ".join(f"{r:>6.1f}" for r in RHOS))
    for name, t, bias in rows:
        cells = "  ".join(f"{bias[r]:+6.3f}" if r in bias else f"{'':6s}" for r in RHOS)
        print(f"{name:48s} {1 / t:10.1f} {t_sk / t:10.0f}x   {'':24s}{cells}")
    print(f"\nindependent pairs: mean {ind.mean():+.5f} nats over {ind.size} pairs "
          f"(scikit-learn clips at 0: its mean at rho = 0 is {sk[rho[sub] == 0].mean():+.4f})")
    print(f"targets: mutual_info >= 300x -> {t_sk / t_mi:.0f}x; neuron path >= 1000x -> "
          f"{t_sk / t_np:.0f}x")
    ok_bias = all(abs(bias_table(neuron[others], rho[others])[r])
                  <= abs(bias_table(sk, rho[sub])[r]) + 0.002 for r in RHOS)
    print(f"neuron-path |bias| <= scikit-learn |bias| (+0.002 noise) at every rho: {ok_bias}")


if __name__ == "__main__":
    main()
