"""Planted query-key forms on a tiny timm ViT: W_K = -W_Q attends to what differs, so the
singleton pops out; W_K = W_Q attends to what is alike, so it does not. And the batched,
streamed measurement equals a brute-force loop over stimuli, elements and queries.

With zero q/k biases the logit between tokens x, y is x W_Q W_K^T y^T / sqrt(d_head):
for W_K = -W_Q it is -<x W_Q, y W_Q>, larger the less the tokens agree. A distractor's
query then favours the singleton over the distractors it equals (orientation, colour,
size). Luminance contrast is the exception the tests leave out on purpose: a
higher-contrast grating scales the same pattern, so its token stays roughly collinear with
the distractors' and dot-product attention need not prefer it.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import timm
import torch

from tests.models import zoo
from vitprobe.models import ProbedViT, wrap
from vitprobe.salience.measure import measure_arrays, measure_surround, pixels_of
from vitprobe.salience.stimuli import StimulusBatch, popout_stimulus, surround_stimulus

LEVELS = (0.0, 0.5, 1.0)
SEEDS = 6


def planted(sign: float) -> ProbedViT:
    torch.manual_seed(0)
    vit = zoo.timm_vit().eval()
    with torch.no_grad():
        for block in vit.blocks:
            d = block.attn.qkv.in_features
            block.attn.qkv.weight[d:2 * d] = sign * block.attn.qkv.weight[:d]
            block.attn.qkv.bias[:2 * d] = 0.0
    return wrap(vit, spec=f"planted W_K = {sign:+g} W_Q")


def sharpened() -> ProbedViT:
    """A tiny random-init ViT on an 8 x 8 patch grid (so that cells of 2 patches straddle
    3 x 3 patches with unequal area weights) with its queries scaled by 8: attention far
    from uniform and asymmetric (A[i, j] != A[j, i]), so that a reduction mixing up
    queries and keys, or weighting the wrong tokens, moves the results by far more than
    the tolerances."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=128,
                            depth=2).eval()
    with torch.no_grad():
        for block in vit.blocks:
            d = block.attn.qkv.in_features
            block.attn.qkv.weight[:d] *= 8.0
            block.attn.qkv.bias[:d] *= 8.0
    return wrap(vit, spec="timm ViT, queries x 8")


def arrays(model: ProbedViT, feature: str, placement: str = "aligned") -> StimulusBatch:
    size = model.preprocess.input_size
    return StimulusBatch.stack([
        popout_stimulus(size, model.patch_size, feature=feature, level=lv, seed=s, cell=1,
                        placement=placement)
        for lv, s in itertools.product(LEVELS, range(SEEDS))])


@pytest.fixture(scope="module")
def index():
    """Salience index (layer-mean of head-averaged log2 ratios), (sign, feature) -> (level,)."""
    out = {}
    torch.set_num_threads(1)
    for sign in (1.0, -1.0):
        model = planted(sign)
        for feature in ("orientation", "colour", "size"):
            raw = measure_arrays(model, arrays(model, feature))["log2_ratio_heads"][..., 0]
            out[sign, feature] = raw.reshape(len(LEVELS), SEEDS, -1).mean(1)  # (level, layer)
    return out


def test_planted_forms():
    model = planted(-1.0)
    torch.testing.assert_close(model.W_K, -model.W_Q)
    assert float(model.b_K.abs().max()) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("feature", ["orientation", "colour", "size"])
def test_dissimilarity_form_makes_the_singleton_pop_out(index, feature):
    si = index[-1.0, feature]
    null = si[0]
    assert np.abs(null).max() < 0.05  # no singleton: no preference
    assert (si[-1] > null + 0.15).all(), si  # clearly above the null in every layer
    assert (np.diff(si, axis=0) > 0).all(), si  # rises with the feature difference


@pytest.mark.slow
@pytest.mark.parametrize("feature", ["orientation", "colour", "size"])
def test_similarity_form_does_not(index, feature):
    si = index[1.0, feature]
    assert (si[1:] <= si[0] + 0.02).all(), si


def pair_angle(x: np.ndarray, w: np.ndarray, e: int, f: int) -> float:
    """Mean angle (degrees) between the tokens of elements e and f, area-weighted."""
    total = 0.0
    for i in np.nonzero(w[e])[0]:
        for j in np.nonzero(w[f])[0]:
            c = x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
            total += w[e, i] * w[f, j] * np.degrees(np.arccos(np.clip(c, -1, 1)))
    return total / w[e].sum() / w[f].sum()


def brute_force(model: ProbedViT, stim: StimulusBatch) -> dict[str, np.ndarray]:
    """The same measures, one stimulus at a time, with explicit loops (float64)."""
    pre, L, H = model.arch.n_prefix, model.n_layers, model.n_heads
    out = {"log2_ratio": [], "percentile": [], "angle_singleton": [], "angle_distractors": []}
    for n in range(len(stim)):
        sites = [f"blocks.{layer}.{k}" for layer in range(L) for k in ("ln1", "attn.pattern")]
        _, cache = model.run_with_cache(pixels_of(model, stim.images[n:n + 1]), sites)
        w = stim.weights[n].astype(np.float64)
        elements = [e for e in range(len(w)) if w[e].sum() > 0]
        s = int(stim.target[n])
        ratio, pct = np.zeros((L, H)), np.zeros((L, H))
        ang_s, ang_d = np.zeros(L), np.zeros(L)
        for layer in range(L):
            A = cache[f"blocks.{layer}.attn.pattern"][0].double().numpy()[:, pre:, pre:]
            for h in range(H):
                recv = {}
                for e in elements:
                    keys = np.nonzero(w[e])[0]
                    queries = [i for i in range(A.shape[1]) if w[e, i] == 0]
                    total = 0.0
                    for i in queries:
                        total += sum(A[h, i, p] * w[e, p] for p in keys) / w[e].sum()
                    recv[e] = total / len(queries)
                d = [recv[e] for e in elements if e != s]
                ratio[layer, h] = np.log2(recv[s] / np.mean(d))
                pct[layer, h] = np.mean([1.0 if v < recv[s] else 0.5 if v == recv[s] else 0.0
                                         for v in d])
            x = cache[f"blocks.{layer}.ln1"][0, pre:].double().numpy()
            others = [e for e in elements if e != s]
            ang_s[layer] = np.mean([pair_angle(x, w, s, e) for e in others])
            ang_d[layer] = np.mean([pair_angle(x, w, e, f) for e in others for f in others
                                    if e != f])
        for key, v in zip(out, (ratio, pct, ang_s, ang_d), strict=True):
            out[key].append(v)
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("placement", ["aligned", "straddling"])
def test_streamed_equals_brute_force(placement):
    torch.set_num_threads(1)
    model = sharpened()
    size = model.preprocess.input_size
    stim = StimulusBatch.stack([
        popout_stimulus(size, model.patch_size, feature=f, level=lv, jitter=0.3, seed=s,
                        cell=2, placement=placement)
        for f, lv, s in (("orientation", 1.0, 0), ("colour", 0.5, 1), ("size", 0.0, 2))])
    fast = measure_arrays(model, stim, batch_size=2)  # two batches: 2 + 1
    slow = brute_force(model, stim)
    np.testing.assert_allclose(fast["log2_ratio"][..., 0], slow["log2_ratio"], atol=1e-6,
                               rtol=0)
    np.testing.assert_allclose(fast["percentile"][..., 0], slow["percentile"], atol=1e-6,
                               rtol=0)
    np.testing.assert_allclose(fast["angle_singleton"], slow["angle_singleton"], atol=1e-6,
                               rtol=0)
    np.testing.assert_allclose(fast["angle_distractors"], slow["angle_distractors"],
                               atol=1e-6, rtol=0)


def test_surround_equals_brute_force():
    """Centre responses and centre-to-surround attention, batched and gathered, against
    explicit loops over the centre's tokens and every key (float64)."""
    torch.set_num_threads(1)
    model = sharpened()
    pre, L, H = model.arch.n_prefix, model.n_layers, model.n_heads
    size = model.preprocess.input_size
    stim = StimulusBatch.stack([
        surround_stimulus(size, model.patch_size, feature=f, relation=r, distance=d, seed=s,
                          cell=2)
        for f, r, d, s in (("orientation", "none", 1, 2), ("orientation", "iso", 1, 0),
                           ("colour", "cross", 2, 1), ("orientation", "none", 2, 2))])
    # the centre alone at distances 1 and 2: one image, two surround masks
    np.testing.assert_array_equal(stim.images[0], stim.images[3])
    surround = np.stack([m["surround"] for m in stim.meta])
    assert (surround[0] != surround[3]).any()
    forwarded: list[int] = []
    stream = model.stream
    model.stream = lambda batches, sites: stream(
        (forwarded.append(len(b)) or b for b in batches), sites)
    fast = measure_surround(model, stim, surround, batch_size=2)
    assert forwarded == [2, 1]  # 3 distinct images, each forwarded once
    sites = [f"blocks.{layer}.{k}" for layer in range(L)
             for k in ("attn.pattern", "attn.out", "mlp.out")]
    for n in range(len(stim)):
        _, cache = model.run_with_cache(pixels_of(model, stim.images[n:n + 1]), sites)
        w = stim.weights[n].astype(np.float64)
        centre = w[stim.target[n]] / w[stim.target[n]].sum()
        region = np.minimum(sum(w[e] for e in np.nonzero(surround[n])[0]), 1.0)
        for layer in range(L):
            for s, kind in enumerate(("attn.out", "mlp.out")):
                x = cache[f"blocks.{layer}.{kind}"][0, pre:].double().numpy()
                response = sum(centre[i] * x[i] for i in np.nonzero(centre)[0])
                np.testing.assert_allclose(fast["response"][n, layer, s], response,
                                           rtol=1e-12, atol=1e-12)
            A = cache[f"blocks.{layer}.attn.pattern"][0].double().numpy()[:, pre:, pre:]
            for h in range(H):
                mass = sum(centre[i] * sum(A[h, i, j] * region[j] for j in range(len(region)))
                           for i in np.nonzero(centre)[0])
                assert fast["attention"][n, layer, h] == pytest.approx(mass, rel=1e-12,
                                                                       abs=1e-15)


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 257])
def test_column_sums_equal_a_float64_sum(rows):
    """Float32 runs of rows joined in float64 equal the float64 sum of the pattern to
    ~1e-7 relative, for row counts around and beyond one run."""
    from vitprobe.salience.measure import _column_sums

    torch.manual_seed(rows)
    pattern = torch.rand(2, 3, rows, 40).softmax(-1)
    exact = pattern.double().sum(-2)
    got = _column_sums(pattern)
    assert got.dtype == torch.float64 and got.shape == exact.shape
    np.testing.assert_allclose(got.numpy(), exact.numpy(), rtol=2e-7, atol=0)
