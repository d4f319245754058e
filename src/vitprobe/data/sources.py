"""``open_images``: from a spec string to an :class:`~vitprobe.data.catalog.ImageSource`.

The catalogues (folder, list, tar, Hugging Face, demo, stimuli) each live in their
own module and build on :mod:`vitprobe.data.catalog`; this module only dispatches
on the spec, importing the catalogue it needs on first use. The classes are
re-exported here for older imports (``from vitprobe.data.sources import ImageSource``).
"""

from __future__ import annotations

import os
from typing import Any

from vitprobe.data.catalog import Catalog, ImageSource, ListedCatalog, Sample
from vitprobe.errors import ImageSourceError

__all__ = ["Catalog", "ImageSource", "ListedCatalog", "Sample", "open_images"]


def open_images(
    spec: str | os.PathLike,
    *,
    n_images: int | None = None,
    seed: int = 0,
    **options: Any,
) -> ImageSource:
    """Open an image source from a spec string and select ``n_images`` of it.

    Spec forms (see ``vitprobe.data.SPEC_HELP`` for every option):

    * ``path/to/folder`` - images, flat or in class subfolders (recursive);
    * ``list.txt`` - one path per line (relative to the list's folder), optional
      ``<TAB>label``; ``#`` comments;
    * ``shard.tar``, a folder of ``.tar`` shards, or ``shards-{000..009}.tar`` /
      ``shards-*.tar`` - WebDataset-style tar shards;
    * ``hf:<name>[:<split>]`` - a Hugging Face dataset: a local ``save_to_disk``
      folder, a local image folder, or a hub name (``?streaming=1`` for big ones);
    * ``demo`` - natural photos shipped in scikit-image/scikit-learn, random crops;
    * ``stimuli:gratings``, ``stimuli:noise``, ``stimuli:pink``, ``stimuli:odd-one-out``.

    Options come after ``?`` as ``key=value&key=value``, or as keyword arguments
    (which win).

    Args:
        spec: the spec string or a path.
        n_images: how many samples to select (``None``: all).
        seed: seed of the selection (``numpy.random.default_rng``).

    Raises:
        ImageSourceError: the source is missing, empty or malformed, an option is
            unknown, or ``seed`` is negative. Raised here, before any model work.
    """
    from vitprobe.data.spec import Options, parse_spec

    if int(seed) < 0:  # numpy's own error reads "expected non-negative integer"
        raise ImageSourceError(f"seed must be >= 0, got {seed}")
    parsed = parse_spec(os.fspath(spec), options)
    opts = Options(parsed.text, parsed.options)
    if parsed.scheme == "hf":
        from vitprobe.data.hf import open_hf

        return open_hf(parsed.target, opts, n_images=n_images, seed=seed)
    if parsed.scheme == "demo":
        from vitprobe.data.demo import DemoCatalog

        catalog: Catalog = DemoCatalog.from_options(opts)
    elif parsed.scheme == "stimuli":
        from vitprobe.data.stimulus_source import StimulusCatalog

        catalog = StimulusCatalog.from_options(parsed.target, opts)
    else:
        catalog = _open_path(parsed.target, opts)
    opts.finish(_PATH_OPTIONS.get(catalog.kind, ()))
    if len(catalog) == 0:
        raise ImageSourceError(f"{parsed.text}: no images")
    return ImageSource(catalog).subset(n_images, seed)


# options of the path-based sources (demo and stimuli check their own)
_PATH_OPTIONS = {
    "folder": ("max_pixels",),
    "list": ("max_pixels", "root"),
    "tar": ("max_pixels", "image_key"),
}


def _open_path(target: str, opts: Any) -> Catalog:
    from vitprobe.data.folder import FolderCatalog, ListCatalog, is_list_file
    from vitprobe.data.tar import TarCatalog, is_shard_pattern

    # reject unknown options before listing a large folder; each catalogue then takes
    # its own, and open_images' final check catches options of another path kind
    opts.check_known({name for names in _PATH_OPTIONS.values() for name in names})
    path = os.path.expanduser(target)
    if is_shard_pattern(path):
        return TarCatalog.from_pattern(path, opts)
    if not os.path.exists(path):
        raise ImageSourceError(f"image source not found: {path}")
    if os.path.isdir(path):
        folder = FolderCatalog.from_options(path, opts)
        if len(folder) == 0 and TarCatalog.dir_has_shards(path):
            return TarCatalog.from_pattern(path, opts)
        if len(folder) == 0:
            raise ImageSourceError(f"no images found in {path} ({folder.describe_empty()})")
        return folder
    if path.lower().endswith(".tar"):
        return TarCatalog.from_pattern(path, opts)
    if is_list_file(path):
        return ListCatalog.from_options(path, opts)
    raise ImageSourceError(
        f"{path}: not a folder, .txt/.lst list or .tar shard; for one image put it in a folder"
    )
