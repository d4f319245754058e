from __future__ import annotations

import pytest

from vitprobe.errors import VitprobeError
from vitprobe.stats import JointCounts, NeuronLayout, describe_plan, joint_memory, plan_passes

from .conftest import PlantedStream

VIT_B = NeuronLayout(n_layers=12, d_model=768, grid=(14, 14), n_prefix=1)


def test_memory_matches_issue_numbers() -> None:
    # ViT-B/16, 24 sublayers, B = 32, int32, no split halves: 14.8 GB of counts
    est = joint_memory(VIT_B, 32, n_groups=24, split_half=False, null_channels=0)
    assert est.counts == 24 * 768 * 196 * 32 * 32 * 4
    assert est.counts / 1e9 == pytest.approx(14.8, abs=0.05)
    halves = joint_memory(VIT_B, 32, n_groups=24)
    assert halves.counts == 2 * est.counts
    small = joint_memory(VIT_B, 32, n_groups=24, max_images=50_000)
    assert small.counts == est.counts  # int16 halves: same bytes as int32 without halves


def test_memory_counts_the_accelerator_paths_edges(small_layout) -> None:
    """Off the CPU the edges are held twice (their transpose for searchsorted): the
    estimate says so, and matches the tensors a JointCounts on that path really holds."""
    cpu = joint_memory(VIT_B, 32, n_groups=3)
    gpu = joint_memory(VIT_B, 32, n_groups=3, device="cuda")
    assert gpu.edges - cpu.edges == 3 * 31 * 768 * 196 * 4
    acc = JointCounts(small_layout, bins=8, calibration_images=32, null_channels=0)
    acc.device_path_on_cpu = True
    stream = PlantedStream(small_layout, seed=3)
    acc.calibrate(stream.batch(32))
    acc.end_calibration()
    acc.update(stream.batch(4))
    held = acc.edges.nbytes + sum(t.nbytes for t in acc._edges_t.values())
    held += acc.vmin.nbytes + acc.vmax.nbytes
    est = joint_memory(small_layout, 8, n_groups=len(small_layout.groups()), device="cuda")
    assert held == est.edges


def test_plan_passes_fits_budget() -> None:
    budget = 8 * 10**9
    plan = plan_passes(VIT_B, 32, budget)
    flat = [g for p in plan for g in p]
    assert flat == VIT_B.groups()
    sizes = {len(p) for p in plan}
    assert max(sizes) - min(sizes) <= 1
    for p in plan:
        assert joint_memory(VIT_B, 32, n_groups=len(p)).peak <= budget
    assert len(plan) > 1
    # a bigger budget needs fewer passes
    assert len(plan_passes(VIT_B, 32, 4 * budget)) < len(plan)
    assert len(plan_passes(VIT_B, 16, 10**12)) == 1
    # a channel subset, given as indices or as a count
    assert plan_passes(VIT_B, 32, budget, channels=96) == plan_passes(
        VIT_B, 32, budget, channels=list(range(0, 768, 8)))
    assert len(plan_passes(VIT_B, 32, budget, channels=96)) < len(plan)
    text = describe_plan(VIT_B, 32, plan)
    assert f"{len(plan)} pass(es)" in text and "1.attn" in text
    with pytest.raises(VitprobeError, match=r"above the budget of 100 MB"):
        plan_passes(VIT_B, 32, 10**8)
    with pytest.raises(VitprobeError, match=r"above the budget of 1 MB"):  # not "0.00 GB"
        plan_passes(VIT_B, 32, 10**6)
