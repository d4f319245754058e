"""One error type per condition: every accumulator raises the same type for the same
mistake, and that type is both a E.VitprobeError and the built-in a caller would catch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models import zoo
from vitprobe import errors as E
from vitprobe.attention import AngleAccumulator
from vitprobe.stats import JointCounts, NeuronHistograms, NeuronLayout, NeuronMoments

LAYOUT = NeuronLayout(n_layers=1, d_model=4, grid=(3, 3), n_prefix=1)
#: condition -> the built-in exception it must also be
BUILTIN = {
    E.AlreadyCalibratedError: RuntimeError,
    E.NotCalibratedError: RuntimeError,
    E.ConfigurationError: ValueError,
    E.InputShapeError: ValueError,
    E.InsufficientDataError: ValueError,
    E.NonFiniteInputError: ValueError,
    E.IncompatibleStateError: ValueError,
    E.MissingSiteError: KeyError,
    E.CountOverflowError: OverflowError,
}


def _batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"blocks.0.{s}.out": torch.randn(n, 10, 4, generator=g) for s in ("attn", "mlp")}


def _calibrated(cls, **kw):
    acc = cls(LAYOUT, **kw)
    acc.calibrate(_batch(8))
    acc.end_calibration()
    return acc


def _raises(kind: type[Exception], fn, *args, **kwargs) -> Exception:
    with pytest.raises(kind) as info:
        fn(*args, **kwargs)
    assert type(info.value) is kind  # the condition's own type, not a relative
    assert isinstance(info.value, E.VitprobeError) and isinstance(info.value, BUILTIN[kind])
    assert str(info.value)  # a sentence, not an empty message
    return info.value


def test_every_error_type_is_documented_and_subclasses_a_builtin() -> None:
    doc = E.__doc__ or ""
    for name in E.__all__:
        cls = getattr(E, name)
        assert issubclass(cls, E.VitprobeError) and cls.__doc__, name
        assert name in doc, f"{name} missing from the table in vitprobe.errors"
        if cls is not E.VitprobeError:
            assert any(issubclass(cls, b) for b in (ValueError, RuntimeError, KeyError,
                                                    TypeError, OverflowError)), name
    assert set(BUILTIN) <= {getattr(E, n) for n in E.__all__}


def test_calibration_order_errors_are_the_same_type_everywhere() -> None:
    vit = zoo.make("timm-vit")
    angle = AngleAccumulator.from_model(vit, layers=[0])  # the centred variant calibrates
    _, cache = vit.run_with_cache(zoo.pixels(vit, 2), angle.sites)
    # update before calibration
    _raises(E.NotCalibratedError, JointCounts(LAYOUT, bins=4, calibration_images=8).update,
            _batch())
    _raises(E.NotCalibratedError, NeuronHistograms(LAYOUT).update, _batch())
    _raises(E.NotCalibratedError, NeuronHistograms(LAYOUT).result)
    _raises(E.NotCalibratedError, JointCounts(LAYOUT, bins=4, calibration_images=8).result)
    _raises(E.NotCalibratedError, angle.update, cache)
    # calibrate after end_calibration
    _raises(E.AlreadyCalibratedError, _calibrated(JointCounts, bins=4, calibration_images=8)
            .calibrate, _batch())
    _raises(E.AlreadyCalibratedError, _calibrated(NeuronHistograms).calibrate, _batch())
    angle.calibrate(cache)
    angle.end_calibration()
    _raises(E.AlreadyCalibratedError, angle.calibrate, cache)


def test_too_little_data_is_one_type() -> None:
    joint = JointCounts(LAYOUT, bins=4, calibration_images=8)
    joint.calibrate(_batch(2))
    _raises(E.InsufficientDataError, joint.end_calibration)  # 2 images < 4 bins
    hist = NeuronHistograms(LAYOUT)
    hist.calibrate(_batch(1))
    _raises(E.InsufficientDataError, hist.end_calibration)
    _raises(E.InsufficientDataError, NeuronMoments(LAYOUT).result)
    _raises(E.InsufficientDataError, _calibrated(JointCounts, bins=4, calibration_images=8).result)
    vit = zoo.make("timm-vit")
    _raises(E.InsufficientDataError, AngleAccumulator.from_model(vit).end_calibration)
    _raises(E.InsufficientDataError, AngleAccumulator.from_model(vit, variants=["raw"]).result)


def test_merging_or_loading_another_configuration_is_one_type(tmp_path) -> None:
    a = _calibrated(JointCounts, bins=4, calibration_images=8)
    _raises(E.IncompatibleStateError, a.merge, _calibrated(JointCounts, bins=6,
                                                          calibration_images=8))
    _raises(E.IncompatibleStateError, a.merge, JointCounts(LAYOUT, bins=4, calibration_images=8))
    other = JointCounts(LAYOUT, bins=4, calibration_images=8)
    other.calibrate(_batch(8, seed=5))  # other images: other edges
    other.end_calibration()
    _raises(E.IncompatibleStateError, a.merge, other)
    _raises(E.IncompatibleStateError, a.merge, NeuronMoments(LAYOUT))  # another type
    h = _calibrated(NeuronHistograms)
    _raises(E.IncompatibleStateError, h.merge, NeuronHistograms(LAYOUT, n_bins=10))
    _raises(E.IncompatibleStateError, NeuronMoments(LAYOUT).merge,
            NeuronMoments(NeuronLayout(n_layers=1, d_model=4, grid=(3, 3), n_prefix=0)))
    vit = zoo.make("timm-vit")
    angle = AngleAccumulator.from_model(vit, variants=["raw"])
    _raises(E.IncompatibleStateError, angle.merge, AngleAccumulator.from_model(vit, bins=30,
                                                                             variants=["raw"]))
    angle.save_state(tmp_path / "a.npz")
    _raises(E.IncompatibleStateError, AngleAccumulator.from_model(vit, bins=30).load_state,
            tmp_path / "a.npz")
    _raises(E.IncompatibleStateError, a.set_edges, np.zeros((1, 2, 9, 4)))
    # a E.ResultsError too: checkpoints of another run are results of another run
    assert issubclass(E.IncompatibleStateError, E.ResultsError)


def test_bad_input_is_one_type_per_condition() -> None:
    joint = _calibrated(JointCounts, bins=4, calibration_images=8)
    batch = _batch()
    missing = {"blocks.0.attn.out": batch["blocks.0.attn.out"]}
    err = _raises(E.MissingSiteError, joint.update, missing)
    assert str(err).startswith("recorded batch has no site 'blocks.0.mlp.out'")  # no quotes
    _raises(E.MissingSiteError, NeuronMoments(LAYOUT).update, missing)
    wrong = {k: v[..., :3] for k, v in batch.items()}
    _raises(E.InputShapeError, joint.update, wrong)
    _raises(E.InputShapeError, NeuronMoments(LAYOUT).update, wrong)
    uneven = {**batch, "blocks.0.mlp.out": batch["blocks.0.mlp.out"][:5]}
    _raises(E.InputShapeError, joint.update, uneven)
    _raises(E.InputShapeError, NeuronMoments(LAYOUT).update, uneven)

    vit = zoo.make("timm-vit")
    angle = AngleAccumulator.from_model(vit, layers=[0], variants=["raw"])
    _, cache = vit.run_with_cache(zoo.pixels(vit, 2), angle.sites)
    _raises(E.MissingSiteError, angle.update, {})
    short = {k: v[:, :-1] if k.endswith("ln1") else v for k, v in cache.items()}
    _raises(E.InputShapeError, angle.update, short)
    poisoned = {k: v.clone() for k, v in cache.items()}
    poisoned["blocks.0.ln1"][1, 3, 0] = float("nan")
    err = _raises(E.NonFiniteInputError, angle.update, poisoned)
    assert "image(s) [1]" in str(err)


def test_bad_options_are_configuration_errors() -> None:
    _raises(E.ConfigurationError, JointCounts, LAYOUT, bins=5)
    _raises(E.ConfigurationError, JointCounts, LAYOUT, count_dtype="int8")
    _raises(E.ConfigurationError, LAYOUT.check_groups, [(0, "ffn")])
    vit = zoo.make("timm-vit")
    _raises(E.ConfigurationError, AngleAccumulator.from_model, vit, bins=45)
    _raises(E.ConfigurationError, AngleAccumulator.from_model, vit, embedding="resid_post")
    _raises(E.ConfigurationError, vit.run_with_cache, zoo.pixels(vit, 1), "blocks.0.nope")


def test_count_overflow_is_reported_as_such() -> None:
    joint = _calibrated(JointCounts, bins=4, calibration_images=8)
    state = joint.state_dict()
    state["null_0"] = state["null_0"] + 2**31
    _raises(E.CountOverflowError, JointCounts(LAYOUT, bins=4, calibration_images=8)
            .load_state_dict, state)
