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

