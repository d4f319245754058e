"""``manifest.json``: what a results folder holds and how it was made.

Written when a run starts (``status: running``), and again when it ends:
``complete``, ``interrupted`` (a signal; ``--resume`` continues) or ``failed`` (an
error, named under ``error``; ``--resume`` continues from the last checkpoint),
atomically each time. It records the model spec, the weights source and a checksum
of the weights, the image source, count, seed and a hash of the image identities
(the full list sits beside it in ``images.txt``), skipped files, package versions,
the command line and timings. The folder's layout is :mod:`vitprobe.runfolder`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitprobe.cache import atomic_write
from vitprobe.runfolder import IMAGES, MANIFEST, MANIFEST_KEY, read_manifest

if TYPE_CHECKING:
    from vitprobe.data import ImageSource
    from vitprobe.models import ProbedViT
    from vitprobe.study.config import StudyConfig


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("vitprobe", "torch", "timm", "transformers", "torchvision", "numpy",
                    "xarray"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def ids_sha256(ids: Sequence[str]) -> str:
    """Hash of the selected images' identities, in canonical order."""
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def weights_checksum(model: ProbedViT) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes), in order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def describe_run(config: StudyConfig, main: ProbedViT, source: ImageSource,
                 ids: Sequence[str], *, weights_sha256: str, world_size: int,
                 n_passes: int) -> dict[str, Any]:
    """The part of the manifest fixed when a run starts."""
    return {
        MANIFEST_KEY: 1,
        "command": " ".join(sys.argv),
        "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "model": {
            **{k: v for k, v in main.describe().items() if k != "preprocess"},
            "preprocess": main.preprocess.to_dict(),
            "weights_sha256": weights_sha256,
        },
        "control": config.control,
        "models": list(config.variants),
        "images": {
            "source": config.images,
            "description": source.description,
            "demo": config.is_demo,
            "n_selected": len(ids),
            "seed": config.seed,
            "order": "seeded random permutation of the selection (see vitprobe.study.plan)",
            "ids_sha256": ids_sha256(ids),
            "ids_file": IMAGES,
        },
        "world_size": world_size,
        "n_passes": n_passes,
        "versions": versions(),
    }


def write_running(out: Path, run: Mapping[str, Any], ids: Sequence[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / IMAGES) as tmp:
        tmp.write_text("\n".join(ids) + "\n")
    previous = _previous(out)
    _write(out, dict(run) | {"status": "running",
                             "started": previous.get("started") or _now()})


def write_ended(out: Path, run: Mapping[str, Any], status: str, **facts: Any) -> None:
    """Record how the run ended: ``complete``, ``interrupted`` or ``failed`` (+ facts)."""
    previous = _previous(out)
    _write(out, dict(run) | {"status": status, "started": previous.get("started"),
                             "ended": _now()} | facts)


def add_timings(out: Path, **timings: float) -> None:
    """Add timings measured after the run ended (the report) to its manifest."""
    current = read_manifest(out)
    current.setdefault("timings_s", {}).update({k: round(v, 3) for k, v in timings.items()})
    _write(Path(out), current)


def _previous(out: Path) -> dict[str, Any]:
    try:
        return read_manifest(out)
    except Exception:  # a missing or broken manifest is simply replaced
        return {}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write(out: Path, manifest: dict[str, Any]) -> None:
    with atomic_write(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
