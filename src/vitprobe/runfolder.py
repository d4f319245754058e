"""The run folder: what ``vitprobe run`` writes, and the rules for touching it.

A run folder (``--out``) holds::

    manifest.json    what the folder holds and how it was made (status, settings, timings)
    images.txt       the identities of the selected images, one per line
    results/*.nc     one netCDF file per result (see vitprobe.schema)
    figures/*.png    the report's figures (``*.pdf`` too when asked)
    report.html      the report
    checkpoint.npz   while a run is unfinished: what it needs to resume
    .vitprobe.lock   held (flock) by the one process writing the folder

Study and report both use this module; it imports neither. Nothing outside
:data:`OWNED` is ever written or deleted, and owned names are deleted (``--force``)
only where ``manifest.json`` says the folder holds a vitprobe run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitprobe.cache import remove_orphan_temporaries
from vitprobe.errors import ResultsError, RunFolderError

__all__ = ["CHECKPOINT", "FIGURES_DIR", "IMAGES", "LOCK", "MANIFEST", "OWNED", "REPORT",
           "RESULTS_DIR", "check_writable", "clear_run", "holds_run", "is_locked", "lock",
           "read_manifest", "remove_stale_temporaries", "status"]

MANIFEST = "manifest.json"
IMAGES = "images.txt"
RESULTS_DIR = "results"
FIGURES_DIR = "figures"
REPORT = "report.html"
CHECKPOINT = "checkpoint.npz"
LOCK = ".vitprobe.lock"
#: every name a run writes; --force removes these and nothing else
OWNED = (MANIFEST, IMAGES, RESULTS_DIR, FIGURES_DIR, REPORT, CHECKPOINT)
#: the key that marks a manifest as vitprobe's
MANIFEST_KEY = "vitprobe_results"

#: descriptors of the run-folder locks this process holds (see :func:`lock`)
_HELD_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (loader workers), close the parent's lock descriptors: a flock
    belongs to the open file, so a child that kept the descriptor would keep the folder
    locked after its parent was killed, until the child noticed and exited."""
    for fd in _HELD_LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCK_FDS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``manifest.json``.

    Raises:
        ResultsError: no manifest, or it is not vitprobe's valid JSON.
    """
    path = Path(out) / MANIFEST
    if not path.exists():
        # the folder a run writes its netCDF files to, given for the run folder above it
        above = Path(out).resolve().parent
        hint = f"; the run folder is {above}" if (above / MANIFEST).exists() else ""
        raise ResultsError(f"{out} is not a vitprobe results folder (no {MANIFEST}){hint}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or MANIFEST_KEY not in manifest:
        raise ResultsError(f"{path} was not written by vitprobe")
    return manifest


def holds_run(out: str | os.PathLike) -> bool:
    """Whether ``manifest.json`` says the folder holds a vitprobe run (any status)."""
    try:
        read_manifest(out)
    except ResultsError:
        return False
    return True


def status(out: str | os.PathLike, *, holding_lock: bool = False) -> str | None:
    """How the folder's run stands, or None when it holds no run.

    ``"running"`` (a process holds the folder's lock), ``"stopped"`` (the manifest says
    running but no process holds the lock: it was killed, or could not record how it
    ended, e.g. on a full disk), ``"interrupted"`` (a signal), ``"failed"`` (an error),
    ``"complete"``. A folder with a checkpoint but an unreadable manifest counts as
    ``"stopped"``: resuming it is the safe reading.

    ``holding_lock``: the caller holds the folder's lock (:func:`lock`), as a run does
    when it checks the folder it is about to write; its own lock would otherwise make a
    killed run's folder read as running.
    """
    try:
        state = str(read_manifest(out).get("status", "running"))
    except ResultsError:
        return "stopped" if (Path(out) / CHECKPOINT).exists() else None
    if state == "running" and (holding_lock or not is_locked(out)):
        return "stopped"
    return state


def is_locked(out: str | os.PathLike) -> bool:
    """Whether a process holds the folder's lock (see :func:`lock`)."""
    import fcntl

    path = Path(out) / LOCK
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock just taken
    return False


def foreign_names(out: str | os.PathLike) -> list[str]:
    """Owned names present in a folder that holds no vitprobe run (somebody else's)."""
    out = Path(out)
    if not out.is_dir() or holds_run(out):
        return []
    return [name for name in OWNED if (out / name).exists()]


def clear_run(out: str | os.PathLike) -> list[str]:
    """Delete what a previous run wrote (the :data:`OWNED` names) and return them.

    Raises:
        RunFolderError: the folder holds files under owned names but no vitprobe
            manifest: they are not a run's, so nothing is deleted.
    """
    out = Path(out)
    foreign = foreign_names(out)
    if foreign:
        raise RunFolderError(
            f"{out} holds {', '.join(foreign)} but no vitprobe {MANIFEST}: not a vitprobe run, "
            "so --force deletes nothing there; choose another --out")
    removed = []
    for name in OWNED:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            continue
        removed.append(name)
    return removed


def check_writable(out: str | os.PathLike) -> Path:
    """Make sure ``out`` is (or can become) a writable folder; return it.

    Raises:
        RunFolderError: ``out`` is a file, or the folder cannot be created or written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the results folder {out}: {err.strerror}") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunFolderError(f"the results folder {out} is not writable")
    return out


def remove_stale_temporaries(out: str | os.PathLike) -> list[Path]:
    """Delete temporary files that killed writers left in the folder, ``results/`` and
    ``figures/`` (see :func:`vitprobe.cache.remove_orphan_temporaries`)."""
    out = Path(out)
    return [path for folder in (out, out / RESULTS_DIR, out / FIGURES_DIR) if folder.is_dir()
            for path in remove_orphan_temporaries(folder)]


@contextlib.contextmanager
def lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on the run folder for the duration of the block.

    An advisory ``flock`` on ``DIR/.vitprobe.lock``: the kernel drops it when the
    process ends however it ends (kill -9 included), so a stale lock never blocks a
    later run. Forked children (the image loader's workers) close their copy of the
    descriptor at once, so they never hold the lock past their parent. The file records
    who holds it, for the message a second run gets.

    Raises:
        RunFolderError: another process holds the folder.
    """
    import fcntl

    out = check_writable(out)
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunFolderError(
                f"{out} is in use by another vitprobe run ({holder}); wait for it to finish "
                "or choose another --out") from None
        _HELD_LOCK_FDS.add(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield path
    finally:
        _HELD_LOCK_FDS.discard(fd)
        os.close(fd)  # releases the flock
