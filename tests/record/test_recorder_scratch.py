"""The recorder's reused logits buffer never leaks into what it hands out."""

from __future__ import annotations

import torch

from tests.models import zoo


def test_patterns_kept_across_batches_and_equal_with_or_without_scores():
    probed = zoo.make("timm-vit")
    a, b = zoo.pixels(probed, 2, seed=1), zoo.pixels(probed, 3, seed=2)
    kept = [c for _, c in probed.stream([a, b], "blocks.*.attn.pattern")]
    # the logits of batch b went to the buffer batch a used: a's patterns are untouched
    _, fresh_a = probed.run_with_cache(a, ["blocks.*.attn.pattern", "blocks.*.attn.scores"])
    _, fresh_b = probed.run_with_cache(b, ["blocks.*.attn.pattern", "blocks.*.attn.scores"])
    for cache, fresh in ((kept[0], fresh_a), (kept[1], fresh_b)):
        for layer in range(probed.n_layers):
            site = f"blocks.{layer}.attn.pattern"
            torch.testing.assert_close(cache[site], fresh[site], atol=0, rtol=0)
            # recorded logits are fresh tensors whose softmax is the pattern
            torch.testing.assert_close(fresh[f"blocks.{layer}.attn.scores"].softmax(-1),
                                       fresh[site], atol=0, rtol=0)
    assert kept[0]["blocks.0.attn.pattern"].shape[0] == 2
