"""Every registered analysis as a plug-in on a tiny random-init ViT: accumulators ->
results -> figures and findings, driven only through vitprobe.analyses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from matplotlib.figure import Figure

from tests.analyses.conftest import CONTEXT
from tests.analyses.helpers import run_analysis
from vitprobe.analyses import REGISTRY, Analysis, analysis_names, get_analysis
from vitprobe.errors import ConfigurationError, VitprobeError
from vitprobe.schema import MODEL_DIM, RANDOM_INIT, TRAINED, controls, main_model
from vitprobe.weights import analyze_qk


def test_registry_holds_the_analyses_in_report_order() -> None:
    assert analysis_names()[:6] == ("moments", "mi", "bowtie", "angles", "qk", "salience")
    for name in REGISTRY:
        a = get_analysis(name)
        assert isinstance(a, Analysis) and a.name == name and a.files and a.summary
        assert all(spec.needs and set(spec.needs) <= {*a.files, "qk"} for spec in a.figures)
    assert [get_analysis(n).needs_images for n in analysis_names()[:6]] == \
        [True, True, True, True, False, False]
    with pytest.raises(VitprobeError, match="unknown analysis 'nope'"):
        get_analysis("nope")


@pytest.mark.parametrize("name", ["moments", "mi", "angles", "qk"])
def test_results_have_the_model_axis_and_every_figure_draws(name, results) -> None:
    analysis = get_analysis(name)
    for file in analysis.files:
        ds = results[file]
        assert [str(v) for v in ds[MODEL_DIM].values] == [TRAINED, RANDOM_INIT]
        assert list(controls(ds)) == [RANDOM_INIT]
    drawn = 0
    for spec in analysis.figures:
        assert spec.available(results), spec.slug  # a control ran: control figures too
        fig = spec.draw(results)
        assert isinstance(fig, Figure) and fig.axes, spec.slug
        fig.canvas.draw()  # renders without error
        caption = spec.caption(results, {"images": {"source": "random", "n_selected": 24}})
        assert "24 images" in caption or spec.slug.startswith("qk"), spec.slug
        drawn += 1
    assert drawn == len(analysis.figures)
    found = analysis.findings(results)
    assert found and all(isinstance(s, str) and s.endswith(".") for s in found)


def test_streaming_results_match_the_accumulators_run_directly(models, pixels, results):
    """The plug-in's moments equal a NeuronMoments run by hand on the same batches."""
    from vitprobe.stats import NeuronLayout, NeuronMoments

    m = models[TRAINED]
    acc = NeuronMoments(NeuronLayout.from_model(m))
    for i in range(0, len(pixels), CONTEXT.batch_size):
        acc.update(m.run_with_cache(pixels[i:i + CONTEXT.batch_size], acc.sites)[1])
    want = acc.result()
    got = main_model(results["moments"])
    np.testing.assert_array_equal(got["excess_kurtosis"].values, want["excess_kurtosis"].values)
    assert got.attrs["n_images"] == 24


def test_mi_plan_uses_the_real_image_count_and_the_budget(models) -> None:
    from vitprobe.analyses.mi import mi_bins, plan_mi_passes

    m = models[TRAINED]
    mi = get_analysis("mi")
    assert mi.plan(m, CONTEXT) == 1
    assert mi_bins(dataclasses.replace(CONTEXT, options={})) == 4  # choose_bins(24)
    assert mi_bins(dataclasses.replace(CONTEXT, n_images=20_000, options={})) == 32
    tight = dataclasses.replace(CONTEXT, memory_budget=1)
    with pytest.raises(VitprobeError, match="one \\(layer, sublayer\\) group needs"):
        plan_mi_passes(m, tight)
    assert mi.accumulators(m, CONTEXT, 1) == {}
    assert get_analysis("moments").accumulators(m, CONTEXT, 1) == {}
    assert get_analysis("angles").accumulators(m, CONTEXT, 1) == {}


def test_mi_plan_note_names_the_passes_and_the_one_pass_budget(models) -> None:
    from vitprobe.analyses.mi import one_pass_memory

    m = models[TRAINED]
    mi = get_analysis("mi")
    need = one_pass_memory(m, CONTEXT)
    assert mi.plan_note(m, CONTEXT) is None  # one pass: nothing to say
    assert mi.plan(m, dataclasses.replace(CONTEXT, memory_budget=need)) == 1
    short = dataclasses.replace(CONTEXT, memory_budget=need - 1)  # exact at the byte
    n = mi.plan(m, short)
    assert n > 1
    note = mi.plan_note(m, short)
    assert f"need {n} passes over the images" in note
    suggested = float(note.split("--memory-budget ")[2].split("GB")[0]) * 1e9
    assert need <= suggested < need + 1e8  # rounded up to 0.1 GB
    assert mi.plan(m, dataclasses.replace(CONTEXT, memory_budget=int(suggested))) == 1
    # more channels asked for than the model has: said, and all are studied
    many = dataclasses.replace(CONTEXT, options={**CONTEXT.options, "mi_channels": 10**5})
    assert mi.plan_note(m, many) == (f"mi: --mi-channels 100000 is more than the model's "
                                     f"{m.d_model} channels per sublayer: all {m.d_model} are "
                                     "studied")
    short = dataclasses.replace(many, memory_budget=one_pass_memory(m, many) - 1)
    both = mi.plan_note(m, short).split("\n")
    assert len(both) == 2 and "passes over the images" in both[1]


def test_mi_split_over_passes_equals_one_pass(models, pixels, results) -> None:
    """A budget that fits one (layer, sublayer) group per pass: four passes, each
    layer's MHA and MLP in different passes; the combined file equals one pass."""
    from vitprobe.analyses.mi import plan_mi_passes
    from vitprobe.stats.layout import NeuronLayout
    from vitprobe.stats.planning import joint_memory

    m = models[TRAINED]
    layout = NeuronLayout.from_model(m)
    one = joint_memory(layout, 4, n_groups=1, channels=8, calibration_images=8, batch_size=8,
                       max_images=24).peak
    split = dataclasses.replace(CONTEXT, memory_budget=one)
    plan = plan_mi_passes(m, split)
    assert plan == [[g] for g in layout.groups()]
    got = run_analysis("mi", models, split, pixels)["mi"]
    want = results["mi"]
    assert list(got.data_vars) == list(want.data_vars)
    for name in [*want.data_vars, *want.coords]:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
        assert got[name].attrs == want[name].attrs, name
    assert got.attrs == want.attrs


def test_qk_runs_only_the_models_given(models, results) -> None:
    qk = get_analysis("qk")
    alone = qk.run({TRAINED: models[TRAINED]}, CONTEXT)["qk"]
    assert alone.sizes[MODEL_DIM] == 1 and not controls(alone)
    both = results["qk"]
    want = analyze_qk(models[TRAINED], baseline=models[RANDOM_INIT])
    for name in ("eig_sym", "positive_share", "layer_symmetry"):
        np.testing.assert_array_equal(both[name].values, want[name].values, err_msg=name)
    np.testing.assert_array_equal(alone["eig_sym"].values, want["eig_sym"].values[:1])
    assert list(both["model_spec"].values) == ["timm-vit", "timm-vit"]


def test_mi_findings_name_the_null(results) -> None:
    text = " ".join(get_analysis("mi").findings(results))
    assert "independent image" in text and "estimator bias" not in text


def test_mi_caption_states_the_estimator(results) -> None:
    from vitprobe.stats.mi import KAPPA

    spec = next(s for s in get_analysis("mi").figures if s.slug == "mi_vs_distance")
    caption = spec.caption(results, {"images": {"source": "x", "n_selected": 24}})
    assert f"I_B + {KAPPA:g} (I_B - I_B/2)" in caption and "2 I_B" not in caption
    assert "Miller-Madow" in caption and "independent image" in caption


def test_angle_summary_attaches_qk_only_of_the_same_models(models, results) -> None:
    spec = next(s for s in get_analysis("angles").figures if s.slug == "angle_summary")
    manifest = {"images": {"source": "x", "n_selected": 24}}
    full = spec.draw(results)
    texts = [t.get_text() for ax in full.axes for t in ax.texts]
    assert not any("not attached" in t for t in texts)  # qk panels filled
    alone = get_analysis("qk").run({TRAINED: models[TRAINED]}, CONTEXT)
    partial = {**results, **alone}
    fig = spec.draw(partial)
    assert any("not attached" in t.get_text() for ax in fig.axes for t in ax.texts)
    assert "did not run on these models" in spec.caption(partial, manifest)
    assert "did not run" not in spec.caption(results, manifest)


def test_one_pass_calibration_keeps_batches_only_within_the_budget():
    """The bytes of the kept calibration batches: whole batches x sites x tokens x
    d_model x the run's bytes per value, against ``memory_budget`` (inclusive)."""
    from vitprobe.analyses.base import Context, one_pass_calibration
    from vitprobe.models import load_model
    from vitprobe.stats.histograms import NeuronHistograms
    from vitprobe.stats.layout import NeuronLayout

    model = load_model("timm:vit_tiny_patch16_224", pretrained=False)
    layout = NeuronLayout.from_model(model)
    # 10 calibration images in batches of 4 keep 3 batches: 12 images of 24 sites
    kept = 12 * 24 * 197 * 192 * 4

    def counts_own(budget: int, dtype: str = "float32", calibration_images: int | None = 10,
                   before: bool = True) -> bool:
        context = Context(n_images=100, calibration_images=10, batch_size=4, dtype=dtype,
                          memory_budget=budget)
        acc = NeuronHistograms(layout, calibration_images=calibration_images,
                               counts_calibration=before)
        assert one_pass_calibration(acc, model, context) is acc
        return acc.counts_calibration

    for before in (True, False):  # decided by the budget alone
        assert counts_own(kept, before=before) and not counts_own(kept - 1, before=before)
    assert counts_own(kept // 2, "bfloat16") and not counts_own(kept // 2 - 1, "bfloat16")
    # an accumulator calibrating on fewer images than the study keeps fewer batches
    assert counts_own(kept // 3, calibration_images=4)
    assert not counts_own(kept // 3 - 1, calibration_images=4)
    assert counts_own(kept, calibration_images=None) and not counts_own(kept - 1,
                                                                       calibration_images=None)
    with pytest.raises(ConfigurationError, match="'fp32' is not one of float32"):
        counts_own(kept, "fp32")


def test_mi_keeps_its_channel_subset_not_the_whole_sites():
    """MI on a channel subset keeps copies of those channels (patch tokens only), so its
    one-pass calibration is sized on them, not on the whole sites."""
    from vitprobe.analyses import get_analysis
    from vitprobe.analyses.base import Context
    from vitprobe.models import load_model

    model = load_model("timm:vit_tiny_patch16_224", pretrained=False)
    whole = 8 * 24 * 197 * 192 * 4  # 8 images x 24 sites x 197 tokens x 192 channels
    context = Context(n_images=64, calibration_images=8, batch_size=8, memory_budget=whole - 1,
                      options={"mi_channels": 8, "mi_bins": 4})
    analysis = get_analysis("mi")
    assert analysis.plan(model, context) == 1  # the 8 channels' counts fit one pass
    acc = analysis.accumulators(model, context, 0)["mi"]
    assert len(acc.groups) == 24 and acc.counts_calibration  # 1.2 MB kept, not 29 MB
