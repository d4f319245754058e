"""The study's parts on their own: the plan's chunks and the one merge path."""

from __future__ import annotations

import numpy as np
import pytest

from tests.stats.conftest import PlantedStream
from vitprobe.stats import NeuronHistograms, NeuronLayout, NeuronMoments
from vitprobe.study.merge import merge_states
from vitprobe.study.plan import RunPlan


@pytest.mark.parametrize(("n", "batch"), [(1, 4), (17, 4), (64, 8), (65, 32)])
def test_chunks_partition_the_selection(n, batch):
    plan = RunPlan.make(n, batch, seed=3, calibration_images=10)
    chunks = [plan.chunk(i) for i in range(plan.n_chunks)]
    assert sorted(np.concatenate(chunks).tolist()) == list(range(n))
    assert all(len(c) == batch for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= batch
    assert plan.calibration == list(range(min(-(-10 // batch), plan.n_chunks)))
    remaining = list(range(plan.n_chunks))
    ranks = [plan.for_rank(remaining, r, 3) for r in range(3)]
    assert sorted(c for r in ranks for c in r) == remaining


def test_merge_states_equals_one_accumulator():
    small_layout = NeuronLayout(n_layers=2, d_model=6, grid=(4, 4), n_prefix=1)
    stream = PlantedStream(small_layout, seed=5, scale=2.0)
    batches = [stream.batch(b) for b in (9, 16, 3, 12, 7)]

    def build():
        moments, hist = NeuronMoments(small_layout), NeuronHistograms(small_layout)
        hist.calibrate(batches[0])
        hist.end_calibration()
        return {"m": moments, "h": hist}

    whole = build()
    for b in batches:
        for acc in whole.values():
            acc.update(b)
    shards = []
    for part in (batches[:2], batches[2:3], batches[3:]):
        accs = build()
        for b in part:
            for acc in accs.values():
                acc.update(b)
        shards.append({k: a.state_dict() for k, a in accs.items()})
    merged = merge_states(build, shards)
    expected = {k: a.state_dict() for k, a in whole.items()}
    for key in expected:
        for name, value in expected[key].items():
            if value.dtype.kind in "iu":
                np.testing.assert_array_equal(merged[key][name], value, err_msg=name)
            else:
                np.testing.assert_allclose(merged[key][name], value, rtol=1e-10, atol=1e-12,
                                           err_msg=name)
    assert merge_states(build, shards[:1])["m"]["n"] == shards[0]["m"]["n"]
