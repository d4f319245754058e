"""``manifest.json``: what a results folder holds and how it was made.

Written when a run starts (``status: running``) and again when it finishes
(``status: complete``), atomically both times. It records the model spec, the
weights source and a checksum of the weights, the image source, count, seed and a
hash of the image identities (the full list sits beside it in ``images.txt``),
skipped files, package versions, the command line and timings.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitprobe.cache import atomic_write
from vitprobe.errors import ResultsError

if TYPE_CHECKING:
    from vitprobe.study.runner import Study, StudyResult

FILENAME = "manifest.json"
#: what a run writes into its folder (and --force removes): nothing else is touched
OWNED = ("manifest.json", "images.txt", "results", "figures", "report.html", "checkpoint.npz")


def status(out: Path) -> str | None:
    path = Path(out) / FILENAME
    if not path.exists():
        return "running" if (Path(out) / "checkpoint.npz").exists() else None
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return "running"


def read(out: Path) -> dict[str, Any]:
    path = Path(out) / FILENAME
    if not path.exists():
        raise ResultsError(f"{out} is not a vitprobe results folder (no {FILENAME})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path} is not valid JSON: {err}") from err


def clear(out: Path) -> None:
    for name in OWNED:
        target = Path(out) / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("vitprobe", "torch", "timm", "transformers", "torchvision", "numpy",
                    "xarray"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def weights_checksum(model) -> str:
    """sha256 over the model's parameters and buffers (names, shapes, bytes), in order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _base(study: Study) -> dict[str, Any]:
    cfg = study.config
    ids = study.ids
    trained = study.models["trained"]
    return {
        "vitprobe_results": 1,
        "command": " ".join(sys.argv),
        "config": cfg.to_dict(),
        "fingerprint": cfg.fingerprint(),
        "model": {
            **{k: v for k, v in trained.describe().items() if k != "preprocess"},
            "preprocess": trained.preprocess.to_dict(),
            "weights_sha256": study.weights_sha256,
        },
        "control": cfg.control,
        "images": {
            "source": cfg.images,
            "description": study.source.description,
            "demo": cfg.is_demo,
            "n_selected": len(ids),
            "seed": cfg.seed,
            "ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
            "ids_file": "images.txt",
        },
        "world_size": study.world.size,
        "versions": versions(),
        "passes": [[list(g) for g in p] if isinstance(p, list | tuple) else str(p)
                   for p in study.passes],
    }


def write_running(out: Path, cfg, study: Study) -> None:
    out.mkdir(parents=True, exist_ok=True)
    manifest = _base(study) | {"status": "running",
                               "started": datetime.now(UTC).isoformat(timespec="seconds")}
    with atomic_write(out / "images.txt") as tmp:
        tmp.write_text("\n".join(study.ids) + "\n")
    _write(out, manifest)


def write_complete(out: Path, cfg, study: Study, result: StudyResult) -> None:
    previous = {}
    if (out / FILENAME).exists():
        previous = read(out)
    manifest = _base(study) | {
        "status": "complete",
        "started": previous.get("started"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_images_counted": result.n_images,
        "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
        "results": {name: str(path.relative_to(out)) for name, path in result.datasets.items()},
    }
    _write(out, manifest)


def _write(out: Path, manifest: dict[str, Any]) -> None:
    with atomic_write(out / FILENAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
