"""Helpers shared by the report tests."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_run(run: Path, folder: Path) -> Path:
    """A run folder with its own manifest and symlinks to the original results (copying
    hundreds of MB of results per test would dominate its time)."""
    (folder / "results").mkdir(parents=True)
    for name in ("manifest.json", "images.txt"):
        shutil.copy(run / name, folder / name)
    for file in (run / "results").glob("*.nc"):
        (folder / "results" / file.name).symlink_to(file)
    return folder
