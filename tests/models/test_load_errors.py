"""Weights that cannot be had give a clean error at once, naming what to do."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

import vitprobe
from vitprobe.errors import VitprobeError
from vitprobe.models.hub import HubUnreachableError, hub_reachable


@pytest.mark.skipif(hub_reachable(), reason="the hub is reachable: the weights would download")
def test_uncached_hub_weights_without_a_hub_fail_at_once():
    import timm  # noqa: F401 - import time is not what this test measures

    t0 = time.perf_counter()
    with pytest.raises(HubUnreachableError, match="not in the local Hugging Face cache"):
        vitprobe.load_model("timm:vit_tiny_patch16_224")
    assert time.perf_counter() - t0 < 15  # without the check: ~60 s of retries


def _tiny_state() -> dict[str, torch.Tensor]:
    model = vitprobe.load_model("timm:vit_tiny_patch16_224", pretrained=False)
    return {k: v.clone().contiguous() for k, v in model.model.state_dict().items()}


def test_truncated_safetensors_is_named(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file(_tiny_state(), str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(VitprobeError, match="truncated or corrupt") as info:
        vitprobe.load_model("timm:vit_tiny_patch16_224", checkpoint=path)
    assert str(path) in str(info.value)


def test_checkpoint_of_another_size_is_named(tmp_path):
    small = vitprobe.load_model("timm:vit_small_patch16_224", pretrained=False)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small.model.state_dict().items()}, str(path))
    with pytest.raises(VitprobeError, match="another shape") as info:
        vitprobe.load_model("timm:vit_tiny_patch16_224", checkpoint=path)
    assert "model (192" in str(info.value)  # names the shapes that differ


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: cuda would load")
def test_a_device_the_machine_lacks_is_named_before_loading():
    """torch's own error for cuda without a GPU speaks of NVIDIA drivers."""
    with pytest.raises(VitprobeError, match=r"device cuda:1: no CUDA GPU is available here"):
        vitprobe.load_model("timm:vit_tiny_patch16_224", pretrained=False, device="cuda:1")
    with pytest.raises(VitprobeError, match=r"unknown device 'tpu'; use cpu, cuda or cuda:N"):
        vitprobe.load_model("timm:vit_tiny_patch16_224", pretrained=False, device="tpu")
