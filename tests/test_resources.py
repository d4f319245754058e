"""vitprobe.resources: cores, loader workers and pinned memory for the device; the
retained heap."""

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


def test_peak_memory_is_the_resident_high_water_mark():
    import subprocess
    import sys

    # a fresh process: its high-water mark before and after filling 256 MiB, and after
    # freeing it and resetting the mark
    code = ("import numpy as np\n"
            "from vitprobe.resources import peak_memory, reset_peak_memory\n"
            "reset_peak_memory('cpu')\n"
            "before = peak_memory('cpu')\n"
            "a = np.ones(2**25)\n"  # 256 MiB of float64, every page written
            "after = peak_memory('cpu')\n"
            "del a\n"
            "reset_peak_memory('cpu')\n"
            "again = peak_memory('cpu')\n"
            "print(before['host_rss'], after['host_rss'], again['host_rss'], sorted(after))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=3)
    before, after, again = int(out[0]), int(out[1]), int(out[2])
    assert 2**20 < before < after
    assert after - before >= 250 * 2**20
    assert out[3].strip() == "['host_rss']"  # no device keys on a CPU
    if sys.platform == "linux":  # the mark is the process's own and starts afresh
        assert before < 1e9  # not the (larger) parent's resident size at fork
        assert again < after - 200 * 2**20


def test_make_loader_pins_batches_when_asked():
    from vitprobe.data import make_loader, open_images
    from vitprobe.models.preprocess import PreprocessConfig

    source = open_images("demo", n_images=2, seed=0)
    cfg = PreprocessConfig()
    assert make_loader(source, cfg, batch_size=2, pin_memory=True)._loader.pin_memory
    assert not make_loader(source, cfg, batch_size=2)._loader.pin_memory


# Run in a fresh process: glibc also reuses freed heap blocks under its defaults when one
# fits, so a process whose heap earlier tests have grown cannot show the defaults.
_FAULTS = """
import os, resource, torch
from vitprobe.resources import released_heap, retained_heap

def faults(mb):  # page faults of the second of two allocate-touch-free rounds
    n = mb * 2**20 // 4
    torch.empty(n).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(n).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""


def _run_heap_check(script: str) -> dict:
    """Run ``script`` in a fresh interpreter (without VITPROBE_RETAIN_HEAP) and return the
    dict it prints last."""
    import ast
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if k != "VITPROBE_RETAIN_HEAP"}
    proc = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


_RETAINED_HEAP_CHECK = _FAULTS + """
out = {"default": faults(96)}
with retained_heap() as active:
    # torch's aligned allocations ask a little more than the block they freed, so the
    # first rounds still grow the heap before a freed block fits
    out["retained"] = [active, min(faults(64) for _ in range(6))]
    with retained_heap():  # nested: its exit leaves the outer block's setting alone
        pass
    out["nested"] = faults(64)
out["after"] = faults(512)  # larger than any block the heap holds: glibc's own mmap
with retained_heap(False) as active:
    out["disabled"] = [active, faults(640)]
os.environ["VITPROBE_RETAIN_HEAP"] = "0"
with retained_heap() as active:
    out["env"] = active
print(out)
"""


@pytest.mark.skipif(
    __import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_retained_heap_reuses_freed_pages_and_restores_the_defaults():
    out = _run_heap_check(_RETAINED_HEAP_CHECK)
    pages = 96 * 2**20 // 4096
    # glibc's defaults: a large block is mmapped and unmapped on free, so every page of
    # the next one is a fresh fault
    assert out["default"] > pages // 2
    assert out["retained"][0] and out["retained"][1] < 200  # freed pages reused
    assert out["nested"] < 200
    assert out["after"] > pages // 2  # the defaults are back after the block
    assert out["disabled"][0] is False and out["disabled"][1] > pages // 2
    assert out["env"] is False


_RELEASED_HEAP_CHECK = _FAULTS + """
out = {}
with released_heap() as active:  # nothing retained: nothing to release
    out["outside"] = active
with retained_heap():
    out["retained"] = min(faults(64) for _ in range(6))
    with released_heap() as active:
        out["released"] = [active, faults(64)]
    out["back"] = min(faults(64) for _ in range(6))
print(out)
"""


@pytest.mark.skipif(
    __import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_released_heap_hands_large_blocks_back_inside_a_retained_heap():
    """The one-pass calibration's phase: large freed blocks go back to the kernel (each
    new one faults its pages in), and the retained heap's reuse returns after it."""
    out = _run_heap_check(_RELEASED_HEAP_CHECK)
    pages = 64 * 2**20 // 4096
    assert out["outside"] is False
    assert out["retained"] < 200
    assert out["released"][0] is True and out["released"][1] > pages // 2
    assert out["back"] < 200


def test_device_step_bytes_grow_with_the_gpu():
    from vitprobe.resources import DEVICE_STEP_SHARE, STEP_BYTES, device_step_bytes

    assert device_step_bytes("cpu") == STEP_BYTES == 2 * 2**30
    assert device_step_bytes("cuda:0", gpu_total=16 * 2**30) == STEP_BYTES  # the least
    h200 = 150_000_000_000
    assert device_step_bytes("cuda", gpu_total=h200) == int(DEVICE_STEP_SHARE * h200)


def test_items_per_step_spreads_the_items_evenly():
    from vitprobe.attention import AngleAccumulator

    acc = AngleAccumulator(12, 12, 1, 197, 768)
    assert acc.device_step_bytes is None  # by the device: 2 GiB on a CPU
    per_layer = 128 * 197**2 * (4 * (3 * 12 + 3 * 2) + 8 * 2)  # ViT-B/16 at batch 128
    assert acc.layers_per_step(128) == 2 == acc.items_per_step(12, per_layer, "cpu")
    acc.device_step_bytes = 5 * per_layer  # five fit: three steps of four, not 5 + 5 + 2
    assert acc.items_per_step(12, per_layer, "cpu") == 4
    acc.device_step_bytes = 1
    assert acc.items_per_step(12, per_layer, "cpu") == 1


@pytest.mark.parametrize(("n", "text"), [(0, "0 bytes"), (999, "999 bytes"), (1000, "1 kB"),
                                         (10**6, "1 MB"), (8.2e7, "82 MB"),
                                         (4 * 10**9, "4 GB"), (1.234e12, "1.23 TB")])
def test_format_bytes_keeps_small_sizes_readable(n, text):
    from vitprobe.resources import format_bytes

    assert format_bytes(n) == text
