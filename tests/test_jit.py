"""The compiler helpers of :mod:`vitprobe._jit` that the compiled kernels build on."""

from __future__ import annotations

import numpy as np
import pytest

from vitprobe._jit import jit_enabled

pytestmark = pytest.mark.skipif(not jit_enabled(), reason="numba not installed")


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


def test_bit_casts_are_inverse_and_order_float32_as_integers():
    """The angle kernel takes each logit row's maximum on integers: IEEE bits with the
    magnitude bits of negative values flipped order as the float32 values do."""
    import numba

    from vitprobe._jit import bits_from_f32, f32_from_bits, ordered_bits

    @numba.njit
    def row_max(x):
        key = np.int32(-2147483648)
        for j in range(x.shape[0]):
            key = max(key, ordered_bits(bits_from_f32(x[j])))
        return f32_from_bits(ordered_bits(key))

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
