"""What the process may use: the CPU cores it may run on and, from them and the device,
the data loader's workers and pinned memory; and how it keeps the memory it frees.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
import re
from collections.abc import Iterator

from vitprobe.errors import ConfigurationError

__all__ = ["CPU_MEMORY_BUDGET", "DEVICE_STEP_SHARE", "GPU_MEMORY_BUDGET_SHARE", "STEP_BYTES",
           "auto_memory_budget", "available_cpus", "available_memory", "check_device",
           "device_step_bytes", "format_bytes", "loader_settings", "peak_memory",
           "released_heap", "reset_peak_memory", "retained_heap"]

#: decoding processes on a CPU run: the forward needs the cores, and 2 workers already
#: load 15-21x faster than the CPU forward of ViT-S/16 (benchmarks/data_throughput.py)
CPU_WORKERS = 2
#: at most this many per GPU process: beyond it, workers cost memory and start-up time
MAX_GPU_WORKERS = 32


def check_device(device: str | object) -> None:
    """Refuse a device this machine lacks, naming it (torch's own error for ``cuda`` on a
    machine without one speaks of NVIDIA drivers).

    Raises:
        ConfigurationError: not cpu, cuda, cuda:N or mps; no CUDA GPU; no GPU N.
    """
    name = str(device)
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", name):
        raise ConfigurationError(f"unknown device {name!r}; use cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigurationError(f"device {name}: no CUDA GPU is available here "
                                     "(torch.cuda.is_available() is False); use cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigurationError(f"device {name}: only {torch.cuda.device_count()} GPU(s)")


def format_bytes(n: float) -> str:
    """A byte count for messages, in the largest decimal unit that keeps it >= 1
    (``format_bytes(1e6) == "1 MB"``, ``format_bytes(8.2e7) == "82 MB"``, three
    significant digits), so that a small budget does not read as "0.00 GB"."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} bytes"


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where
    the platform has none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def available_memory() -> int | None:
    """Bytes the system can still hand out without swapping (``MemAvailable`` of
    ``/proc/meminfo``); None where that is not known (not Linux)."""
    return _proc_kib("/proc/meminfo", "MemAvailable")


def _proc_kib(path: str, key: str) -> int | None:
    """Bytes of a ``key:  N kB`` line of a Linux ``/proc`` file; None where there is
    none (not Linux, or no such line)."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_memory(device: str | object) -> None:
    """Start the high-water marks of :func:`peak_memory` afresh: the resident set's on
    Linux (``/proc/self/clear_refs``), the device's on CUDA."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # 5: reset the peak resident set size (Linux >= 4.0)
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(torch.device(str(device)))


def _resident_peak() -> int | None:
    """The resident high-water mark in bytes: ``VmHWM`` (Linux; this process's own, reset
    by :func:`reset_peak_memory`), else ``ru_maxrss`` (which on Linux also carries the
    parent's resident size at fork over ``exec``)."""
    hwm = _proc_kib("/proc/self/status", "VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource
        import sys
    except ImportError:  # pragma: no cover - Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB else


def peak_memory(device: str | object) -> dict[str, int]:
    """This process's peak memory, in bytes, since it started or the last
    :func:`reset_peak_memory`.

    ``host_rss``: the high-water mark of its resident set (absent where unknown). On a
    CUDA device also ``device_allocated`` (the most bytes PyTorch's tensors held there)
    and ``device_reserved`` (the most its caching allocator held from the driver: what
    must fit the card).
    """
    out: dict[str, int] = {}
    rss = _resident_peak()
    if rss is not None:
        out["host_rss"] = rss
    if str(device).startswith("cuda"):
        import torch

        dev = torch.device(str(device))
        out["device_allocated"] = int(torch.cuda.max_memory_allocated(dev))
        out["device_reserved"] = int(torch.cuda.max_memory_reserved(dev))
    return out


def loader_settings(device: str, workers: int | None = None) -> dict[str, int | bool]:
    """Data-loader settings for a run on ``device``: ``{"workers": n, "pin_memory": b}``.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` (any torch device string).
        workers: decoding processes asked for; None chooses: on CPU
            :data:`CPU_WORKERS`; on an accelerator, one per core this process may use,
            less one for the main process, shared among the processes of this host
            (``LOCAL_WORLD_SIZE``, set by torchrun), at most :data:`MAX_GPU_WORKERS`:
            JPEG decoding in worker processes must keep up with a GPU forward that runs
            thousands of images per second.

    Batches are put in pinned memory for CUDA devices, so that their copy to the GPU
    (``non_blocking=True``) overlaps the work already queued there.
    """
    accelerator = not str(device).startswith("cpu")
    if workers is None:
        if accelerator:
            per_host = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
            workers = min(MAX_GPU_WORKERS, max(1, (available_cpus() - 1) // per_host))
        else:
            workers = CPU_WORKERS
    elif workers < 0:
        raise ConfigurationError(f"workers must be >= 0, got {workers}")
    return {"workers": int(workers), "pin_memory": str(device).startswith("cuda")}


# the glibc mallopt parameters (malloc.h) that retained_heap sets, and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
#: released_heap mmaps blocks from this size (recorded sites are megabytes; the small
#: blocks of Python and the kernels' scratch stay on the heap)
_RELEASED_MMAP_FROM = 1 << 20
#: the mmap threshold released_heap leaves behind: setting one ends glibc's dynamic
#: threshold, which rises to this (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit) as large blocks
#: are freed
_MMAP_THRESHOLD_MAX = 32 << 20
#: open retained_heap blocks: only the outermost one sets and restores glibc's settings
_retained_depth = 0


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # pragma: no cover - a Linux without a loadable libc
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def retained_heap(enabled: bool | None = None) -> Iterator[bool]:
    """Keep the memory that tensors free inside the process while the block runs (glibc).

    A recorded batch keeps every recorded site alive until the accumulators have read it
    (60 sites of DINOv2-S/14 at batch 32: about 1.7 GB with the forward's own buffers).
    glibc hands those blocks back to the kernel when they are freed (large blocks are
    mmapped, and the top of the heap is trimmed), so the next batch takes every page
    again as a fresh, zeroed page: 0.30-0.44 million page faults per batch measured on
    the 2-core VM, 7-14 % of the counting pass (``benchmarks/study_overhead.py``). Inside
    this block glibc neither mmaps nor trims, so freed blocks are reused; on exit the
    defaults are restored and the free memory is returned (``malloc_trim``).

    The process's resident memory then stays at its peak until the block ends, which
    is the memory a batch needs anyway. Yields whether the setting is in force: False
    off Linux/glibc, when ``enabled`` is False, or when ``enabled`` is None and the
    environment sets ``VITPROBE_RETAIN_HEAP=0``. Blocks nest (an inner one changes
    nothing); other code calling ``mallopt`` meanwhile is not accounted for.
    """
    global _retained_depth
    if enabled is None:
        enabled = os.environ.get("VITPROBE_RETAIN_HEAP", "1") != "0"
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    if _retained_depth == 0:
        # -1 disables trimming (mallopt(3)); no mmap: every block comes from the heaps
        libc.mallopt(_M_TRIM_THRESHOLD, -1)
        libc.mallopt(_M_MMAP_MAX, 0)
    _retained_depth += 1
    try:
        yield True
    finally:
        _retained_depth -= 1
        if _retained_depth == 0:
            for param, value in _GLIBC_DEFAULTS.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)


@contextlib.contextmanager
def released_heap() -> Iterator[bool]:
    """Inside a :func:`retained_heap` block, hand large freed blocks back to the kernel
    again while this block runs (glibc).

    For a phase that keeps many batch-sized blocks alive at once: the one-pass
    calibration keeps every calibration batch's recorded sites until the edges are fixed
    (:func:`vitprobe.analyses.base.one_pass_calibration`). Under the retained heap each
    new batch is then placed above the kept blocks and the holes between them are only
    partly reused: DINOv2-S/14's calibration (256 images) peaked at 7.0 GB resident
    for 2.8 GB of live tensors, against 4.4 GB with this block (``/proc`` resident set,
    one model). Meanwhile blocks of 1 MiB and more are mmapped and unmapped on free (a
    fixed threshold: glibc's dynamic one would rise past the recorded sites' size), so
    each batch faults its pages in again, as without the retained heap. On exit the
    retained heap's settings return, with the heap trimmed. Yields whether it changed
    anything: False outside a retained block (or off glibc), where nothing is retained.
    """
    libc = _glibc() if _retained_depth > 0 else None
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _RELEASED_MMAP_FROM)
    libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULTS[_M_MMAP_MAX])
    libc.malloc_trim(0)  # what the retained heap holds free now goes back first
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)


#: ``--memory-budget auto`` on a CPU, and the least it gives on a GPU
CPU_MEMORY_BUDGET = 4 * 1000**3
#: ``--memory-budget auto`` on a GPU: this share of the device's memory
GPU_MEMORY_BUDGET_SHARE = 0.3


def auto_memory_budget(device: str, *, gpu_total: int | None = None) -> int:
    """Bytes of ``--memory-budget auto`` on ``device``.

    On a CPU 4 GB (the counts share the host's memory with everything else). On a GPU
    30 % of the device's memory, at least 4 GB: each analysis's counts may take it, and
    the calibration batches kept beside them at most as much again, which leaves the
    rest to the model and its batches. On an 80-141 GB card that counts ViT-B/16's
    mutual information over all of ImageNet-val (16 GB) in one pass instead of five.
    Deterministic for a device type, so every process of a run and its resume plan
    the same passes. ``gpu_total``: the device's bytes (default: asked of CUDA).
    """
    if not device.startswith("cuda"):
        return CPU_MEMORY_BUDGET
    return max(CPU_MEMORY_BUDGET, int(GPU_MEMORY_BUDGET_SHARE * _gpu_total(device, gpu_total)))


def _gpu_total(device: str, gpu_total: int | None) -> int:
    if gpu_total is not None:
        return gpu_total
    import torch

    index = torch.device(device).index
    return _gpu_memory(torch.cuda.current_device() if index is None else index)


@functools.cache
def _gpu_memory(index: int) -> int:
    """Total memory of CUDA device ``index`` (read once: the accelerator path asks for
    every batch)."""
    import torch

    return torch.cuda.get_device_properties(index).total_memory


#: bytes of one step's temporaries on the accelerator path off a GPU, and the least on one
STEP_BYTES = 2 * 2**30
#: ... on a GPU: this share of the device's memory
DEVICE_STEP_SHARE = 0.05


def device_step_bytes(device: str, *, gpu_total: int | None = None) -> int:
    """Bytes that one step of an accumulator's accelerator path may take for temporaries
    (:meth:`vitprobe.record.Accumulator.items_per_step`).

    2 GiB off a GPU; on a GPU 5 % of the device's memory, at least 2 GiB (7 GB on a
    141 GB card: ViT-B/16's angle statistics at batch 128 in two steps of six layers).
    Beside the memory budget's 30 % for counts, this leaves most of the device to the
    model and its recorded batch. ``gpu_total``: the device's bytes (default: asked of
    CUDA).
    """
    if not device.startswith("cuda"):
        return STEP_BYTES
    return max(STEP_BYTES, int(DEVICE_STEP_SHARE * _gpu_total(device, gpu_total)))
