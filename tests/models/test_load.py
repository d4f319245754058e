"""load_model: spec forms, random-init controls, checkpoints, clear errors."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import transformers as T
from safetensors.torch import save_file

import vitprobe
from tests.models import zoo
from vitprobe.cli import main
from vitprobe.errors import UnsupportedModelError, VitprobeError


def test_timm_spec_and_weights_shapes():
    m = vitprobe.load_model("timm:vit_tiny_patch16_224", pretrained=False)
    assert (m.n_layers, m.n_heads, m.d_model, m.d_head) == (12, 3, 192, 64)
    assert m.W_Q.shape == (12, 3, 192, 64)
    assert m.W_O.shape == (12, 3, 64, 192)
    assert m.b_O.shape == (12, 192)
    assert m.ln1_weight.shape == (12, 192)
    assert m.grid == (14, 14) and m.prefix_tokens == ("cls",)
    assert m.preprocess.input_size == (224, 224)
    # W_Q[l, h] is the h-th block of rows of the fused qkv Linear, transposed
    qkv = m.model.blocks[3].attn.qkv.weight
    assert torch.equal(m.W_Q[3, 1], qkv[64:128].T)
    assert torch.equal(m.W_K[3, 1], qkv[192 + 64:192 + 128].T)


def test_random_init_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = vitprobe.load_model("timm:vit_tiny_patch16_224", pretrained=False, seed=7)
    after = torch.rand(1)
    b = vitprobe.load_model("timm:vit_tiny_patch16_224", pretrained=False, seed=7)
    c = vitprobe.load_model("timm:vit_tiny_patch16_224", pretrained=False, seed=8)
    assert torch.equal(before, after)
    assert torch.equal(a.W_Q, b.W_Q)
    assert not torch.equal(a.W_Q, c.W_Q)


def test_torchvision_spec():
    m = vitprobe.load_model("torchvision:vit_b_32", pretrained=False)
    assert (m.n_layers, m.n_heads, m.d_model, m.grid) == (12, 12, 768, (7, 7))


def test_hf_local_directory(tmp_path):
    model = zoo.hf_deit()
    model.save_pretrained(tmp_path / "deit")
    for spec in (f"hf:{tmp_path / 'deit'}", str(tmp_path / "deit")):
        m = vitprobe.load_model(spec)
        assert m.prefix_tokens == ("cls", "dist")
        assert torch.equal(m.W_Q[0, 0], model.layers[0].attention.q_proj.weight[:16].T)
        assert "local directory" in m.source


def test_hf_local_non_vit_is_rejected(tmp_path):
    T.BertModel(T.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(UnsupportedModelError, match="'bert' model"):
        vitprobe.load_model(f"hf:{tmp_path / 'bert'}")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_file_round_trip(tmp_path, suffix):
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    m = vitprobe.load_model("timm:vit_tiny_patch16_224", checkpoint=path, seed=99)
    assert torch.equal(m.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert m.pretrained and str(path.name) in m.source


def test_checkpoint_mismatch_and_missing_file(tmp_path):
    other = timm.create_model("vit_small_patch16_224", pretrained=False, depth=1)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(VitprobeError, match="does not fit"):
        vitprobe.load_model("timm:vit_tiny_patch16_224", checkpoint=path)
    with pytest.raises(VitprobeError, match="not found"):
        vitprobe.load_model("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(VitprobeError, match="weights file"):
        vitprobe.load_model(str(path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("timm:resnet18", "not the plain|not a supported|VisionTransformer"),
        ("timm:no_such_model_xyz", "no model named"),
        ("torchvision:resnet18", "not a ViT"),
        ("vit_base_patch16_224", "prefix it with its library"),
        ("foo:bar", "cannot read model spec"),
        ("timm:", "names no model"),
    ],
)
def test_spec_errors_name_the_culprit(spec, message):
    with pytest.raises(VitprobeError, match=message):
        vitprobe.load_model(spec, pretrained=False)


def test_wrapping_a_non_vit_names_what_was_found():
    with pytest.raises(UnsupportedModelError, match=r"ResNet.*top-level modules: conv1"):
        vitprobe.models.wrap(timm.create_model("resnet18", pretrained=False))
    with pytest.raises(UnsupportedModelError, match="Sequential"):
        vitprobe.models.wrap(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_info_command(capsys):
    assert main(["info", "timm:deit_tiny_distilled_patch16_224", "--random-init"]) == 0
    out = capsys.readouterr().out
    assert "cls, dist" in out and "14 x 14 patches of 16 px; 198 tokens" in out
    assert main(["info", "timm:vit_tiny_patch16_224", "--random-init", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["n_heads"] == 3 and facts["source"] == "random init"
    assert main(["info", "nonsense"]) == 1
    assert "unknown model 'nonsense'" in capsys.readouterr().err
    # -m / --model as every other command takes it
    assert main(["info", "-m", "timm:vit_tiny_patch16_224", "--random-init", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_heads"] == 3
    assert main(["info", "timm:vit_tiny_patch16_224", "-m", "timm:vit_small_patch16_224"]) == 1
    assert "two models given" in capsys.readouterr().err


class _Wrapped(torch.nn.Module):
    """A model type no built-in family knows: a small timm ViT behind a wrapper."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.inner = timm.models.vision_transformer.VisionTransformer(
            img_size=32, patch_size=8, embed_dim=32, depth=depth, num_heads=2, num_classes=0
        )


@pytest.fixture
def registry(monkeypatch):
    """The model registry, restored after the test (registration is process-wide)."""
    from vitprobe.models import registry as reg

    monkeypatch.setattr(reg, "FAMILIES", dict(reg.FAMILIES))
    monkeypatch.setattr(reg, "NAMED_MODELS", dict(reg.NAMED_MODELS))
    return reg


def test_register_family_extends_load_model_and_wrap(registry):
    from vitprobe.errors import ConfigurationError
    from vitprobe.models.timm_vit import TimmViTAdapter

    with pytest.raises(VitprobeError, match="cannot read model spec"):
        vitprobe.load_model("wrapped:3", pretrained=False)
    with pytest.raises(UnsupportedModelError, match="_Wrapped"):
        vitprobe.models.wrap(_Wrapped(2))

    calls = []

    def load(name, pretrained):
        calls.append((name, pretrained))
        return TimmViTAdapter(_Wrapped(int(name)).inner), "wrapped test family"

    family = vitprobe.models.register_family(
        "wrapped", load, recognises=lambda m: isinstance(m, _Wrapped),
        adapter=lambda m: TimmViTAdapter(m.inner), library="wrapped test models",
    )
    assert registry.FAMILIES["wrapped"] is family and list(registry.FAMILIES)[-1] == "wrapped"

    m = vitprobe.load_model("wrapped:3", pretrained=False, seed=5)
    assert calls == [("3", False)]
    assert (m.n_layers, m.n_heads, m.d_model, m.grid) == (3, 2, 32, (4, 4))
    assert m.spec == "wrapped:3" and m.source == "wrapped test family" and not m.pretrained
    # load_model seeds the registered loader like the built-in ones
    again = vitprobe.load_model("wrapped:3", pretrained=False, seed=5)
    assert torch.equal(m.W_Q, again.W_Q)

    module = _Wrapped(2)
    w = vitprobe.models.wrap(module)
    assert w.n_layers == 2 and w.model is module.inner
    assert vitprobe.load_model(module).n_layers == 2  # load_model(nn.Module) goes through wrap
    with pytest.raises(UnsupportedModelError, match="wrapped test models"):
        vitprobe.models.wrap(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    # built-in families still come first
    assert vitprobe.models.adapter_for(zoo.timm_vit()).family == "timm"

    with pytest.raises(ConfigurationError, match="already registered"):
        vitprobe.models.register_family("timm", load)
    with pytest.raises(ConfigurationError, match="both"):
        vitprobe.models.register_family("half", load, recognises=lambda m: True)


def test_register_model_adds_a_whole_spec_name(registry):
    from vitprobe.errors import ConfigurationError
    from vitprobe.models.timm_vit import TimmViTAdapter

    vitprobe.models.register_model(
        "tiny-wrapped", lambda name, pretrained: (TimmViTAdapter(_Wrapped(1).inner), name)
    )
    m = vitprobe.load_model("tiny-wrapped", pretrained=False)
    assert m.n_layers == 1 and m.source == "tiny-wrapped"
    with pytest.raises(ConfigurationError):
        vitprobe.models.register_model("imgfocus-dinov2-s14", lambda n, p: None)
