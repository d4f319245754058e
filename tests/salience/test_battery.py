"""The battery end to end on a tiny ViT: schema, intervals, the plug-in, figures, findings;
and the eigen-stimulus targets and search."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pytest
import torch

from tests.models import zoo
from vitprobe.analyses import Context, get_analysis
from vitprobe.salience import measure_salience
from vitprobe.salience.eigen import (
    eigen_targets,
    normalised_tokens,
    reachable_basis,
    search_patches,
)
from vitprobe.schema import MODEL_DIM, RANDOM_INIT, TRAINED

SMALL = {"salience_seeds": 3, "salience_levels": 3, "salience_cell": 1,
         "salience_surround_distances": [1], "salience_eigen_steps": 10,
         "salience_eigen_images": 2}


@pytest.fixture(scope="module")
def result():
    torch.set_num_threads(1)
    models = {TRAINED: zoo.make("timm-vit"), RANDOM_INIT: zoo.make("timm-vit", seed=1)}
    analysis = get_analysis("salience")
    lines: list[str] = []
    datasets = analysis.run(models, Context(n_images=0, options=SMALL), lines.append)
    return analysis, datasets, lines


@pytest.mark.slow
def test_plugin_returns_one_stacked_file(result):
    analysis, datasets, lines = result
    assert analysis.files == ("salience",) and not analysis.needs_images
    ds = datasets["salience"]
    assert [str(v) for v in ds[MODEL_DIM].values] == [TRAINED, RANDOM_INIT]
    assert ds.sizes["seed"] == 3 and ds.sizes["level"] == 3 and ds.sizes["layer"] == 2
    assert any("salience" in line for line in lines)
    # intervals bracket the means; seeds are the resampled axis
    for name in ("salience_index", "suppression_index", "like_unlike_index"):
        assert (ds[f"{name}_lower"] <= ds[name]).all() and (ds[name] <= ds[f"{name}_upper"]).all()
    mean = ds["popout_log2_ratio_heads"].mean("seed")
    np.testing.assert_allclose(ds["salience_index"], mean)
    assert np.isfinite(ds["salience_index"]).all()
    assert np.isfinite(ds["eigen_cosine"]).all()


@pytest.mark.slow
def test_null_level_is_near_zero_and_the_control_differs(result):
    ds = result[1]["salience"]
    # identical elements: no preference beyond what the positions make (jittered nulls
    # compare the unjittered element with heterogeneous ones, so only jitter 0 here)
    null = ds["salience_index"].sel(level=0.0, jitter=0.0, source="patches")
    assert float(abs(null).max()) < 0.2, null.values
    assert not np.allclose(ds["salience_index"].sel(model=TRAINED),
                           ds["salience_index"].sel(model=RANDOM_INIT))


@pytest.mark.slow
def test_figures_and_findings_come_from_the_file(result, tmp_path):
    matplotlib.use("Agg")
    analysis, datasets, _ = result
    from vitprobe.netcdf import load_dataset, save_dataset

    path = save_dataset(datasets["salience"], tmp_path / "salience.nc")
    loaded = {"salience": load_dataset(path)}
    for spec in analysis.figures:
        assert spec.available(loaded)
        fig = spec.draw(loaded)
        assert fig.axes
        assert "results/salience.nc" in spec.caption(loaded, {})
    sentences = analysis.findings(loaded)
    assert len(sentences) >= 8
    assert any(s.startswith("Pop-out, orientation") for s in sentences)
    assert any("Eigen-stimuli, layer 1" in s for s in sentences)


@pytest.mark.slow
def test_measure_salience_python_call():
    torch.set_num_threads(1)
    ds = measure_salience(zoo.make("timm-vit"), seeds=2, levels=2, cell=1, features=("colour",),
                          placements=("aligned",), jitters=(0.0,), surround_distances=(1,),
                          eigen_layers=())
    assert ds.sizes[MODEL_DIM] == 1 and "eigen_cosine" not in ds
    assert list(ds["feature"].values) == ["colour"]
    # the report leaves out the gallery of the skipped eigen-stimuli and draws the rest
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitprobe.report.builder import report_figures

    specs = report_figures({"salience": ds})
    assert [s.slug for s in specs] == ["salience_curves", "salience_examples",
                                       "salience_surround"]
    for spec in specs:
        plt.close(spec.draw({"salience": ds}))


def test_models_of_one_geometry_share_their_stimuli(monkeypatch):
    """A model and its control are measured on the same stimuli, generated once; stimuli
    of another geometry are refused, naming both."""
    from vitprobe.salience import battery

    torch.set_num_threads(1)
    cfg = battery.SalienceConfig(seeds=2, levels=2, cell=1, features=("colour",),
                                 placements=("aligned",), jitters=(0.0,),
                                 surround_distances=(1,), eigen_layers=())
    made = []
    original = battery.stimulus_sets
    monkeypatch.setattr(battery, "stimulus_sets",
                        lambda m, c: made.append(m.spec) or original(m, c))
    models = {TRAINED: zoo.make("timm-vit"), RANDOM_INIT: zoo.make("timm-vit", seed=1)}
    shared = battery.salience_datasets(models, cfg)
    assert len(made) == 1
    alone = battery.salience_dataset(models[RANDOM_INIT], cfg)  # its own stimuli
    np.testing.assert_array_equal(shared[RANDOM_INIT]["popout_log2_ratio"],
                                  alone["popout_log2_ratio"])
    stimuli = original(models[TRAINED], cfg)
    bigger = zoo.make("timm-dinov2-reg4")  # 56 px, patch 14: another geometry
    with pytest.raises(ValueError, match=r"generated for input and patch size"):
        battery.salience_dataset(bigger, cfg, stimuli=stimuli)
    more_seeds = dataclasses.replace(cfg, seeds=3)  # other stimuli: refused, not reshaped
    with pytest.raises(ValueError, match=r"seeds=2.*seeds=3"):
        battery.salience_dataset(models[TRAINED], more_seeds, stimuli=stimuli)


def test_eigen_targets_are_modes_of_the_folded_form():
    model = zoo.make("timm-vit")
    t = eigen_targets(model, 1)
    M = t["M"]  # (H, d, d)
    S = 0.5 * (M + M.transpose(0, 2, 1))
    X = 0.5 * (M - M.transpose(0, 2, 1))
    for h in range(model.n_heads):
        plus, minus, a = t["query"][h, 0], t["query"][h, 1], t["query"][h, 2]
        np.testing.assert_allclose(S[h] @ plus, t["values"][h, 0] * plus, atol=1e-8)
        np.testing.assert_allclose(S[h] @ minus, t["values"][h, 1] * minus, atol=1e-8)
        b = t["key"][h, 2]
        np.testing.assert_allclose(X[h] @ a, t["values"][h, 2] * b, atol=1e-8)
        assert t["values"][h, 0] == pytest.approx(np.linalg.eigvalsh(S[h]).max())
    g = model.ln1_weight[1].double().numpy()
    np.testing.assert_allclose(M[0], (g[:, None] * model.W_Q[1, 0].double().numpy())
                               @ (g[:, None] * model.W_K[1, 0].double().numpy()).T, atol=1e-10)


def test_compressed_targets_are_modes_within_the_basis():
    model = zoo.make("timm-vit")
    rng = np.random.default_rng(3)
    U = np.linalg.qr(rng.standard_normal((model.d_model, 7)))[0]  # a planted 7-dim subspace
    t = eigen_targets(model, 1, basis=U)
    full = eigen_targets(model, 1)
    M = t["M"]
    proj = U @ U.T
    for h in range(model.n_heads):
        Mc = U.T @ M[h] @ U  # the compressed form
        S, X = 0.5 * (Mc + Mc.T), 0.5 * (Mc - Mc.T)
        plus, minus, a, b = (t["query"][h, 0], t["query"][h, 1], t["query"][h, 2],
                             t["key"][h, 2])
        for v in (plus, minus, a, b, t["query"][h, 3], t["key"][h, 3]):
            np.testing.assert_allclose(proj @ v, v, atol=1e-10)  # inside the subspace
            assert np.linalg.norm(v) == pytest.approx(1.0)
        np.testing.assert_allclose(S @ U.T @ plus, t["values"][h, 0] * U.T @ plus, atol=1e-8)
        assert t["values"][h, 0] == pytest.approx(np.linalg.eigvalsh(S).max())
        assert t["values"][h, 1] == pytest.approx(np.linalg.eigvalsh(S).min())
        np.testing.assert_allclose(X @ U.T @ a, t["values"][h, 2] * U.T @ b, atol=1e-8)
        assert t["values"][h, 2] == pytest.approx(np.abs(np.linalg.eigvals(X).imag).max())
        np.testing.assert_allclose(t["full_values"][h], full["values"][h])
        assert t["overlap"][h, 0] == pytest.approx(abs(plus @ full["query"][h, 0]))
    assert (t["overlap"] <= 1 + 1e-9).all() and (t["overlap"] >= 0).all()
    # the whole space as the basis gives the whole form's modes
    np.testing.assert_allclose(eigen_targets(model, 1, basis=np.eye(model.d_model))["values"],
                               full["values"], atol=1e-10)


def test_reachable_basis_spans_what_a_patch_moves():
    """Finite differences: a small change of the central patch moves its centred token
    inside the (full-rank) basis; the basis is orthonormal and shrinks with the gain."""
    torch.set_num_threads(1)
    model = zoo.make("timm-vit")
    rng = np.random.default_rng(0)
    context = rng.uniform(0.2, 0.8, (*model.preprocess.input_size, 3)).astype(np.float32)
    U = reachable_basis(model, 1, context, gain=1e-6)
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-10)
    assert reachable_basis(model, 1, context, gain=0.5).shape[1] < U.shape[1]
    p, (rows, cols), pre = model.patch_size, model.grid, model.arch.n_prefix
    r, c = rows // 2, cols // 2
    moved = context.copy()
    moved[r * p:(r + 1) * p, c * p:(c + 1) * p] += 1e-3 * rng.standard_normal((p, p, 3))
    from vitprobe.data.transforms import normalize

    site = "blocks.1.ln1"
    _, cache = model.run_with_cache(normalize(np.stack([context, moved]), model.preprocess),
                                    site)
    x = normalised_tokens(model, cache[site].double(), 1)[:, pre:].numpy()
    x = x - x.mean(1, keepdims=True)
    dx = x[1, r * cols + c] - x[0, r * cols + c]
    assert np.linalg.norm(dx - U @ (U.T @ dx)) < 1e-3 * np.linalg.norm(dx)
    with pytest.raises(ValueError, match="gain"):
        reachable_basis(model, 1, context, gain=0.0)


@pytest.mark.slow
def test_search_aligns_tokens_and_leaves_the_rest_of_the_image():
    torch.set_num_threads(1)
    model = zoo.make("timm-vit")
    context = np.full((*model.preprocess.input_size, 3), 0.5, np.float32)
    context[::2] = 0.4  # stripes: the image's patches differ from their mean
    t = eigen_targets(model, 1, basis=reachable_basis(model, 1, context))
    q, k = t["query"][:, 0], t["key"][:, 0]
    before = search_patches(model, 1, q, k, context, steps=0)["cosine"]
    found = search_patches(model, 1, q, k, context, steps=150)
    assert found["cosine"].min() > 0.9 and found["cosine"].mean() > before.mean() + 0.3
    images, where, p = found["images"], found["where"], model.patch_size
    assert images.min() >= 0.0 and images.max() <= 1.0
    changed = np.abs(images - context).max(-1) > 0
    mask = np.zeros_like(changed)
    for i, r1, c1, r2, c2 in where:
        mask[i, r1 * p:(r1 + 1) * p, c1 * p:(c1 + 1) * p] = True
        mask[i, r2 * p:(r2 + 1) * p, c2 * p:(c2 + 1) * p] = True
    assert not (changed & ~mask).any()
    # the reported cosine is that of the final images' tokens (recomputed independently)
    from vitprobe.data.transforms import normalize

    _, cache = model.run_with_cache(normalize(images, model.preprocess), "blocks.1.ln1")
    pre, cols = model.arch.n_prefix, model.grid[1]
    x = normalised_tokens(model, cache["blocks.1.ln1"].double(), 1)[:, pre:]
    x = x - x.mean(1, keepdim=True)
    for n, (i, r1, c1, _, _) in enumerate(where):
        cos = torch.nn.functional.cosine_similarity(x[i, r1 * cols + c1],
                                                    torch.from_numpy(q[n]), dim=0)
        assert float(cos) == pytest.approx(found["cosine"][n, 0], abs=0.02)


def test_command_parses_options():
    from vitprobe.cli import build_parser
    from vitprobe.errors import VitprobeError
    from vitprobe.study.salience_command import _eigen_layers

    args = build_parser().parse_args(["salience", "--out", "x", "--no-control",
                                      "--eigen-layers", "1,6"])
    assert args.no_control and args.func.__name__ == "run_salience"
    assert _eigen_layers(args.eigen_layers) == (0, 5)
    assert _eigen_layers("none") == () and _eigen_layers(None) is None
    with pytest.raises(VitprobeError, match="1-based"):
        _eigen_layers("first")


@pytest.mark.parametrize(("options", "message"), [
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"levels": 1}, "levels must be >= 2"),
    ({"features": ("shape",)}, "choose one or more of orientation"),
    ({"placements": ("straddling",)}, "must include 'aligned'"),
    ({"jitters": (0.0, 2.0)}, r"fractions in \[0, 1\]"),
    ({"surround_distances": (0,)}, "gaps of >= 1 cell"),
])
def test_config_refuses_what_the_battery_cannot_measure(options, message):
    from vitprobe.errors import ConfigurationError
    from vitprobe.salience import SalienceConfig

    with pytest.raises(ConfigurationError, match=message):
        SalienceConfig(**options)


def test_config_from_context_options():
    from vitprobe.salience import SalienceConfig

    cfg = SalienceConfig.from_options({"salience_seeds": 8, "salience_jitters": [0.0, 0.5],
                                       "mi_bins": 16})
    assert cfg.seeds == 8 and cfg.jitters == (0.0, 0.5) and cfg.levels == 5


@pytest.mark.slow
def test_gallery_titles_say_when_attention_underflowed(result):
    """A mode's attention relative to uniform is 0 when the softmax underflowed: the
    gallery says so rather than printing a bare 'x0'."""
    matplotlib.use("Agg")
    from vitprobe.plots.salience import plot_eigen_gallery

    ds = result[1]["salience"].copy(deep=True)
    att = ds["eigen_attention"]
    ds["eigen_attention"] = att.where(att.pair != "sym-", 0.0)
    fig = plot_eigen_gallery(ds)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    # the bar panels' asym- (no image column of its own) is explained
    bars = {t.get_text() for t in fig.axes[-1].get_xticklabels()}
    assert "asym-" in bars and "asym- = the asym+ patches" in fig.get_suptitle()
    sym_minus = [t for t in titles if t.startswith("sym-")]
    assert sym_minus and all(t.endswith("attn x0 (underflow)") for t in sym_minus)
    others = [t for t in titles if t.startswith("sym+")]
    assert others and not any("underflow" in t for t in others)
