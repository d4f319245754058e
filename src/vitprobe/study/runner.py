"""The whole study in one call: calibration, streaming passes, checkpoints, results.

Work is cut into fixed *chunks* of ``batch_size`` consecutive images of the
seeded subset. A chunk is the unit of everything: it is one batch for the model,
it is counted all at once, and it is what checkpoints list as done. Chunks go to
ranks round-robin, so the batches (and any statistic that pairs images within a
batch) are the same for 1 process or many, and for an interrupted run or not.

A study has one or more *passes* over the images (the mutual-information counts
of a large model may not fit in memory at once: see :mod:`vitprobe.study.analyses`).
Per pass every rank accumulates locally; at a checkpoint and at the end all ranks'
states are gathered and merged on rank 0, which alone writes files.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitprobe.errors import ResultsError, VitprobeError
from vitprobe.record import Accumulator, Recorder
from vitprobe.stats._common import nonfinite_rows
from vitprobe.stats.joint import IMAGE_INDEX
from vitprobe.study import checkpoint as ckpt
from vitprobe.study import distributed as dist
from vitprobe.study.config import StudyConfig

EXIT_INTERRUPTED = 3
#: cache entry (internal) naming the rows of the batch kept after the non-finite check
_KEPT = "_kept_rows"
#: seconds between progress lines when stderr is not a terminal
LOG_EVERY_S = 60.0


class StudyInterrupted(VitprobeError):
    """The run stopped on a signal after writing a checkpoint; ``--resume`` continues it."""


@dataclass
class StudyResult:
    out: Path
    datasets: dict[str, Path] = field(default_factory=dict)
    report: Path | None = None
    n_images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class _Stop:
    """Turns SIGTERM/SIGINT into a flag checked between batches (a second SIGINT aborts)."""

    def __init__(self) -> None:
        self.requested = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def chunk_positions(n: int, batch_size: int) -> list[np.ndarray]:
    """Indices 0..n-1 cut into consecutive chunks of ``batch_size`` (the last may be short)."""
    return [np.arange(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _autocast(device: str, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))


class Study:
    """One run of the study. Use :func:`run_study`; this class keeps the state between phases."""

    def __init__(self, config: StudyConfig, *, progress: bool = True,
                 log=None) -> None:
        from vitprobe.data import open_images
        from vitprobe.models import load_model

        self.config = config
        self.world = dist.init(config.device)
        self.device = dist.device_for(self.world, config.device)
        self.progress = self.world.is_main and (progress == "always"
                                                or (bool(progress) and sys.stderr.isatty()))
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.timings: dict[str, float] = {}
        self.out = config.out
        self._check_out_dir()
        t0 = time.perf_counter()
        # image problems are reported before any model work starts
        self.source = open_images(config.images, n_images=config.n_images, seed=config.seed)
        self.models = {"trained": load_model(config.model, pretrained=config.pretrained,
                                             device=self.device, checkpoint=config.checkpoint,
                                             seed=config.seed)}
        if config.control == "random-init":
            self.models["random-init"] = load_model(config.model, pretrained=False,
                                                    device=self.device, seed=config.seed)
        self.timings["load_s"] = time.perf_counter() - t0
        reference = self.models["trained"]
        self.source = self.source.at_resolution(reference.preprocess.input_size,
                                                reference.patch_size)
        self.chunks = chunk_positions(len(self.source), config.batch_size)
        #: identity of every selected image, in subset order (listed once: it can be long)
        self.ids = self.source.ids
        self._index_of = {sample_id: i for i, sample_id in enumerate(self.ids)}
        from vitprobe.study.analyses import plan_passes

        self.passes = plan_passes(reference, config)
        self.done: set[int] = set()  # chunk indices counted in the current pass
        self.pass_index = 0
        self.skipped: list[tuple[str, str]] = []
        self.finished_states: dict[str, dict[str, np.ndarray]] = {}
        self.calibration: dict[str, dict[str, np.ndarray]] = {}
        self.accumulators: dict[str, Accumulator] = {}

    @cached_property
    def weights_sha256(self) -> str:
        """Checksum of the trained weights, for the manifest (hashed once per run)."""
        from vitprobe.study.manifest import weights_checksum

        return weights_checksum(self.models["trained"])

    # -- output folder rules ----------------------------------------------------------
    def _check_out_dir(self) -> None:
        from vitprobe.study import manifest

        if not self.world.is_main:
            return
        status = manifest.status(self.out)
        cfg = self.config
        if status == "complete" and not cfg.extra.get("force"):
            raise ResultsError(f"{self.out} holds a finished run; pass --force to overwrite it "
                               "or choose another --out")
        if status == "running" and not (cfg.extra.get("resume") or cfg.extra.get("force")):
            raise ResultsError(f"{self.out} holds an unfinished run; pass --resume to continue "
                               "it or --force to start over")
        if cfg.extra.get("force") and not cfg.extra.get("resume"):
            manifest.clear(self.out)

    # -- accumulators -------------------------------------------------------------------
    def _build(self, pass_index: int) -> dict[str, Accumulator]:
        from vitprobe.study.analyses import build_accumulators

        accs = {}
        for variant, model in self.models.items():
            for name, acc in build_accumulators(model, self.config, self.passes,
                                                pass_index).items():
                accs[f"{variant}/{name}"] = acc
        return accs

    def _sites(self, variant: str) -> list[str]:
        sites: list[str] = []
        for key, acc in self.accumulators.items():
            if key.startswith(variant + "/"):
                sites.extend(acc.sites)
        return sorted(set(sites))

    @contextlib.contextmanager
    def _recorders(self) -> Iterator[dict[str, Recorder]]:
        with contextlib.ExitStack() as stack:
            yield {v: stack.enter_context(Recorder(m, self._sites(v)))
                   for v, m in self.models.items() if self._sites(v)}

    def _run_batch(self, recorders: dict[str, Recorder], batch: dict, consume) -> None:
        # each image's position in the seeded subset: statistics that split images into
        # halves use it, so the halves do not depend on how batches were spread over ranks
        index = torch.as_tensor([self._index_of[i] for i in batch["ids"]], dtype=torch.int64)
        pixels = batch["pixels"]
        for variant, recorder in recorders.items():
            model = self.models[variant]
            with torch.inference_mode(), _autocast(self.device, self.config.dtype):
                model.adapter.forward(pixels.to(self.device, non_blocking=True))
            cache = self._drop_nonfinite(recorder.pop(), batch["ids"], variant)
            if cache is None:
                continue
            cache[IMAGE_INDEX] = index[cache.pop(_KEPT)]
            for key, acc in self.accumulators.items():
                if key.startswith(variant + "/"):
                    consume(acc, cache)
            del cache

    def _drop_nonfinite(self, cache: dict[str, torch.Tensor], ids: list[str],
                        variant: str) -> dict[str, torch.Tensor] | None:
        """The cache without images whose recorded activations hold NaN or inf (each is
        skipped and reported with the first such site); None when no image is left.
        Entry ``_KEPT`` holds the kept images' rows of the batch."""
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
        n = len(ids)
        if bad is None:
            cache[_KEPT] = torch.arange(n)
            return cache
        for i, site in sorted(first.items()):
            self.skipped.append((str(ids[i]), f"non-finite activations (NaN or inf) at {site} "
                                              f"of the {variant} model"))
            self.log(f"skipping {ids[i]}: NaN or inf at {site} ({variant} model)")
        keep = torch.nonzero(~bad.cpu()).flatten()
        if keep.numel() == 0:
            return None
        out = {k: v.index_select(0, keep.to(v.device)) for k, v in cache.items()}
        out[_KEPT] = keep
        return out

    def _loader(self, chunk_ids: list[int]):
        from vitprobe.data import make_loader

        positions = (np.concatenate([self.chunks[i] for i in chunk_ids]) if chunk_ids
                     else np.zeros(0, dtype=np.int64))
        sub = self.source.take(positions, f"{len(chunk_ids)} of {len(self.chunks)} batches")
        model = self.models["trained"]
        return make_loader(sub, model.preprocess, batch_size=self.config.batch_size,
                           workers=self.config.workers, patch_size=model.patch_size)

    # -- calibration ----------------------------------------------------------------------
    def _calibrate(self) -> None:
        needs = {k: a for k, a in self.accumulators.items() if a.needs_calibration}
        if needs and self.world.is_main:
            t0 = time.perf_counter()
            n_chunks = max(1, -(-self.config.calibration_images // self.config.batch_size))
            chunk_ids = list(range(min(n_chunks, len(self.chunks))))
            loader = self._loader(chunk_ids)
            with self._recorders() as recorders:
                for batch in self._bar(loader, len(loader), "calibration", unit="batch"):
                    self._run_batch(recorders, batch,
                                    lambda acc, cache: acc.calibrate(cache)
                                    if acc.needs_calibration else None)
            for acc in needs.values():
                acc.end_calibration()
            self.timings["calibration_s"] = self.timings.get("calibration_s", 0) + (
                time.perf_counter() - t0)
        states = {k: a.state_dict() for k, a in needs.items()} if self.world.is_main else None
        states = dist.broadcast_from_main(self.world, states)
        for key, state in states.items():
            if not self.world.is_main:
                self.accumulators[key].load_state_dict(state)
            self.calibration[key] = state

    # -- checkpoints ----------------------------------------------------------------------
    def _merged_states(self) -> tuple[dict[str, dict[str, np.ndarray]] | None, list, list]:
        """Gather every rank's states, done chunks and skips; merge on rank 0."""
        mine = ({k: a.state_dict() for k, a in self.accumulators.items()},
                sorted(self.done), self.skipped)
        gathered = dist.gather_to_main(self.world, mine)
        if gathered is None:
            return None, [], []
        if len(gathered) == 1:
            return gathered[0]
        merged = self._build(self.pass_index)
        for key, acc in merged.items():
            acc.load_state_dict(gathered[0][0][key])
        for states, _, _ in gathered[1:]:
            others = self._build(self.pass_index)
            for key, acc in merged.items():
                others[key].load_state_dict(states[key])
                acc.merge(others[key])
        done = sorted({c for _, d, _ in gathered for c in d})
        skipped = [s for _, _, sk in gathered for s in sk]
        return {k: a.state_dict() for k, a in merged.items()}, done, skipped

    def _checkpoint(self, elapsed: float) -> None:
        states, done, skipped = self._merged_states()
        if not self.world.is_main:
            return
        progress = {
            "fingerprint": self.config.fingerprint(),
            "pass": self.pass_index,
            "n_passes": len(self.passes),
            "done_chunks": done,
            "skipped": [list(s) for s in _unique(skipped)],
            "n_chunks": len(self.chunks),
            "elapsed_s": elapsed,
        }
        all_states = dict(self.finished_states) | states
        ckpt.save(self.out, ckpt.Checkpoint(states=all_states, calibration=self.calibration,
                                            progress=progress))

    def _restore(self) -> None:
        saved = ckpt.load(self.out)
        progress = saved.progress
        if progress.get("fingerprint") != self.config.fingerprint():
            raise ResultsError(
                f"the checkpoint in {self.out} belongs to a run with other settings (model, "
                "images, n_images, seed, analyses, control, batch size or memory budget); "
                "resume with the same options or pass --force to start over")
        self.pass_index = int(progress["pass"])
        self.skipped = [tuple(s) for s in progress.get("skipped", [])]
        self.calibration = saved.calibration
        current = set(self._build(self.pass_index))
        self.finished_states = {k: v for k, v in saved.states.items() if k not in current}
        self.accumulators = self._build(self.pass_index)
        for key, acc in self.accumulators.items():
            if key in saved.calibration:
                acc.load_state_dict(saved.calibration[key])
            if self.world.is_main and key in saved.states:
                acc.load_state_dict(saved.states[key])
        # every rank knows which chunks are done; only rank 0 holds their counts
        self.resumed_done = set(progress["done_chunks"])
        self.resumed_elapsed = float(progress.get("elapsed_s", 0.0))

    # -- main loop ----------------------------------------------------------------------------
    def _bar(self, iterable, total, desc, unit="img"):
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def _stream_pass(self, stop: _Stop, already_done: set[int], elapsed0: float) -> None:
        world, cfg = self.world, self.config
        remaining = [i for i in range(len(self.chunks)) if i not in already_done]
        mine = remaining[world.rank::world.size]
        # rank 0 holds the counts of chunks done before a resume; it also lists them
        self.done = set(already_done) if world.is_main else set()
        loader = self._loader(mine)
        n_remaining = sum(len(self.chunks[i]) for i in remaining)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            label = f"pass {self.pass_index + 1}/{len(self.passes)}"
            bar = tqdm(total=n_remaining, desc=label, unit="img", dynamic_ncols=True,
                       postfix={"procs": world.size})
        t0 = time.perf_counter()
        last_checkpoint = last_log = t0
        counted = 0
        # a batch is one chunk (skips only shrink it; a chunk skipped whole yields no batch)
        chunk_of = np.repeat(np.asarray(mine, dtype=np.int64),
                             [len(self.chunks[i]) for i in mine])
        id_chunk = dict(zip(loader.source.ids, chunk_of.tolist(), strict=True))
        pending = list(mine)
        batches = iter(loader)
        with self._recorders() as recorders:
            while True:
                batch = next(batches, None)
                n = 0
                if batch is not None:
                    self._run_batch(recorders, batch, lambda acc, cache: acc.update(cache))
                    n = len(batch["ids"])
                    last = id_chunk[batch["ids"][-1]]
                    while pending and pending[0] <= last:
                        self.done.add(pending.pop(0))
                else:
                    self.done.update(pending)
                    pending = []
                now = time.perf_counter()
                due = int(now - last_checkpoint >= cfg.checkpoint_every_s)
                stop_flag, active, due, images = dist.all_reduce_sum(
                    world, [int(bool(stop.requested)), int(batch is not None), due, n])
                counted += images
                if bar is not None:
                    bar.update(images)
                elif world.is_main and images and now - last_log >= LOG_EVERY_S:
                    # no terminal (batch jobs): a plain progress line now and then
                    last_log = now
                    rate = counted / max(now - t0, 1e-9)
                    eta = (n_remaining - counted) / max(rate, 1e-9)
                    self.log(f"pass {self.pass_index + 1}/{len(self.passes)}: {counted}/"
                             f"{n_remaining} images, {rate:.1f} images/s over {world.size} "
                             f"process(es), about {eta / 60:.1f} min left")
                if stop_flag or due:
                    self.skipped = _unique(self.skipped + _skips(loader))
                    self._checkpoint(elapsed0 + now - t0)
                    last_checkpoint = time.perf_counter()
                if stop_flag:
                    if bar is not None:
                        bar.close()
                    raise StudyInterrupted(
                        f"stopped by signal; checkpoint written to {self.out}. "
                        "Continue with the same command plus --resume")
                if not active:
                    break
        if bar is not None:
            bar.close()
        self.skipped = _unique(self.skipped + _skips(loader))
        self.timings[f"pass{self.pass_index + 1}_s"] = time.perf_counter() - t0

    def run(self) -> StudyResult:
        from vitprobe.study import manifest, results

        cfg, world = self.config, self.world
        t_start = time.perf_counter()
        elapsed0 = 0.0
        if world.is_main:
            manifest.write_running(self.out, cfg, self)
        resumed = bool(cfg.extra.get("resume")) and (self.out / ckpt.FILENAME).exists()
        with _Stop() as stop:
            if resumed:
                self._restore()
                already = self.resumed_done
                elapsed0 = self.resumed_elapsed
                self.log(f"resuming pass {self.pass_index + 1}/{len(self.passes)}: "
                         f"{len(already)} of {len(self.chunks)} batches already counted")
            else:
                self.accumulators = self._build(0)
                self._calibrate()
                already = set()
            while self.pass_index < len(self.passes):
                self._stream_pass(stop, already, elapsed0)
                states, _, skipped = self._merged_states()
                self.skipped = _unique(self.skipped + skipped)
                if world.is_main:
                    self.finished_states |= states
                self.pass_index += 1
                already = set()
                if self.pass_index < len(self.passes):
                    self.accumulators = self._build(self.pass_index)
                    self._calibrate()
                    self._checkpoint(elapsed0 + time.perf_counter() - t_start)
        result = StudyResult(out=self.out, skipped=self.skipped)
        if world.is_main:
            t0 = time.perf_counter()
            result.datasets = results.write(self, self.finished_states)
            self.timings["results_s"] = time.perf_counter() - t0
            self.timings["total_s"] = elapsed0 + time.perf_counter() - t_start
            result.timings = dict(self.timings)
            result.n_images = len(self.source) - len(self.skipped)
            manifest.write_complete(self.out, cfg, self, result)
            (self.out / ckpt.FILENAME).unlink(missing_ok=True)
        dist.barrier(world)
        return result


def _skips(loader) -> list[tuple[str, str]]:
    return [(str(s.path), str(s.reason)) for s in getattr(loader, "skipped", [])]


def _unique(items) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for item in items:
        seen[tuple(item)] = None
    return list(seen)


def run_study(config: StudyConfig | None = None, *, report: bool = True,
              progress: bool | str = True, **options: Any) -> StudyResult:
    """Run the whole study (the Python face of ``vitprobe run``).

    >>> result = run_study(model="imgfocus-dinov2-s14", images="demo", n_images=256,
    ...                    out="runs/demo", control="random-init")  # doctest: +SKIP

    Args:
        config: a :class:`StudyConfig`, or None to build one from ``options``.
        report: draw the figures and write ``report.html`` at the end.
        progress: show progress bars (True: when attached to a terminal; "always").
        **options: :class:`StudyConfig` fields; ``resume=True`` and ``force=True``
            are accepted too.
    """
    extra = {k: options.pop(k) for k in ("resume", "force") if k in options}
    if config is None:
        config = StudyConfig(**options)
    config.extra.update(extra)
    study = Study(config, progress=progress)
    try:
        result = study.run()
    finally:
        dist.finish(study.world)
    if report and study.world.is_main:
        from vitprobe.report import build_report

        result.report = build_report(config.out)
    return result
