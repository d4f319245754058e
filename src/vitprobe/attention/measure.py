"""High-level runs: one model over an image source, and trained against random init.

``measure_angles`` streams an image source through a model twice: a calibration pass
that records only the embeddings (the dataset mean token of each layer, for the centred
variant), then the measuring pass that records embeddings, logits and attention and
feeds :class:`~vitprobe.attention.AngleAccumulator`. ``compare_angles`` does this for a
trained model and a random-init control of the same architecture and puts the query-key
weight measures of :func:`vitprobe.weights.analyze_qk` next to the angle summaries
(the poster links dissimilarity to M_asym outweighing M_sym; Philip, Pan & Schwartz).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import xarray as xr

from vitprobe.attention.angles import VARIANTS, AngleAccumulator
from vitprobe.attention.result import attach_qk
from vitprobe.schema import RANDOM_INIT, TRAINED, stack_models

__all__ = ["compare_angles", "measure_angles"]

#: attrs of one model's run that say nothing about the stacked file (spec and source
#: become coordinates along ``model``)
_ONE_MODEL_ATTRS = ("pretrained", "image_report")


def _bar(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterator:
    if not enabled:
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True))


def measure_angles(
    model: Any,
    images: Any,
    *,
    n_images: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    workers: int = 0,
    calibration_images: int | None = None,
    embedding: str = "ln1",
    include_prefix: bool = False,
    bins: int = 90,
    variants: Sequence[str] = VARIANTS,
    layers: Iterable[int] | None = None,
    precision: str = "float32",
    progress: bool = False,
) -> xr.Dataset:
    """Angle/attention statistics of ``model`` over ``images``.

    Args:
        model: a ``ProbedViT`` (runs on its device) or a spec for
            :func:`vitprobe.load_model`.
        images: an image source spec (``demo``, ``stimuli:gratings``, a folder, ...) or a
            ``vitprobe.data.ImageSource``.
        n_images, seed: the deterministic subset of the source (``None``: all).
        batch_size, workers: of the image loader.
        calibration_images: images of the calibration pass (a seeded random sample
            of the subset); default all of them. Unused without the centred variant.
        embedding, include_prefix, bins, variants, layers, precision: as
            :class:`AngleAccumulator`.
        progress: show progress bars.

    Returns:
        The accumulator's Dataset (see :mod:`vitprobe.attention.result`), with attrs
        ``model_spec``, ``model_source``, ``pretrained``, ``images``,
        ``calibration_images`` and ``n_skipped``.
    """
    from vitprobe.data import ImageSource, make_loader, open_images
    from vitprobe.models import ProbedViT, load_model

    if not isinstance(model, ProbedViT):
        model = load_model(model)
    source = images if isinstance(images, ImageSource) else open_images(
        images, n_images=n_images, seed=seed)
    if isinstance(images, ImageSource) and n_images is not None:
        source = source.subset(n_images, seed)
    acc = AngleAccumulator.from_model(model, bins=bins, embedding=embedding,
                                      include_prefix=include_prefix, variants=variants,
                                      layers=layers, precision=precision)

    def loader(src):
        return make_loader(src, model.preprocess, batch_size=batch_size, workers=workers,
                           patch_size=model.patch_size)

    n_calib = 0
    if acc.needs_calibration:
        k = len(source) if calibration_images is None else min(calibration_images, len(source))
        # a random sample, not the first k: a source lists one class at a time
        calib = loader(source.take(source.processing_order(seed)[:k],
                                   f"{k} random images for calibration"))
        for batch, cache in _bar(model.stream(calib, acc.calibration_sites), len(calib),
                                 "calibration", progress):
            acc.calibrate(cache)
            n_calib += len(batch["ids"])
        acc.end_calibration()
    main = loader(source)
    for _, cache in _bar(model.stream(main, acc.sites), len(main), "angles", progress):
        acc.update(cache)
    ds = acc.result()
    ds.attrs.update({
        "model_spec": str(model.spec),
        "model_source": str(model.source),
        "pretrained": int(bool(model.pretrained)),
        "images": source.description,
        "calibration_images": n_calib,
        "n_skipped": len(main.skipped),
        "image_report": main.report(),
    })
    return ds


def _stack_models(parts: dict[str, xr.Dataset]) -> xr.Dataset:
    """Per-model Datasets along ``model`` (:func:`vitprobe.schema.stack_models`), without
    the per-run attrs that only describe one of them."""
    ds = stack_models(parts)
    for k in _ONE_MODEL_ATTRS:
        ds.attrs.pop(k, None)
    return ds


def compare_angles(
    model: Any,
    images: Any,
    *,
    control: Any | None = None,
    qk: bool | xr.Dataset = True,
    log: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> xr.Dataset:
    """:func:`measure_angles` for ``model`` and a random-init ``control``, side by side.

    Args:
        model: the ``ProbedViT`` to study (normally trained).
        images: image source spec or ``ImageSource`` (the same images for both models).
        control: a ``ProbedViT`` of the same architecture with random weights (e.g.
            ``load_model(spec, pretrained=False)``), or None for no control.
        qk: attach the per-layer query-key weight measures: True computes them with
            :func:`vitprobe.weights.analyze_qk` (LayerNorm folded when the embedding is
            ``resid_pre``, since ln1 outputs already carry its weight), an ``analyze_qk``
            Dataset is used as given, False skips them.
        log: called with each model's image report (skipped files).
        **kwargs: passed to :func:`measure_angles`.

    Returns:
        A Dataset with a ``model`` dim (``trained``/``random-init``; coords
        ``model_spec``, ``model_source``) and ``qk_*`` variables when ``qk``.
    """
    first = TRAINED if getattr(model, "pretrained", True) else RANDOM_INIT
    models = {first: model}
    if control is not None:
        models[RANDOM_INIT if first == TRAINED else "control"] = control
    parts = {}
    for label, m in models.items():
        parts[label] = measure_angles(m, images, **kwargs)
        if log is not None:
            log(f"[{label}] {parts[label].attrs['image_report']}")
    ds = _stack_models(parts)
    if qk is not False:
        if isinstance(qk, xr.Dataset):
            qk_ds = qk
        else:
            from vitprobe.weights import analyze_qk

            labels = list(models)
            qk_ds = analyze_qk(model, baseline=control, label=labels[0],
                               baseline_label=labels[-1],
                               fold_ln=kwargs.get("embedding", "ln1") == "resid_pre")
        ds = attach_qk(ds, qk_ds)
    return ds
