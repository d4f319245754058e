"""The non-finite checks: ``all_finite`` for a whole cache, ``nonfinite_rows`` per site."""

from __future__ import annotations

import pytest
import torch

from vitprobe.record import all_finite, nonfinite_rows


def _cache() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 17, 8, generator=g), torch.randn(4, 2, 17, 17, generator=g).double(),
            torch.randn(4, 17, 8, generator=g).bfloat16()]


def test_all_finite_is_true_for_finite_and_empty_caches():
    assert all_finite(_cache())
    assert all_finite(iter(_cache()))  # any iterable, read once
    assert all_finite([])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_one_bad_value_anywhere_makes_the_cache_non_finite(bad, which):
    cache = _cache()
    cache[which][2, 1, 1] = bad
    assert not all_finite(cache)
    rows = nonfinite_rows(cache[which])
    assert rows is not None and rows.tolist() == [False, False, True, False]
    assert all(nonfinite_rows(t) is None for i, t in enumerate(cache) if i != which)


def test_a_sum_that_overflows_keeps_every_row():
    # finite values whose float32 sum overflows: the quick check says "not finite", the
    # per-row look finds every row finite (the streamer then keeps them all)
    t = torch.full((3, 4), 3e38)
    assert not all_finite([t])
    rows = nonfinite_rows(t)
    assert rows is not None and not rows.any()


def test_the_check_leaves_the_thread_count_alone():
    before = torch.get_num_threads()
    all_finite(_cache())
    assert torch.get_num_threads() == before
