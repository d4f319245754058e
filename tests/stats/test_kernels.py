"""Compiled CPU kernels (numba) against the numpy/torch reference paths (VITPROBE_JIT=0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe._jit import jit_enabled
from vitprobe.stats import JointCounts, NeuronHistograms, NeuronLayout, NeuronMoments

pytestmark = pytest.mark.skipif(not jit_enabled(), reason="numba not installed")

LAYOUT = NeuronLayout(n_layers=2, d_model=24, grid=(7, 6), n_prefix=2, sublayers=("attn", "mlp"))


def batch(b: int, seed: int, *, nan: bool = False) -> dict[str, torch.Tensor]:
    """Heavy-tailed activations (cubed Gaussians) with a strided patch block, as recorded."""
    g = torch.Generator().manual_seed(seed)
    n_tok = LAYOUT.n_positions + 2
    cache = {f"blocks.{layer}.{s}.out": (torch.randn(b, n_tok, 24, generator=g) * 2 + 0.5) ** 3
             for layer, s in LAYOUT.groups()}
    if nan:
        cache["blocks.1.mlp.out"][0, 5, 3] = float("nan")
    cache["image_index"] = torch.arange(seed * 100, seed * 100 + b)
    return cache


def run(mode: str, monkeypatch, make, batches, calibrate=None):
    monkeypatch.setenv("VITPROBE_JIT", mode)
    acc = make()
    if calibrate is not None:
        acc.calibrate(calibrate)
        acc.end_calibration()
    for c in batches:
        acc.update(c)
    return acc.state_dict()


@pytest.mark.parametrize("bins", [4, 16])
def test_joint_counts_kernel_equals_reference(monkeypatch, bins):
    def make():
        return JointCounts(LAYOUT, bins, calibration_images=40, null_channels=5,
                           cross_pairs_per_distance=3)

    batches = [batch(9, 1, nan=True), batch(16, 2), batch(1, 3)]  # b = 1: no null pairs
    got = run("1", monkeypatch, make, batches, batch(40, 9))
    ref = run("0", monkeypatch, make, batches, batch(40, 9))
    assert got.keys() == ref.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert got["counts_3"].sum() == 26 * LAYOUT.n_positions * 24  # every pair counted once


def test_moments_kernel_equals_reference(monkeypatch):
    batches = [batch(7, 1), batch(32, 2, nan=True), batch(1, 3)]
    got = run("1", monkeypatch, lambda: NeuronMoments(LAYOUT), batches)
    ref = run("0", monkeypatch, lambda: NeuronMoments(LAYOUT), batches)
    for k in got:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=0, equal_nan=True,
                                   err_msg=k)
    nan_neuron = (3, 3 * 24 + 3)  # group 3 = (1, mlp); patch position 3, channel 3
    assert np.isnan(got["minimum"].reshape(4, -1)[nan_neuron])
    assert np.isfinite(got["minimum"]).sum() == got["minimum"].size - 1


def test_histogram_kernel_equals_reference(monkeypatch):
    def make():
        return NeuronHistograms(LAYOUT, n_bins=20, z_range=3.0)

    batches = [batch(7, 1), batch(32, 2), batch(1, 3)]
    got = run("1", monkeypatch, make, batches, batch(40, 9))
    ref = run("0", monkeypatch, make, batches, batch(40, 9))
    for k in got:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert got["hist"][0].sum() == 40 * LAYOUT.n_positions * 24  # outer bins catch the tails


def test_histogram_kernel_counts_nan_as_underflow_like_the_accelerator_path():
    """The numpy reference cannot bin NaN; the compiled kernel and the torch path (that
    accelerators take) both count it in the underflow bin, every other value alike."""
    from vitprobe.stats._kernels import histogram_update

    rng = np.random.default_rng(5)
    n_pos, n_chan, n_bins = 9, 37, 12
    x = (rng.standard_normal((4, n_pos * n_chan)) * 4).astype(np.float32)
    x[1, 3] = x[2, 4 * n_chan + 5] = np.nan  # the second is at the centre (position 4)
    x[3, 7] = np.inf
    x[3, 8] = -np.inf
    scale = rng.uniform(0.5, 2, n_pos * n_chan).astype(np.float32)
    offset = rng.uniform(2, 10, n_pos * n_chan).astype(np.float32)
    hist = np.zeros((n_chan, n_bins + 2), np.int64)
    centre = np.zeros_like(hist)
    histogram_update(x, scale, offset, n_chan, 4, hist, centre)
    z = torch.nan_to_num(torch.from_numpy(x) * torch.from_numpy(scale)
                         + torch.from_numpy(offset), nan=0.0).clamp(0, n_bins + 1)
    ids = z.to(torch.int64).numpy().reshape(4, n_pos, n_chan)
    want = np.zeros_like(hist)
    want_centre = np.zeros_like(hist)
    for i in range(4):
        for p in range(n_pos):
            np.add.at(want, (np.arange(n_chan), ids[i, p]), 1)
        np.add.at(want_centre, (np.arange(n_chan), ids[i, 4]), 1)
    np.testing.assert_array_equal(hist, want)
    np.testing.assert_array_equal(centre, want_centre)
    assert hist[3, 0] >= 1 and hist[5, 0] >= 1 and hist[7, -1] >= 1 and hist[8, 0] >= 1


@pytest.mark.parametrize("halves", [1, 2])
def test_miller_madow_halves_read_a_strided_view_like_the_reference(monkeypatch, halves):
    """The split-half kernel on the accumulator's own layout (a permuted view, read in
    place) equals the reference on contiguous copies: the summed tables and each half,
    fine and coarsened, with empty tables and counts beyond the k log k table."""
    from vitprobe.stats.mi import miller_madow_fine_coarse, miller_madow_halves_fine_coarse

    rng = np.random.default_rng(1)
    # stored as (H, C, B_x, P, B_y), as JointCounts keeps them; viewed as (H, P, C, B_x, B_y)
    stored = rng.poisson(rng.gamma(2.0, 4.0, size=(halves, 5, 1, 7, 1)),
                         size=(halves, 5, 8, 7, 6))
    stored[:, 2, :, 3] = 0  # (P 3, C 2): empty in every half: NaN
    stored[0, 1, 4, 0, 5] = 3_000_000  # beyond the 2^20 entries of the k log k table
    for dtype in (np.int32, np.int64):
        view = stored.astype(dtype).transpose(0, 3, 1, 2, 4)
        assert not view.flags.c_contiguous
        monkeypatch.setenv("VITPROBE_JIT", "1")
        got = miller_madow_halves_fine_coarse(view)
        monkeypatch.setenv("VITPROBE_JIT", "0")
        ref = miller_madow_halves_fine_coarse(view)
        monkeypatch.setenv("VITPROBE_JIT", "1")
        fine, coarse = miller_madow_fine_coarse(np.ascontiguousarray(view.sum(0)))
        assert [g.shape for g in got] == [(7, 5), (7, 5), (halves, 7, 5), (halves, 7, 5)]
        for g, r, name in zip(got, ref, ("fine", "coarse", "fine_h", "coarse_h"), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-13, err_msg=name)
        np.testing.assert_allclose(got[0], fine, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(got[1], coarse, rtol=1e-12, atol=1e-13)
        for k in range(halves):
            hf, hc = miller_madow_fine_coarse(np.ascontiguousarray(view[k]))
            np.testing.assert_allclose(got[2][k], hf, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(got[3][k], hc, rtol=1e-12, atol=1e-13)
        assert np.isnan(got[0][3, 2]) and np.isnan(got[2][:, 3, 2]).all()
        assert np.isfinite(got[0][0, 1])  # the huge count's table


def test_miller_madow_kernel_equals_reference(monkeypatch):
    """Fine and coarsened Miller-Madow MI of many tables: empty tables, counts beyond the
    k log k table, int32 and int64, and the extrapolated estimate built from them."""
    from vitprobe.stats import mi_from_counts
    from vitprobe.stats.mi import miller_madow_fine_coarse

    rng = np.random.default_rng(0)
    tables = rng.poisson(rng.gamma(2.0, 5.0, size=(3, 50, 1, 1)), size=(3, 50, 8, 6))
    tables[0, 0] = 0  # empty: NaN
    tables[1, 1, 2, 3] = 3_000_000  # beyond the 2^20 entries of the k log k table
    for dtype in (np.int32, np.int64):
        c = tables.astype(dtype)
        monkeypatch.setenv("VITPROBE_JIT", "1")
        fine, coarse = miller_madow_fine_coarse(c)
        extrapolated = mi_from_counts(c)
        monkeypatch.setenv("VITPROBE_JIT", "0")
        ref_fine, ref_coarse = miller_madow_fine_coarse(c)
        assert fine.shape == coarse.shape == (3, 50)
        np.testing.assert_allclose(fine, ref_fine, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(coarse, ref_coarse, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(extrapolated, mi_from_counts(c), rtol=1e-12, atol=1e-13)
    assert np.isnan(fine[0, 0]) and np.isnan(coarse[0, 0])
    assert np.isfinite(fine).sum() == fine.size - 1 and (np.abs(fine - coarse)[1:] > 0).any()
    # the kernel against the definition on one table: plug-in MI less (m_xy - m_x - m_y
    # + 1) / 2n; its coarsening is one cell, of MI 0
    monkeypatch.setenv("VITPROBE_JIT", "1")
    t = np.array([[30, 10], [10, 30]])
    p = t / t.sum()
    plug_in = float(np.sum(p * np.log(p / np.outer(p.sum(1), p.sum(0)))))
    fine, coarse = miller_madow_fine_coarse(t)
    assert float(fine) == pytest.approx(plug_in - (4 - 2 - 2 + 1) / (2 * 80), rel=1e-12)
    assert float(coarse) == 0.0
