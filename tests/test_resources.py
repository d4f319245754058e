"""vitprobe.resources: cores, loader workers and pinned memory for the device."""

from __future__ import annotations

import pytest


def test_loader_settings_follow_the_device(monkeypatch):
    from vitprobe.resources import CPU_WORKERS, MAX_GPU_WORKERS, available_cpus, loader_settings

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_settings("cpu") == {"workers": CPU_WORKERS, "pin_memory": False}
    cores = available_cpus()
    assert cores >= 1
    gpu = loader_settings("cuda:1")
    assert gpu == {"workers": min(MAX_GPU_WORKERS, max(1, cores - 1)), "pin_memory": True}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # more processes than cores: one each
    assert loader_settings("cuda")["workers"] == 1
    assert loader_settings("cuda", workers=0) == {"workers": 0, "pin_memory": True}
    assert loader_settings("cpu", workers=5)["workers"] == 5
    with pytest.raises(ValueError, match="workers"):
        loader_settings("cpu", workers=-1)


def test_make_loader_pins_batches_when_asked():
    from vitprobe.data import make_loader, open_images
    from vitprobe.models.preprocess import PreprocessConfig

    source = open_images("demo", n_images=2, seed=0)
    cfg = PreprocessConfig()
    assert make_loader(source, cfg, batch_size=2, pin_memory=True)._loader.pin_memory
    assert not make_loader(source, cfg, batch_size=2)._loader.pin_memory
