"""Checkpoints: every accumulator's state plus which images are done, in one file.

The file (``DIR/checkpoint.npz``) is written to a temporary name and renamed, so a
crash or a full disk mid-write leaves the previous checkpoint intact. It holds the
*merged* state of all ranks and the chunks whose images are counted, never which
rank counted them, so a run may resume with a different number of processes.

Layout of the npz:

* ``state/<key>/<name>``: the accumulators' states. ``key`` is
  ``p<pass>/<model>/<analysis>/<file>`` (pass from 0): the finished passes' final
  states and the current pass's counts so far.
* ``calibration/<key>/<name>``: the current pass's states right after calibration
  (empty counts): the starting point of every rank when resuming. Most of it is either
  the same bytes as the counted state (edges, means) or zeros (counts), so large arrays
  of those two kinds are not stored twice: ``layout`` lists them.
* ``layout``: JSON (utf-8 bytes): ``{"same": [calibration array names equal, byte for
  byte, to the same array of the current pass's state], "zeros": {name: [shape, dtype]}}``.
* ``progress``: JSON (utf-8 bytes) with the fields of :class:`Progress`.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitprobe.cache import atomic_write
from vitprobe.errors import ResultsError
from vitprobe.runfolder import CHECKPOINT

FORMAT = 3
#: formats this version reads (2 stored every calibration array in full)
READABLE_FORMATS = (2, 3)
#: calibration arrays from this size on are checked for being a copy or zeros
_DEDUPE_BYTES = 1 << 16

States = dict[str, dict[str, np.ndarray]]


@dataclass
class Progress:
    """Where a run stands.

    Attributes:
        fingerprint: :meth:`StudyConfig.fingerprint` of the run's settings.
        ids_sha256: hash of the selected images' identities (canonical order).
        pass_index: the pass being counted (0-based).
        n_passes: passes of the run.
        calibrated: whether the current pass's calibration is done (its states are
            under ``calibration/``).
        done_chunks: chunks of the current pass whose images are counted.
        skipped: ``[id, reason]`` of images skipped so far.
        elapsed_s: run time before this checkpoint, over all sessions.
    """

    fingerprint: str
    ids_sha256: str
    pass_index: int = 0
    n_passes: int = 1
    calibrated: bool = False
    done_chunks: list[int] = field(default_factory=list)
    skipped: list[list[str]] = field(default_factory=list)
    elapsed_s: float = 0.0
    format: int = FORMAT


@dataclass
class Checkpoint:
    states: States
    calibration: States
    progress: Progress


def state_key(pass_index: int, variant: str, analysis: str, file: str) -> str:
    return f"p{pass_index}/{variant}/{analysis}/{file}"


def parse_state_key(key: str) -> tuple[int, str, str, str]:
    p, variant, analysis, file = key.split("/")
    return int(p[1:]), variant, analysis, file


def _flatten(prefix: str, states: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{key}/{name}": np.asarray(value)
            for key, state in states.items() for name, value in state.items()}


def save(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint atomically; the previous one stays if writing fails."""
    path = Path(directory) / CHECKPOINT
    arrays = _flatten("state", checkpoint.states)
    calibration, layout = _calibration_arrays(checkpoint)
    arrays |= calibration
    arrays["layout"] = _json_bytes(layout)
    arrays["progress"] = _json_bytes(asdict(checkpoint.progress))
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value).encode(), dtype=np.uint8)


def _bytes_of(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def _calibration_arrays(checkpoint: Checkpoint) -> tuple[dict[str, np.ndarray], dict]:
    """The calibration arrays to store and the layout of those left out (byte-for-byte
    copies of the current pass's counted state, and all-zero arrays)."""
    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, Any] = {"same": [], "zeros": {}}
    current = checkpoint.progress.pass_index
    for key, state in checkpoint.calibration.items():
        counted = checkpoint.states.get(state_key(current, *key.split("/")), {})
        for name, value in state.items():
            value = np.asarray(value)
            full = f"{key}/{name}"
            if value.nbytes >= _DEDUPE_BYTES and value.dtype != object:
                raw = _bytes_of(value)
                twin = counted.get(name)
                if (twin is not None and twin.dtype == value.dtype
                        and twin.shape == value.shape
                        and np.array_equal(_bytes_of(twin), raw)):
                    layout["same"].append(full)
                    continue
                if not raw.any():
                    layout["zeros"][full] = [list(value.shape), value.dtype.str]
                    continue
            arrays[f"calibration/{full}"] = value
    return arrays, layout


def load(directory: Path) -> Checkpoint:
    """Read ``DIR/checkpoint.npz``.

    Raises:
        ResultsError: missing, unreadable or from another vitprobe version.
    """
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        raise ResultsError(f"no checkpoint to resume from: {path} does not exist")
    states: States = {}
    calibration: States = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            raw: dict[str, Any] = json.loads(bytes(data["progress"]).decode())
            if raw.get("format") not in READABLE_FORMATS:
                raise ValueError(f"format {raw.get('format')} (this vitprobe reads "
                                 f"{', '.join(map(str, READABLE_FORMATS))})")
            layout: dict[str, Any] = ({"same": [], "zeros": {}} if "layout" not in data.files
                                      else json.loads(bytes(data["layout"]).decode()))
            for name in data.files:
                if name in ("progress", "layout"):
                    continue
                section, rest = name.split("/", 1)
                key, array_name = rest.rsplit("/", 1)
                target = states if section == "state" else calibration
                target.setdefault(key, {})[array_name] = data[name]
        progress = Progress(**raw)
        for full in layout["same"]:
            key, array_name = full.rsplit("/", 1)
            twin = states[state_key(progress.pass_index, *key.split("/"))][array_name]
            calibration.setdefault(key, {})[array_name] = twin.copy()
        for full, (shape, dtype) in layout["zeros"].items():
            key, array_name = full.rsplit("/", 1)
            calibration.setdefault(key, {})[array_name] = np.zeros(shape, np.dtype(dtype))
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as err:
        raise ResultsError(
            f"the checkpoint {path} is unreadable ({err}); start over with --force") from err
    return Checkpoint(states, calibration, progress)
