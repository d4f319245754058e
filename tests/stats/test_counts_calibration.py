"""One pass instead of two: accumulators that count their own calibration images.

``calibrate(batches) + end_calibration()`` with ``counts_calibration=True`` must leave
exactly the state of the two-pass path ``calibrate(batches) + end_calibration() +
update(batches)``, on the compiled and on the reference (``VITPROBE_JIT=0``) path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitprobe.stats import JointCounts, NeuronHistograms

from .conftest import PlantedStream

SIZES = (16, 5, 16, 1, 16, 9)  # 63 images; uneven batches, one of a single image


@pytest.fixture(params=["compiled", "reference"])
def jit(request, monkeypatch) -> str:
    monkeypatch.setenv("VITPROBE_JIT", "1" if request.param == "compiled" else "0")
    return request.param


def _batches(layout, sizes=SIZES, seed=3, indexed=False, start=0):
    stream = PlantedStream(layout, seed=seed)
    out, pos = [], start
    for b in sizes:
        cache = stream.batch(b)
        if indexed:  # global indices, not in stream order: the halves must follow them
            cache["image_index"] = torch.arange(pos, pos + b).flip(0) * 3
        pos += b
        out.append(cache)
    return out


def _two_pass(acc, calibration, data=()):
    for cache in calibration:
        acc.calibrate(cache)
    acc.end_calibration()
    for cache in (*calibration, *data):
        acc.update(cache)
    return acc


def _one_pass(acc, calibration, data=()):
    assert acc.counts_calibration
    for cache in calibration:
        acc.calibrate(cache)
    acc.end_calibration()
    for cache in data:
        acc.update(cache)
    return acc


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("calibration_images", [20, 48, 63, 1000])  # mid-batch, ..., never
def test_joint_counts_one_pass_equals_two(small_layout, jit, indexed,
                                          calibration_images) -> None:
    kw = dict(bins=4, calibration_images=calibration_images, null_channels=3,
              cross_pairs_per_distance=2)
    cal = _batches(small_layout, indexed=indexed)
    data = _batches(small_layout, (7, 12), seed=4, indexed=indexed, start=63)
    if calibration_images == 1000:  # the reservoir never fills: end_calibration counts
        with pytest.raises(ValueError, match="need at least"):
            _one_pass(JointCounts(small_layout, counts_calibration=True, **{**kw, "bins": 128}),
                      cal[:1])
    old = _two_pass(JointCounts(small_layout, **kw), cal, data)
    new = _one_pass(JointCounts(small_layout, counts_calibration=True, **kw), cal, data)
    _equal(old.state_dict(), new.state_dict())
    assert new.n == 63 + 19 and new.n_null == 63 - 1 + 19  # the single image has no pair
    assert new.calibration_n == min(kw["calibration_images"], 63)


def test_joint_counts_one_pass_on_the_device_path_and_channel_subset(small_layout) -> None:
    """The accelerator code path (searchsorted + index_add_, run on CPU tensors here)
    and a channel subset (whose activations are copies, not views) count alike."""
    kw = dict(bins=4, calibration_images=30, channels=[0, 2, 5], null_channels=2)
    cal = _batches(small_layout, indexed=True)
    old = _two_pass(JointCounts(small_layout, **kw), cal)
    new = JointCounts(small_layout, counts_calibration=True, count_dtype="int32", **kw)
    new.device_path_on_cpu = True
    _equal(old.state_dict(), _one_pass(new, cal).state_dict())


def test_joint_counts_calibration_state_starts_other_shards(small_layout) -> None:
    """Shard 0 counts the calibration batches and its own; shard 1 starts from the
    calibration state (edges, no counts): merged, they equal one two-pass stream."""
    kw = dict(bins=4, calibration_images=40, null_channels=3)
    cal = _batches(small_layout, indexed=True)
    data = _batches(small_layout, (8, 8, 6, 4), seed=5, indexed=True, start=63)
    whole = _two_pass(JointCounts(small_layout, **kw), cal, data)
    main = _one_pass(JointCounts(small_layout, counts_calibration=True, **kw), cal, data[::2])
    other = JointCounts(small_layout, counts_calibration=True, **kw)
    other.load_state_dict(main.calibration_state_dict())
    assert other.n == 0 and all(int(c.sum()) == 0 for c in other.counts)
    for cache in data[1::2]:
        other.update(cache)
    _equal(whole.state_dict(), main.merge(other).state_dict())


def test_joint_counts_refuse_a_state_with_uncounted_batches(small_layout) -> None:
    acc = JointCounts(small_layout, bins=4, calibration_images=60, counts_calibration=True)
    acc.calibrate(_batches(small_layout, (10,))[0])
    with pytest.raises(RuntimeError, match="end_calibration"):
        acc.state_dict()
    acc.end_calibration()
    assert acc.n == 10 and acc.calibration_n == 10


@pytest.mark.parametrize("calibration_images", [None, 21, 5])
def test_histograms_one_pass_equals_two(small_layout, jit, calibration_images) -> None:
    kw = dict(n_bins=10, z_range=3.0, calibration_images=calibration_images)
    cal = _batches(small_layout)
    data = _batches(small_layout, (4, 11), seed=6)
    old = _two_pass(NeuronHistograms(small_layout, **kw), cal, data)
    new = _one_pass(NeuronHistograms(small_layout, counts_calibration=True, **kw), cal, data)
    _equal(old.state_dict(), new.state_dict())
    assert new.n == 63 + 15
    if calibration_images is not None:  # the standardisation saw only the first images
        ref = _two_pass(NeuronHistograms(small_layout, n_bins=10, z_range=3.0), cal, data)
        assert not np.array_equal(ref.state_dict()["mu"], new.state_dict()["mu"])


def test_histograms_per_position_and_calibration_state(small_layout) -> None:
    kw = dict(n_bins=6, per_position=True, calibration_images=30)
    cal = _batches(small_layout)
    data = _batches(small_layout, (9, 3), seed=7)
    whole = _two_pass(NeuronHistograms(small_layout, **kw), cal, data)
    main = _one_pass(NeuronHistograms(small_layout, counts_calibration=True, **kw), cal,
                     data[:1])
    other = NeuronHistograms(small_layout, counts_calibration=True, **kw)
    other.load_state_dict(main.calibration_state_dict())
    assert other.n == 0 and int(other.hist.sum()) == 0
    other.update(data[1])
    _equal(whole.state_dict(), main.merge(other).state_dict())
    pending = NeuronHistograms(small_layout, counts_calibration=True)
    pending.calibrate(cal[0])
    with pytest.raises(RuntimeError, match="end_calibration"):
        pending.state_dict()


@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("calibration_images", [20, 63, 1000])
def test_bowtie_one_pass_equals_two(small_layout, jit, indexed, calibration_images) -> None:
    from vitprobe.stats.bowtie import BowtieCounts

    kw = dict(bins=5, n_random=1, n_cross=1, folds=3, calibration_images=calibration_images)
    cal = _batches(small_layout, indexed=indexed)
    data = _batches(small_layout, (7, 2), seed=5, indexed=indexed, start=63)
    old = _two_pass(BowtieCounts(small_layout, **kw), cal, data)
    new = _one_pass(BowtieCounts(small_layout, counts_calibration=True, **kw), cal, data)
    _equal(old.state_dict(), new.state_dict())
    assert new.n == 63 + 9 and new.calibration_n == min(63, calibration_images)
    # the calibrated state starts another shard with nothing counted
    other = BowtieCounts(small_layout, counts_calibration=True, **kw)
    other.load_state_dict(new.calibration_state_dict())
    assert other.n == 0 and all(int(c.sum()) == 0 for c in other.counts)
    pending = BowtieCounts(small_layout, counts_calibration=True, **kw)
    pending.calibrate(cal[0])
    with pytest.raises(RuntimeError, match="end_calibration"):
        pending.state_dict()
