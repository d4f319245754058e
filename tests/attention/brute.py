"""Brute-force reference: every pair of every image, one at a time, in numpy float64."""

from __future__ import annotations

import numpy as np


def brute_force(caches, layers, *, start, bins, embedding="ln1", variants=("raw", "centered")):
    """Sums in the accumulator's layout plus direct per-layer results.

    ``caches``: list of recorded batches. Returns ``(sums, direct, mean_tokens)`` where
    ``direct[(layer, variant)]`` holds the pair lists used for the correlations.
    """
    width = 180.0 / bins
    emb = {layer: np.concatenate([c[f"blocks.{layer}.{embedding}"].double().numpy()
                                  for c in caches]) for layer in layers}
    S = {layer: np.concatenate([c[f"blocks.{layer}.attn.scores"].double().numpy()
                                for c in caches]) for layer in layers}
    A = {layer: np.concatenate([c[f"blocks.{layer}.attn.pattern"].double().numpy()
                                for c in caches]) for layer in layers}
    n_img, T, _ = emb[layers[0]].shape
    H = S[layers[0]].shape[1]
    L, V = len(layers), len(variants)
    means = np.stack([emb[layer][:, start:].reshape(-1, emb[layer].shape[-1]).mean(0)
                      for layer in layers])
    z = np.zeros
    s = {"count": z((L, V, bins), np.int64), "attn_hist": z((L, V, H, bins)),
         "sum_theta": z((L, V)), "sum_theta2": z((L, V)), "sum_cos": z((L, V)),
         "sum_cos2": z((L, V)), "sum_rowcos2": z((L, V)), "sum_attn_theta": z((L, V, H)),
         "sum_logit": z((L, H)), "sum_logit2": z((L, H)), "sum_dev2": z((L, H)),
         "sum_logit_cos": z((L, V, H)), "sum_dev_cos": z((L, V, H))}
    direct = {}
    for li, layer in enumerate(layers):
        for vi, variant in enumerate(variants):
            xs, ys, dxs, dys, thetas, weights = [], [], [], [], [], []
            for n in range(n_img):
                e = emb[layer][n] - (means[li] if variant == "centered" else 0.0)
                for i in range(start, T):
                    row_s, row_c = [], []
                    for j in range(start, T):
                        if i == j:
                            continue
                        c = e[i] @ e[j] / (np.linalg.norm(e[i]) * np.linalg.norm(e[j]))
                        c = min(1.0, max(-1.0, c))
                        theta = np.degrees(np.arccos(c))
                        k = min(int(theta // width), bins - 1)
                        a, x = A[layer][n, :, i, j], S[layer][n, :, i, j]
                        s["count"][li, vi, k] += 1
                        s["attn_hist"][li, vi, :, k] += a
                        s["sum_theta"][li, vi] += theta
                        s["sum_theta2"][li, vi] += theta**2
                        s["sum_cos"][li, vi] += c
                        s["sum_cos2"][li, vi] += c * c
                        s["sum_attn_theta"][li, vi] += a * theta
                        s["sum_logit_cos"][li, vi] += x * c
                        if vi == 0:
                            s["sum_logit"][li] += x
                            s["sum_logit2"][li] += x * x
                        row_s.append(x)
                        row_c.append(c)
                        thetas.append(theta)
                        weights.append(a)
                    row_s, row_c = np.array(row_s), np.array(row_c)  # (K, H), (K,)
                    dev = row_s - row_s.mean(0)
                    s["sum_rowcos2"][li, vi] += row_c.sum() ** 2
                    s["sum_dev_cos"][li, vi] += (dev * row_c[:, None]).sum(0)
                    if vi == 0:
                        s["sum_dev2"][li] += (dev * dev).sum(0)
                    xs.append(row_s)
                    ys.append(row_c)
                    dxs.append(dev)
                    dys.append(row_c - row_c.mean())
            direct[(layer, variant)] = {
                "x": np.concatenate(xs), "y": np.concatenate(ys), "dx": np.concatenate(dxs),
                "dy": np.concatenate(dys), "theta": np.array(thetas),
                "a": np.array(weights),
            }
    return s, direct, means
