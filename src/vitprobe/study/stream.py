"""Streaming recorded batches into accumulators: the one loop every analysis shares.

:class:`Streamer` runs each batch through every model with the sites its
accumulators read, drops images whose recorded activations hold NaN or inf
(skipped and reported with the first such site), tags each cache with the images'
positions in the selection (:data:`vitprobe.stats.joint.IMAGE_INDEX`: split halves
follow it, so they do not depend on how batches were spread over ranks), and hands
the cache to a callback per accumulator (``calibrate`` or ``update``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from vitprobe.record import Accumulator, Recorder, all_finite, nonfinite_rows
from vitprobe.stats.joint import IMAGE_INDEX

if TYPE_CHECKING:
    from vitprobe.models import ProbedViT

Consume = Callable[[Accumulator, dict[str, torch.Tensor]], None]


def autocast(device: str, dtype: str):
    """Autocast to ``dtype`` on ``device`` (no-op for float32)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


def variant_of(key: str) -> str:
    """The model variant of an accumulator key ``<variant>/<analysis>/<file>``."""
    return key.split("/", 1)[0]


class Streamer:
    """Feeds batches to the accumulators of every model.

    Args:
        models: variant -> model (main model first).
        index_of: image id -> its position in the selection.
        device, dtype: where and in which precision the models run.
        log: called with one line per skipped image.
    """

    def __init__(self, models: Mapping[str, ProbedViT], index_of: Mapping[str, int], *,
                 device: str, dtype: str, log: Callable[[str], None]) -> None:
        self.models = models
        self.index_of = index_of
        self.device = device
        self.dtype = dtype
        self.log = log
        self.skipped: list[tuple[str, str]] = []

    def _sites(self, accumulators: Mapping[str, Accumulator], variant: str) -> list[str]:
        sites = {s for key, acc in accumulators.items() if variant_of(key) == variant
                 for s in acc.sites}
        return sorted(sites)

    @contextlib.contextmanager
    def recording(self, accumulators: Mapping[str, Accumulator]) -> Iterator[dict[str, Recorder]]:
        """Recorders for the models whose accumulators read any site."""
        with contextlib.ExitStack() as stack:
            yield {v: stack.enter_context(Recorder(m, sites))
                   for v, m in self.models.items()
                   if (sites := self._sites(accumulators, v))}

    def run_batch(self, recorders: Mapping[str, Recorder],
                  accumulators: Mapping[str, Accumulator], batch: dict[str, Any],
                  consume: Consume) -> None:
        """Forward ``batch`` through each recorded model and consume its cache."""
        index = torch.as_tensor([self.index_of[i] for i in batch["ids"]], dtype=torch.int64)
        pixels = batch["pixels"]
        for variant, recorder in recorders.items():
            with torch.inference_mode(), autocast(self.device, self.dtype):
                self.models[variant].adapter.forward(pixels.to(self.device, non_blocking=True))
            cache, kept = self._drop_nonfinite(recorder.pop(), batch["ids"], variant)
            if cache is None:
                continue
            cache[IMAGE_INDEX] = index[kept]
            for key, acc in accumulators.items():
                if variant_of(key) == variant:
                    consume(acc, cache)
            del cache

    def _drop_nonfinite(self, cache: dict[str, torch.Tensor], ids: list[str], variant: str,
                        ) -> tuple[dict[str, torch.Tensor] | None, torch.Tensor]:
        """The cache without images whose activations hold NaN or inf, and the kept rows."""
        n = len(ids)
        # the common case decided with one wait for the device, not one per site
        if all_finite(t for t in cache.values() if t.is_floating_point()):
            return cache, torch.arange(n)
        bad = None
        first: dict[int, str] = {}
        for site, t in cache.items():
            if not t.is_floating_point():
                continue
            rows = nonfinite_rows(t)
            if rows is not None:
                for i in torch.nonzero(rows).flatten().tolist():
                    first.setdefault(i, site)
                bad = rows if bad is None else bad | rows
        if bad is None:
            return cache, torch.arange(n)
        for i, site in sorted(first.items()):
            self.skipped.append((str(ids[i]), f"non-finite activations (NaN or inf) at {site} "
                                              f"of the {variant} model"))
            self.log(f"skipping {ids[i]}: NaN or inf at {site} ({variant} model)")
        keep = torch.nonzero(~bad.cpu()).flatten()
        if keep.numel() == 0:
            return None, keep
        return {k: v.index_select(0, keep.to(v.device)) for k, v in cache.items()}, keep
