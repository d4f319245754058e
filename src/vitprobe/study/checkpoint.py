"""Checkpoints: every accumulator's state plus which images are done, in one file.

The file (``DIR/checkpoint.npz``) is written to a temporary name and renamed, so
a crash mid-write leaves the previous checkpoint intact. It holds the *merged*
state of all ranks and the ids of the images whose batches are counted, never
which rank did them, so a run may resume with a different number of processes.

Layout of the npz: ``state/<key>/<name>`` and ``calibration/<key>/<name>`` arrays
(``key`` = ``<model>/<accumulator>``), and ``progress`` (JSON, utf-8 bytes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitprobe.cache import atomic_write
from vitprobe.errors import ResultsError

FILENAME = "checkpoint.npz"


@dataclass
class Checkpoint:
    """What a study needs to continue: states, calibration and progress.

    Attributes:
        states: key -> accumulator ``state_dict()`` (merged over ranks).
        calibration: key -> ``state_dict()`` right after calibration (empty counts):
            the starting point of every rank when resuming.
        progress: JSON-able facts: ``done_ids`` (counted or skipped), ``skipped``
            (list of [path, reason]), ``n_images_counted``, ``config`` fingerprint,
            ``elapsed_s``.
    """

    states: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    calibration: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)


def _flatten(prefix: str, states: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{key}/{name}": np.asarray(value)
            for key, state in states.items() for name, value in state.items()}


def save(directory: Path, checkpoint: Checkpoint) -> Path:
    path = Path(directory) / FILENAME
    arrays = _flatten("state", checkpoint.states) | _flatten("calibration", checkpoint.calibration)
    arrays["progress"] = np.frombuffer(json.dumps(checkpoint.progress).encode(), dtype=np.uint8)
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def load(directory: Path) -> Checkpoint:
    path = Path(directory) / FILENAME
    if not path.exists():
        raise ResultsError(f"no checkpoint to resume from: {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            progress = json.loads(bytes(data["progress"]).decode())
            checkpoint = Checkpoint(progress=progress)
            for name in data.files:
                if name == "progress":
                    continue
                section, rest = name.split("/", 1)
                key, array_name = rest.rsplit("/", 1)
                target = checkpoint.states if section == "state" else checkpoint.calibration
                target.setdefault(key, {})[array_name] = data[name]
    except (OSError, ValueError, KeyError) as err:
        raise ResultsError(
            f"checkpoint {path} is unreadable ({err}); delete it to start over") from err
    return checkpoint
