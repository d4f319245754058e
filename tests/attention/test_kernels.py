"""The compiled angle kernel's float32 arccos and exp against float64 ground truth."""

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



def test_add8_f32_adds_eight_lanes_in_place_and_nothing_else():
    import numba

    from vitprobe._jit import add8_f32

    @numba.njit
    def add_rows(dst, dst_at, src, src_at):
        for k in range(dst_at.shape[0]):
            add8_f32(dst, dst_at[k], src, src_at[k])

    rng = np.random.default_rng(0)
    dst = rng.random((3, 5, 16), dtype=np.float32)
    src = rng.random((7, 16), dtype=np.float32)
    dst_at = np.array([0, 8, 37, 8, 232])  # any element offset, repeats add twice
    src_at = np.array([0, 3, 104, 8, 96])
    want = dst.copy()
    for d, s in zip(dst_at, src_at, strict=True):
        want.reshape(-1)[d:d + 8] += src.reshape(-1)[s:s + 8]
    before = src.copy()
    add_rows(dst, dst_at, src, src_at)
    np.testing.assert_array_equal(dst, want)
    np.testing.assert_array_equal(src, before)


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


def test_bit_casts_are_inverse_and_order_float32_as_integers():
    """The angle kernel takes each logit row's maximum on integers: IEEE bits with the
    magnitude bits of negative values flipped order as the float32 values do."""
    import numba

    from vitprobe._jit import bits_from_f32, f32_from_bits

    @numba.njit
    def row_max(x):
        key = np.int32(-2147483648)
        for j in range(x.shape[0]):
            b = bits_from_f32(x[j])
            key = max(key, b ^ ((b >> np.int32(31)) & np.int32(2147483647)))
        return f32_from_bits(key ^ ((key >> np.int32(31)) & np.int32(2147483647)))

    @numba.njit
    def roundtrip(x, out):
        for j in range(x.shape[0]):
            out[j] = f32_from_bits(bits_from_f32(x[j]))

    rng = np.random.default_rng(3)
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, -np.inf], np.float32)
    x = np.concatenate([special, (rng.standard_normal(10_000) * 50).astype(np.float32)])
    out = np.empty_like(x)
    roundtrip(x, out)
    np.testing.assert_array_equal(out.view(np.int32), x.view(np.int32))
    for row in (x, -np.abs(x), x[7:40], np.array([-5.5, -7.25], np.float32), special[6:]):
        assert row_max(row) == row.max()
