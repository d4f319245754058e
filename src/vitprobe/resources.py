"""What the process may use: the CPU cores it may run on and, from them and the device,
the data loader's workers and pinned memory.
"""

from __future__ import annotations

import os

from vitprobe.errors import ConfigurationError

__all__ = ["available_cpus", "loader_settings"]

#: decoding processes on a CPU run: the forward needs the cores, and 2 workers already
#: load 15-21x faster than the CPU forward of ViT-S/16 (benchmarks/data_throughput.py)
CPU_WORKERS = 2
#: at most this many per GPU process: beyond it, workers cost memory and start-up time
MAX_GPU_WORKERS = 32


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where
    the platform has none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


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
