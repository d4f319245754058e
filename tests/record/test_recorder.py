"""Recording is exact: patterns equal each library's eager attention, sublayer outputs
rebuild the residual stream, and recording never changes the model's outputs."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.models import zoo
from vitprobe.errors import InputShapeError, VitprobeError
from vitprobe.record import Recorder, resolve_sites

ALL = list(zoo.FACTORIES)
HF = [n for n in ALL if n.startswith("hf-")]
TIMM = [n for n in ALL if n.startswith("timm-")]


@pytest.fixture(scope="module", params=ALL)
def probed(request):
    return zoo.make(request.param)


def test_outputs_identical_with_and_without_recording(probed):
    x = zoo.pixels(probed)
    plain = probed(x)
    out, cache = probed.run_with_cache(x, "blocks.*.*")
    assert torch.equal(plain, out)
    assert len(cache) == probed.n_layers * 10


def test_sublayers_rebuild_residual_stream(probed):
    _, c = probed.run_with_cache(zoo.pixels(probed), "blocks.*.*")
    for layer in range(probed.n_layers):
        pre = c[f"blocks.{layer}.resid_pre"]
        mid = pre + c[f"blocks.{layer}.attn.out"]
        post = mid + c[f"blocks.{layer}.mlp.out"]
        torch.testing.assert_close(post, c[f"blocks.{layer}.resid_post"], atol=1e-5, rtol=0)
        if layer + 1 < probed.n_layers:
            assert torch.equal(c[f"blocks.{layer}.resid_post"], c[f"blocks.{layer + 1}.resid_pre"])
        # the sublayers are not trivially small (the rebuild would then prove nothing)
        assert c[f"blocks.{layer}.attn.out"].abs().mean() > 1e-3
        assert c[f"blocks.{layer}.mlp.out"].abs().mean() > 1e-3


def test_qk_from_weights_match_recorded(probed):
    _, c = probed.run_with_cache(zoo.pixels(probed), ["blocks.*.ln1", "blocks.*.attn.*"])
    for layer in range(probed.n_layers):
        ln1 = c[f"blocks.{layer}.ln1"]
        for kind, w, b in (
            ("q", probed.W_Q, probed.b_Q),
            ("k", probed.W_K, probed.b_K),
            ("v", probed.W_V, probed.b_V),
        ):
            rebuilt = torch.einsum("btd,hde->bhte", ln1, w[layer]) + b[layer][None, :, None]
            torch.testing.assert_close(
                rebuilt, c[f"blocks.{layer}.attn.{kind}"], atol=1e-5, rtol=1e-5
            )
        pattern = c[f"blocks.{layer}.attn.pattern"]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))
        torch.testing.assert_close(c[f"blocks.{layer}.attn.scores"].softmax(-1), pattern)


def test_head_output_rebuilds_attn_out_without_layerscale():
    probed = zoo.make("hf-vit")  # no LayerScale: attn.out = sum_h pattern_h v_h W_O_h + b_O
    _, c = probed.run_with_cache(zoo.pixels(probed), "blocks.0.*")
    z = torch.einsum("bhqk,bhkd->bhqd", c["blocks.0.attn.pattern"], c["blocks.0.attn.v"])
    out = torch.einsum("bhqd,hde->bqe", z, probed.W_O[0]) + probed.b_O[0]
    torch.testing.assert_close(out, c["blocks.0.attn.out"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TIMM)
def test_timm_pattern_equals_eager(name):
    probed = zoo.make(name)
    assert all(b.attn.fused_attn for b in probed.model.blocks), "test needs the fused path"
    eager = copy.deepcopy(probed.model)
    captured = []
    for block in eager.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, a, out: captured.append(out))
    x = zoo.pixels(probed)
    with torch.inference_mode():
        eager_out = eager(x)
    out, c = probed.run_with_cache(x, "blocks.*.attn.pattern")
    torch.testing.assert_close(out, eager_out, atol=1e-4, rtol=1e-4)
    for layer, expected in enumerate(captured):
        torch.testing.assert_close(c[f"blocks.{layer}.attn.pattern"], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", HF)
def test_hf_pattern_and_hidden_states_equal_eager(name):
    probed = zoo.make(name)
    assert probed.model.config._attn_implementation == "sdpa", "test needs the fused path"
    eager = copy.deepcopy(probed.model)
    eager.set_attn_implementation("eager")
    x = zoo.pixels(probed)
    with torch.inference_mode():
        ref = eager(pixel_values=x, output_attentions=True, output_hidden_states=True)
    _, c = probed.run_with_cache(
        x, ["blocks.*.attn.pattern", "blocks.*.resid_post", "blocks.0.resid_pre"]
    )
    assert ref.attentions is not None and len(ref.attentions) == probed.n_layers
    hidden = ref.hidden_states
    torch.testing.assert_close(c["blocks.0.resid_pre"], hidden[0], atol=1e-5, rtol=0)
    for layer in range(probed.n_layers):
        torch.testing.assert_close(
            c[f"blocks.{layer}.attn.pattern"], ref.attentions[layer], atol=1e-5, rtol=0
        )
        if layer + 1 < len(hidden):
            torch.testing.assert_close(
                c[f"blocks.{layer}.resid_post"], hidden[layer + 1], atol=1e-5, rtol=0
            )


def test_torchvision_pattern_equals_need_weights():
    probed = zoo.make("torchvision-vit")
    _, c = probed.run_with_cache(zoo.pixels(probed), ["blocks.*.ln1", "blocks.*.attn.pattern"])
    for layer, block in enumerate(probed.model.encoder.layers):
        x = c[f"blocks.{layer}.ln1"]
        with torch.inference_mode():
            _, weights = block.self_attention(
                x, x, x, need_weights=True, average_attn_weights=False
            )
        torch.testing.assert_close(c[f"blocks.{layer}.attn.pattern"], weights, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "prefix", "grid"),
    [
        ("hf-deit", ("cls", "dist"), (4, 4)),
        ("timm-deit-distilled", ("cls", "dist"), (4, 4)),
        ("hf-dinov2-reg4", ("cls", "reg", "reg", "reg", "reg"), (4, 4)),
        ("timm-dinov2-reg4", ("cls", "reg", "reg", "reg", "reg"), (4, 4)),
        ("hf-vit", ("cls",), (4, 4)),
    ],
)
def test_prefix_tokens_and_grid(name, prefix, grid):
    probed = zoo.make(name)
    assert probed.prefix_tokens == prefix
    assert probed.grid == grid
    assert probed.patch_token_index[0, 0] == len(prefix)
    assert probed.patch_token_index[-1, -1] == len(prefix) + grid[0] * grid[1] - 1
    _, c = probed.run_with_cache(zoo.pixels(probed), "blocks.0.resid_post")
    assert c["blocks.0.resid_post"].shape[1] == len(prefix) + grid[0] * grid[1]


def test_fused_and_separate_qkv_weights_agree():
    """A timm model and an HF model holding the same weights give the same W_Q/W_K/W_V."""
    timm_model = zoo.make("timm-vit")
    d = timm_model.d_model
    config = zoo.T.ViTConfig(
        image_size=64,
        patch_size=16,
        hidden_size=d,
        num_hidden_layers=1,
        num_attention_heads=timm_model.n_heads,
        intermediate_size=2 * d,
    )
    hf = zoo.vitprobe.models.wrap(zoo.T.ViTModel(config).eval())
    # copy timm's fused qkv into HF's separate projections for layer 0
    qkv = timm_model.model.blocks[0].attn.qkv
    attn = hf.model.layers[0].attention
    with torch.no_grad():
        for i, proj in enumerate((attn.q_proj, attn.k_proj, attn.v_proj)):
            proj.weight.copy_(qkv.weight[i * d : (i + 1) * d])
            proj.bias.copy_(qkv.bias[i * d : (i + 1) * d])
    hf.__dict__.pop("_weights", None)
    for name in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V"):
        hf.__dict__.pop(name, None)
        assert torch.equal(getattr(hf, name)[0], getattr(timm_model, name)[0])


def test_stream_hands_out_batches_and_keeps_nothing():
    probed = zoo.make("timm-vit")
    batches = [{"pixels": zoo.pixels(probed, seed=s), "ids": [f"img{s}"]} for s in range(3)]
    seen = []
    for batch, cache in probed.stream(batches, "blocks.*.mlp.out", dtype=torch.bfloat16):
        assert set(cache) == {"blocks.0.mlp.out", "blocks.1.mlp.out"}
        assert cache["blocks.0.mlp.out"].dtype == torch.bfloat16
        seen.append(batch["ids"][0])
    assert seen == ["img0", "img1", "img2"]
    # the same recording through a consumer callback
    got = []
    probed.stream(batches, "blocks.1.resid_post", consumer=lambda b, c: got.append(c))
    _, ref = probed.run_with_cache(batches[2]["pixels"], "blocks.1.resid_post")
    assert torch.equal(got[2]["blocks.1.resid_post"], ref["blocks.1.resid_post"])
    # hooks are gone afterwards
    assert not any(m._forward_hooks for m in probed.model.modules())


def test_site_globs_and_errors():
    assert resolve_sites("blocks.1.attn.*", 2) == [
        f"blocks.1.attn.{k}" for k in ("q", "k", "v", "scores", "pattern", "out")
    ]
    with pytest.raises(VitprobeError, match=r"layers 0\.\.1"):
        resolve_sites("blocks.5.mlp.out", 2)
    with pytest.raises(VitprobeError, match="unknown site"):
        resolve_sites("blocks.0.mlp.pre", 2)
    with pytest.raises(VitprobeError, match="unknown site"):
        Recorder(zoo.make("timm-vit"), "layers.0.out")
    with pytest.raises(VitprobeError, match=r"not from the end \(the last is 'blocks\.1\.mlp"):
        resolve_sites("blocks.-1.mlp.out", 2)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: torch.zeros(2, 32, 32, 3), r"got \(2, 32, 32, 3\): channels last\? "
                                        r"pixels\.permute\(0, 3, 1, 2\)"),
    (lambda: torch.zeros(3, 32, 32), r"one image\? pixels\[None\]"),
    (lambda: torch.zeros(2, 3, 32), r"shape \(batch, 3, H, W\), got \(2, 3, 32\)"),
    (lambda: torch.zeros(2, 3, 32, 32).numpy(), "got ndarray"),
    (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "preprocessed floats"),
])
def test_a_batch_of_the_wrong_form_is_named(make, message):
    probed = zoo.make("timm-vit")
    with pytest.raises(InputShapeError, match=message):
        probed.run_with_cache(make(), "blocks.0.attn.pattern")
    with pytest.raises(InputShapeError, match=message):
        probed(make())
