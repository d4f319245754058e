"""The compiled angle kernel: its float32 arccos and exp against float64 ground truth,
its sums against the torch reference."""

from __future__ import annotations

import numpy as np
import pytest

from vitprobe._jit import jit_enabled

pytestmark = pytest.mark.skipif(not jit_enabled(), reason="numba not installed")


def _vectorised(fn):
    import numba

    @numba.njit
    def apply(x, out):
        for j in range(x.shape[0]):
            out[j] = fn(x[j])

    def run(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        apply(x, out)
        return out

    return run


def test_acos32_within_float32_accuracy():
    from vitprobe.attention._kernels import acos32

    x = np.concatenate([np.linspace(-1, 1, 400_001), [-1.0, -0.5, 0.0, 0.5, 1.0]])
    x = x.astype(np.float32)
    got = _vectorised(acos32)(x)
    exact = np.arccos(x.astype(np.float64))
    assert np.abs(got - exact).max() < 4e-7  # radians; torch's float32 acos: 1.9e-7
    assert got[-5:].tolist() == pytest.approx([np.pi, 2 * np.pi / 3, np.pi / 2, np.pi / 3, 0],
                                              abs=3e-7)


def test_exp32_within_float32_accuracy_and_underflows_to_zero():
    from vitprobe.attention._kernels import exp32

    x = np.concatenate([np.linspace(-86.9, 0, 400_001), [-87.0, -200.0, -np.inf]])
    x = x.astype(np.float32)
    got = _vectorised(exp32)(x)
    exact = np.exp(x[:-3].astype(np.float64))
    assert (np.abs(got[:-3] - exact) / exact).max() < 2.5e-7
    assert got[-3:].tolist() == [0.0, 0.0, 0.0]
    assert got[np.flatnonzero(x == 0)[0]] == 1.0


@pytest.mark.parametrize("n_heads", [1, 7, 8, 12, 16])
@pytest.mark.parametrize(("start", "variants"), [(1, ("raw", "centered")), (0, ("raw",))])
def test_angle_sums_equal_the_torch_reference_for_any_head_count(n_heads, start, variants):
    """Each key's heads and its pair count go to its angle bin as whole 8-lane vectors:
    1 and 7 heads fill one vector (with the count), 8 and 12 two, 16 (ViT-L) three."""
    import torch

    from vitprobe.attention.geometry import layer_sums, pair_geometry

    gen = torch.Generator().manual_seed(n_heads)
    B, T, d = 3, 37, 24
    tokens = torch.randn(B, T, d, generator=gen) + 0.5  # anisotropic, as real tokens
    mean = tokens.mean((0, 1))
    scores = 3 * torch.randn(B, n_heads, T, T, generator=gen)
    n_bins = 30
    ref = layer_sums(pair_geometry(tokens, start, n_bins, variants, mean_token=mean),
                     scores, None, start, n_bins)
    got = layer_sums(pair_geometry(tokens, start, n_bins, variants, mean_token=mean,
                                   cosines_only=True), scores, None, start, n_bins)
    np.testing.assert_array_equal(got.count.numpy(), ref.count.numpy())
    assert int(got.count.sum()) == len(variants) * B * (T - start) * (T - start - 1)
    for name in ("attn_hist", "sum_attn_theta", "sum_theta", "sum_cos", "sum_dev_cos"):
        want = getattr(ref, name).numpy()
        np.testing.assert_allclose(getattr(got, name).numpy(), want, rtol=1e-5,
                                   atol=1e-5 * np.abs(want).max(), err_msg=name)
    # every query's attention over its keys sums to 1 less its own
    np.testing.assert_allclose(got.attn_hist.sum(-1).numpy(),
                               ref.attn_hist.sum(-1).numpy(), rtol=1e-6)
