from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.stats import NeuronLayout, choose_bins, digitize, quantile_edges
from vitprobe.stats.binning import edge_ranks


def test_choose_bins() -> None:
    assert [choose_bins(n) for n in (5_000, 10_000, 20_000, 50_000, 70_000)] == [16, 16, 32, 32, 64]
    assert choose_bins(10) == 4


def test_digitize_matches_searchsorted() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 3001)).astype(np.float32)
    x[:, :50] = 0.0  # ties, including on edges
    e = quantile_edges(x[:, ::3], 16)
    ref = np.stack([np.searchsorted(e[i], x[i], side="right") for i in range(7)])
    np.testing.assert_array_equal(digitize(x, e), ref)
    np.testing.assert_array_equal(digitize(x.T.copy(), e.T.copy(), layout="col"), ref.T)
    t = digitize(torch.from_numpy(x), torch.from_numpy(e))
    np.testing.assert_array_equal(t.numpy(), ref)
    tc = digitize(torch.from_numpy(x.T.copy()), torch.from_numpy(e.T.copy()), layout="col")
    np.testing.assert_array_equal(tc.numpy(), ref.T)
    # leading batch axes (the accelerator path's groups): each slice binned by its edges
    e2 = np.stack([e, e[::-1] * 0.5 + np.sort(e, axis=1) * 0.5])
    e2.sort(axis=2)
    x2 = np.stack([x, -x])
    tb = digitize(torch.from_numpy(x2), torch.from_numpy(e2))
    for g in range(2):
        np.testing.assert_array_equal(tb[g].numpy(), digitize(x2[g], e2[g]))


def test_quantile_edges_equal_frequency() -> None:
    rng = np.random.default_rng(1)
    s = rng.standard_normal((3, 1024))
    e = quantile_edges(s, 8)
    counts = np.stack([np.bincount(digitize(s[i : i + 1], e[i : i + 1])[0], minlength=8)
                       for i in range(3)])
    assert np.all(counts == 128)
    np.testing.assert_array_equal(edge_ranks(1024, 8), np.arange(1, 8) * 128)
    et = quantile_edges(torch.from_numpy(s), 8)
    np.testing.assert_array_equal(et.numpy(), e)
    with pytest.raises(ValueError):
        quantile_edges(s[:, :4], 8)


def test_layout_geometry() -> None:
    lay = NeuronLayout(n_layers=3, d_model=4, grid=(16, 16), n_prefix=1)
    assert lay.centre == (8, 8)  # lower-right of the central four on an even grid
    assert lay.centre_position == 8 * 16 + 8
    assert lay.distance[lay.centre_position] == 0
    assert lay.distance.max() == pytest.approx(np.hypot(8, 8))
    assert lay.token_index[0] == 1 and lay.token_index[-1] == 256
    odd = NeuronLayout(n_layers=1, d_model=4, grid=(14, 14))
    assert odd.centre == (7, 7)
    assert odd.distance_bin.max() == 10  # rint(hypot(7, 7)) = 10
    assert lay.groups()[:3] == [(0, "attn"), (0, "mlp"), (1, "attn")]
    assert NeuronLayout.from_config(lay.to_config()) == lay
    with pytest.raises(ValueError):
        lay.check_groups([(3, "attn")])

    class FakeModel:
        n_layers, d_model, grid, n_prefix = 2, 8, (2, 3), 2
        patch_token_index = 2 + np.arange(6).reshape(2, 3)

    m = NeuronLayout.from_model(FakeModel())
    assert m.n_positions == 6 and m.centre == (1, 1) and list(m.token_index) == list(range(2, 8))
