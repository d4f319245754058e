"""Images for vitprobe: sources, deterministic subsets and shards, robust decoding,
the model's preprocessing, and a DataLoader with a complete skip report.

    >>> from vitprobe.data import open_images, make_loader
    >>> source = open_images("path/to/val", n_images=1000, seed=0).shard(rank, world)
    >>> loader = make_loader(source, preprocess_config, batch_size=32, workers=4)
    >>> for batch in loader: ...          # pixels (B, 3, H, W), ids, meta
    >>> print(loader.report())            # every skipped file, with its reason

Spec strings (``open_images(spec, n_images=None, seed=0, **options)``; options follow
``?`` as ``key=value&key=value`` or come as keyword arguments, which win; an unknown
option is an error):

=====================================  =============================================
spec                                   options
=====================================  =============================================
``path/to/folder`` (recursive)         ``max_pixels``
``list.txt`` / ``list.lst``            ``root`` (base of relative paths), ``max_pixels``
``a.tar``, folder of ``.tar``,         ``image_key`` (e.g. ``seg.png``), ``max_pixels``
``s-{000..009}.tar``, ``s-*.tar``
``hf:<name>[:<split>]``                ``streaming``, ``image_column``, ``config``,
                                       ``revision``, ``cache_dir``, ``max_pixels``
``demo``                               ``crops`` (8), ``photos``, ``min_frac`` (0.5),
                                       ``gen_seed``
``stimuli:gratings``                   ``orientations`` (12), ``cpi`` (4,8,16,32),
                                       ``phases`` (4), ``contrast`` (1), ``n``
``stimuli:noise`` / ``stimuli:pink``   ``n`` (64), ``contrast`` (0.15), ``color``,
                                       ``exponent`` (pink: 1)
``stimuli:odd-one-out``                ``n`` (64), ``feature`` (orientation|colour),
                                       ``cell`` (1), ``delta``, ``cycles`` (3)
all stimuli                            ``size`` (model input), ``patch`` (model
                                       patch), ``gen_seed`` (0)
=====================================  =============================================

Details live in the module docstrings: ``spec`` (grammar), ``folder``, ``tar``,
``hf`` (incl. determinism when streaming), ``demo``, ``stimulus_source``, ``decode``
(bad files), ``transforms`` (preprocessing), ``loader`` (skip reports).

Identity: ``source.ids`` are folder-relative paths (``n01440764/x.JPEG``), list
entries as written, ``<shard>.tar/<key>``, ``hf:<name>:<split>:<row>``,
``demo:<photo>:crop(y,x,h,w)``, ``stimuli:<kind>:<index>``.

``import vitprobe.data`` does not import torch; ``make_loader`` / ``ImageLoader`` /
``SkippedImage`` / ``transforms`` are imported on first use.
"""

from __future__ import annotations

from typing import Any

from vitprobe.data.catalog import Catalog, ImageSource, Sample
from vitprobe.data.decode import DecodeError, decode_image
from vitprobe.data.sources import open_images

SPEC_HELP = """\
image source: a folder (flat or class subfolders), a .txt list of paths, a .tar
shard / folder of shards / pattern like shards-{000..009}.tar, hf:<name>[:<split>]
(Hugging Face dataset: hub name or local folder; ?streaming=1), demo (built-in photos,
not ImageNet; ?crops=8), or stimuli:gratings|noise|pink|odd-one-out (?n=64&...).
Options follow '?' as key=value&key=value."""

__all__ = [
    "SPEC_HELP",
    "Catalog",
    "DecodeError",
    "ImageLoader",
    "ImageSource",
    "Sample",
    "SkippedImage",
    "decode_image",
    "make_loader",
    "open_images",
    "stimuli",
    "transforms",
]


def __getattr__(name: str) -> Any:
    # torch is imported only when loading is actually needed
    if name in ("make_loader", "ImageLoader", "SkippedImage"):
        from vitprobe.data import loader

        return getattr(loader, name)
    if name in ("transforms", "stimuli"):
        import importlib

        return importlib.import_module(f"vitprobe.data.{name}")
    raise AttributeError(f"module 'vitprobe.data' has no attribute {name!r}")
