"""The whole study in one call: prepare, calibrate, stream, merge, write.

A run (:class:`Study`) goes through these steps, each in its own module:

1. **prepare**: lock the folder (:mod:`vitprobe.runfolder`), check it, open the
   images, load the models; only then clear a previous run (``--force``).
2. **plan** (:mod:`~vitprobe.study.plan`): the seeded processing order, its chunks,
   and the passes the analyses need (the MI counts of a large model may need several).
3. per pass, **calibrate** on the first chunks of the order (a random sample) and
   **stream** the rest (:mod:`~vitprobe.study.stream`), each rank counting every
   k-th remaining chunk; accumulators that can count their own calibration images
   (``counts_calibration``) do so, so those images are not forwarded twice.
4. **merge** ranks with the accumulators' own exact merge (:mod:`~vitprobe.study.merge`)
   at each checkpoint (:mod:`~vitprobe.study.checkpoint`) and at the end of a pass.
5. **results** (:mod:`~vitprobe.study.results`) and the **manifest**
   (:mod:`~vitprobe.study.manifest`) on rank 0.

Analyses are plug-ins (:mod:`vitprobe.analyses`): nothing here knows what they count.
"""

from __future__ import annotations

import contextlib
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitprobe import runfolder
from vitprobe.analyses import Analysis, Context, get_analysis
from vitprobe.errors import (
    ConfigurationError,
    InsufficientDataError,
    ResultsError,
    RunFolderError,
    VitprobeError,
)
from vitprobe.record import Accumulator
from vitprobe.resources import (
    format_bytes,
    loader_settings,
    peak_memory,
    released_heap,
    reset_peak_memory,
    retained_heap,
)
from vitprobe.schema import TRAINED
from vitprobe.study import checkpoint as ckpt
from vitprobe.study import distributed as dist
from vitprobe.study import manifest
from vitprobe.study.config import FINGERPRINT_KEYS, StudyConfig
from vitprobe.study.merge import merge_states
from vitprobe.study.plan import RunPlan
from vitprobe.study.results import collect, write_results
from vitprobe.study.stream import Streamer

if TYPE_CHECKING:
    from vitprobe.models import ProbedViT

EXIT_INTERRUPTED = 3
#: seconds between progress lines when stderr is not a terminal
LOG_EVERY_S = 60.0
#: ... and when progress bars are on (the model-only analyses' counters have none)
TERMINAL_LOG_EVERY_S = 10.0
#: a counter message of an analysis: "<label>: <done>/<total> ..."
_COUNTER = re.compile(r"^(?P<label>.+?): (?P<done>\d+)/(?P<total>\d+)\b")


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
    #: rank 0's peak memory in bytes (:func:`vitprobe.resources.peak_memory`)
    peak_memory: dict[str, int] = field(default_factory=dict)


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


def thinned_counters(log: Callable[[str], None], every_s: float,
                     clock: Callable[[], float] = time.monotonic) -> Callable[[str], None]:
    """``log`` with counter messages (``"<label>: <done>/<total> ..."``, one per batch of
    the salience battery) thinned to the last of each count (done == total) and one line
    per label every ``every_s`` seconds before it; other messages pass through."""
    last: dict[str, float] = {}

    def emit(message: str) -> None:
        counter = _COUNTER.match(message)
        if counter is None:
            log(message)
            return
        label, now = counter["label"], clock()
        if int(counter["done"]) >= int(counter["total"]):
            last.pop(label, None)  # a later count under this label starts afresh
            log(message)
        elif now - last.setdefault(label, now) >= every_s:
            last[label] = now
            log(message)

    return emit


def _unique(items) -> list[tuple[str, str]]:
    return list(dict.fromkeys(tuple(item) for item in items))


class Study:
    """One run of the study (use :func:`run_study`)."""

    def __init__(self, config: StudyConfig, *, progress: bool | str = True,
                 log: Callable[[str], None] | None = None,
                 models: Mapping[str, ProbedViT] | None = None) -> None:
        """Args:
            config: what to run.
            progress: progress bars (True: on a terminal; "always").
            log: where messages go (default: stderr).
            models: already loaded models by variant (:attr:`StudyConfig.variants`), used
                instead of loading ``config.model``: e.g. a model with your own hooks.
        """
        self.config = config
        self.given_models = dict(models or {})
        missing = set(self.given_models) - set(config.variants)
        if missing:
            raise ConfigurationError(f"models given for {sorted(missing)}, but the run's "
                                     f"models are {list(config.variants)}")
        self.world = dist.init(config.device)
        self.device = dist.device_for(self.world, config.device)
        self.progress = self.world.is_main and (progress == "always"
                                                or (bool(progress) and sys.stderr.isatty()))
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.out = config.out
        self.timings: dict[str, float] = {}
        self.analyses: dict[str, Analysis] = {n: get_analysis(n) for n in config.analyses}
        self.streaming = {n: a for n, a in self.analyses.items() if a.needs_images}

    # -- 1. prepare ---------------------------------------------------------------------------
    def _check_folder(self) -> None:
        cfg = self.config
        state = runfolder.status(self.out, holding_lock=True)  # taken in run()
        if state == "complete" and not cfg.force:
            hint = ("" if (Path(self.out) / runfolder.REPORT).exists() else
                    f" (it has no {runfolder.REPORT}: `vitprobe report {self.out}` draws it "
                    "from the saved results)")
            raise ResultsError(f"{self.out} holds a finished run{hint}; pass --force to "
                               "overwrite it or choose another --out")
        if state not in (None, "complete") and not (cfg.resume or cfg.force):
            raise ResultsError(f"{self.out} holds an unfinished run ({state}); pass --resume to "
                               "continue it or --force to start over")
        foreign = runfolder.foreign_names(self.out)
        if foreign:  # somebody else's files under the names a run writes: never touch them
            raise RunFolderError(
                f"{self.out} holds {', '.join(foreign)} but no vitprobe manifest: not a "
                "vitprobe run folder, so nothing is written or deleted there; choose another "
                "--out")

    def _prepare(self) -> None:
        from vitprobe.data import open_images
        from vitprobe.models import load_model

        cfg = self.config
        t0 = time.perf_counter()
        # image problems are reported before any model work starts
        source = open_images(cfg.images, n_images=cfg.n_images, seed=cfg.seed)
        if self.streaming and len(source) < 2:
            # said here rather than as an accumulator's "calibration_images must be ..."
            raise InsufficientDataError(
                f"{cfg.images} holds {len(source)} image(s); the image analyses "
                f"({', '.join(self.streaming)}) need at least 2 (their bin edges and ranges "
                "come from the images), and far more for useful statistics")
        self.models = {}
        for variant in cfg.variants:
            pretrained = variant == TRAINED
            if variant in self.given_models:
                self.models[variant] = self.given_models[variant].to(self.device)
                continue
            self.models[variant] = load_model(
                cfg.model, pretrained=pretrained, device=self.device,
                checkpoint=cfg.checkpoint if pretrained else None, seed=cfg.seed)
        self.main = next(iter(self.models.values()))
        self.timings["load_s"] = time.perf_counter() - t0
        self.source = source.at_resolution(self.main.preprocess.input_size,
                                           self.main.patch_size)
        self.ids = self.source.ids
        self.index_of = {sample_id: i for i, sample_id in enumerate(self.ids)}
        self.ids_hash = manifest.ids_sha256(self.ids)
        n = len(self.ids)
        self.context = Context(
            n_images=n, calibration_images=min(cfg.calibration_images, n),
            batch_size=cfg.batch_size, seed=cfg.seed, device=self.device, dtype=cfg.dtype,
            memory_budget=cfg.memory_budget, options=cfg.analysis_options())
        n_passes = max((a.plan(self.main, self.context) for a in self.streaming.values()),
                       default=0)
        if self.world.is_main:
            for analysis in self.streaming.values():
                note = analysis.plan_note(self.main, self.context)
                if note:
                    self.log(note)
        self.plan = RunPlan.make(n, cfg.batch_size, cfg.seed, n_passes=n_passes,
                                 calibration_images=self.context.calibration_images)
        self.streamer = Streamer(self.models, self.index_of, device=self.device,
                                 dtype=cfg.dtype, log=self.log)

    # -- accumulators -------------------------------------------------------------------------
    def _build(self, pass_index: int) -> dict[str, Accumulator]:
        """Fresh accumulators of a pass, keyed ``<model>/<analysis>/<file>``."""
        accs = {}
        for variant, model in self.models.items():
            for name, analysis in self.streaming.items():
                for file, acc in analysis.accumulators(model, self.context, pass_index).items():
                    accs[f"{variant}/{name}/{file}"] = acc
        return accs

    def _loader(self, chunk_ids: list[int]):
        from vitprobe.data import make_loader

        sub = self.source.take(self.plan.chunks(chunk_ids),
                               f"{len(chunk_ids)} of {self.plan.n_chunks} batches")
        return make_loader(sub, self.main.preprocess, batch_size=self.config.batch_size,
                           patch_size=self.main.patch_size,
                           **loader_settings(self.device, self.config.workers))

    # -- 3. calibrate -------------------------------------------------------------------------
    def _calibrate(self, accs: dict[str, Accumulator]) -> tuple[dict, set[int]]:
        """Calibrate on rank 0 and hand every rank the calibrated (empty) states.

        Returns the calibrated states and the chunks already counted (the calibration
        chunks when every calibrating accumulator counts its own calibration images).
        """
        needs = {k: a for k, a in accs.items() if a.needs_calibration}
        if not needs:
            return {}, set()
        counts_own = all(getattr(a, "counts_calibration", False) for a in needs.values())
        chunk_ids = self.plan.calibration
        again = sorted({key.split("/", 1)[1] for key, a in needs.items()
                        if not a.counts_calibration})
        if again and self.world.is_main:
            self.log(f"the {self.context.calibration_images} calibration images are forwarded "
                     f"again for {', '.join(again)}, which do not keep them to count in the "
                     f"same pass (the built-in analyses keep them only within the memory "
                     f"budget, {format_bytes(self.context.memory_budget)}: --memory-budget)")
        if self.world.is_main:
            t0 = time.perf_counter()
            loader = self._loader(chunk_ids)

            def consume(acc: Accumulator, cache: dict) -> None:
                if acc.needs_calibration:
                    acc.calibrate(cache)
                elif counts_own:
                    acc.update(cache)

            # accumulators counting their own calibration images keep every batch until
            # their edges are fixed: blocks freed meanwhile go back to the kernel, else
            # the retained heap grows by about as much again as is kept
            keeps = any(a.counts_calibration for a in needs.values())
            with released_heap() if keeps else contextlib.nullcontext():
                with self.streamer.recording(accs) as recorders:
                    for batch in self._bar(loader, len(loader), "calibration", unit="batch"):
                        self.streamer.run_batch(recorders, accs, batch, consume)
                unreadable = _skips(loader)
                self.streamer.skipped += unreadable
                t1 = time.perf_counter()
                for name, acc in needs.items():
                    t2 = time.perf_counter()
                    try:
                        acc.end_calibration()  # edges, rankings; counts the kept images
                    except InsufficientDataError as err:
                        if not unreadable:
                            raise
                        path, reason = unreadable[0]
                        raise InsufficientDataError(
                            f"{err}: {len(unreadable)} of the "
                            f"{self.context.calibration_images} calibration images could not "
                            f"be read ({path}: {reason}"
                            f"{', ...' if len(unreadable) > 1 else ''})") from err
                    self.timings[f"end_calibration_s/{name}"] = time.perf_counter() - t2
            self.timings["end_calibration_s"] = self.timings.get("end_calibration_s", 0.0) + (
                time.perf_counter() - t1)
            self.timings["calibration_s"] = self.timings.get("calibration_s", 0.0) + (
                time.perf_counter() - t0)
        # the calibrated state without counted images: where every rank (and a resume) starts
        states = ({k: a.calibration_state_dict() for k, a in needs.items()}
                  if self.world.is_main else None)
        states = dist.broadcast_from_main(self.world, states)
        if not self.world.is_main:
            for key, state in states.items():
                accs[key].load_state_dict(state)
        return states, set(chunk_ids) if counts_own else set()

    # -- 4. merge and checkpoint --------------------------------------------------------------
    def _gather(self, accs: dict[str, Accumulator], pass_index: int, done: set[int]):
        """Every rank's states, done chunks and skips, merged on rank 0 (None elsewhere)."""
        mine = ({k: a.state_dict() for k, a in accs.items()}, sorted(done),
                self.streamer.skipped)
        gathered = dist.gather_to_main(self.world, mine)
        if gathered is None:
            return None, set()
        states = merge_states(lambda: self._build(pass_index), [g[0] for g in gathered])
        self.streamer.skipped = _unique(s for g in gathered for s in g[2])
        return states, {c for g in gathered for c in g[1]}

    def _checkpoint_due(self) -> bool:
        """Whether ``checkpoint_every_s`` has passed since the last checkpoint attempt.
        Rank 0 writes the checkpoints, so only its clock counts (False elsewhere; callers
        share rank 0's answer)."""
        return self.world.is_main and (time.perf_counter() - self.last_checkpoint
                                       >= self.config.checkpoint_every_s)

    def _save_checkpoint(self, pass_index: int, current: dict | None, done: set[int],
                         calibrated: bool) -> None:
        if not self.world.is_main:
            return
        states = dict(self.finished)
        if current:
            states |= {f"p{pass_index}/{k}": v for k, v in current.items()}
        progress = ckpt.Progress(
            fingerprint=self.config.fingerprint(), ids_sha256=self.ids_hash,
            pass_index=pass_index, n_passes=self.plan.n_passes, calibrated=calibrated,
            done_chunks=sorted(done), skipped=[list(s) for s in _unique(self.streamer.skipped)],
            elapsed_s=self._elapsed())
        t0 = time.perf_counter()
        try:
            ckpt.save(self.out, ckpt.Checkpoint(states, self.calibration, progress))
            self.checkpoints_written += 1
            self.timings["checkpoint_s"] = (self.timings.get("checkpoint_s", 0.0)
                                            + time.perf_counter() - t0)
        except OSError as err:
            # a full disk: the previous checkpoint is intact (atomic write); go on counting
            kept = ("the previous checkpoint is kept"
                    if (self.out / runfolder.CHECKPOINT).exists()
                    else "there is no earlier checkpoint: an interruption now loses the run")
            self.log(f"warning: could not write a checkpoint to {self.out} ({err.strerror}); "
                     f"{kept}")
            if self._stopping:
                raise
        finally:
            # the next one is due an interval after this attempt, written or not (a full
            # disk is not retried after every batch)
            self.last_checkpoint = time.perf_counter()

    def _restore(self) -> tuple[int, dict, set[int], bool]:
        saved = ckpt.load(self.out)
        p = saved.progress
        if p.fingerprint != self.config.fingerprint():
            try:
                changed = self.config.differences(runfolder.read_manifest(self.out)["config"])
            except (ResultsError, KeyError, TypeError):
                changed = []
            what = ("; changed: " + ", ".join(changed)) if changed else (
                " (" + ", ".join(k.replace("_", "-") for k in FINGERPRINT_KEYS) + ")")
            raise ResultsError(
                f"the checkpoint in {self.out} belongs to a run with other settings{what}; "
                "resume with the same options (a memory budget as a number: 'auto' depends "
                "on the device) or pass --force")
        if p.ids_sha256 != self.ids_hash:
            raise ResultsError(self._images_changed())
        if p.n_passes != self.plan.n_passes:
            raise ResultsError(f"the checkpoint plans {p.n_passes} passes, this run "
                               f"{self.plan.n_passes}; resume with the same settings")
        self.finished = {k: v for k, v in saved.states.items()
                         if ckpt.parse_state_key(k)[0] < p.pass_index}
        current = {k.split("/", 1)[1]: v for k, v in saved.states.items()
                   if ckpt.parse_state_key(k)[0] == p.pass_index}
        self.calibration = saved.calibration if p.calibrated else {}
        self.streamer.skipped = _unique(tuple(s) for s in p.skipped)
        self.elapsed_before = p.elapsed_s
        return p.pass_index, current, set(p.done_chunks), p.calibrated

    def _images_changed(self) -> str:
        previous_file = self.out / runfolder.IMAGES
        msg = (f"the images selected now differ from those of the checkpoint in {self.out} "
               f"(source {self.config.images!r})")
        if previous_file.exists():
            before = previous_file.read_text().splitlines()
            gone = sorted(set(before) - set(self.ids))
            new = sorted(set(self.ids) - set(before))
            if gone or new:
                msg += (f": {len(gone)} no longer selected (e.g. {gone[:3]}), {len(new)} newly "
                        f"selected (e.g. {new[:3]})")
            else:
                msg += ": the same images in another order"
        return msg + ". Restore the images, or start over with --force"

    # -- 3. stream ------------------------------------------------------------------------------
    def _bar(self, iterable, total, desc, unit="img"):
        if not self.progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def _stream_pass(self, pass_index: int, accs: dict[str, Accumulator], done: set[int],
                     stop: _Stop) -> set[int]:
        """Count every chunk not in ``done``; return the done chunks (merged on rank 0)."""
        world, plan = self.world, self.plan
        remaining = [i for i in range(plan.n_chunks) if i not in done]
        mine = plan.for_rank(remaining, world.rank, world.size)
        # rank 0 holds the counts of chunks done before (calibration, an earlier session)
        mine_done = set(done) if world.is_main else set()
        loader = self._loader(mine)
        # when only some calibrating accumulators count their own calibration images, the
        # calibration chunks are streamed again for the others, and skipped by those
        needs = [a for a in accs.values() if a.needs_calibration]
        mixed = bool(needs) and not all(a.counts_calibration for a in needs)
        calibration = set(plan.calibration) if mixed else set()
        without_own = {k: a for k, a in accs.items() if not a.counts_calibration}
        n_remaining = sum(len(plan.chunk(i)) for i in remaining)
        # progress counts every image of the pass (those counted while calibrating or
        # before a resume included); rates and time left count this session's only
        before = plan.n_images - n_remaining
        label = f"pass {pass_index + 1}/{plan.n_passes}"
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=plan.n_images, initial=before, desc=label, unit="img",
                       dynamic_ncols=True, postfix={"procs": world.size})
        t0 = time.perf_counter()
        last_log = t0
        counted = 0
        # a batch is one chunk (skips only shrink it; a chunk skipped whole yields no batch)
        chunk_of = np.repeat(np.asarray(mine, dtype=np.int64),
                             [len(plan.chunk(i)) for i in mine])
        id_chunk = dict(zip(loader.source.ids, chunk_of.tolist(), strict=True))
        pending = list(mine)
        batches = iter(loader)
        with self.streamer.recording(accs) as recorders:
            while True:
                batch = next(batches, None)
                n = 0
                if batch is not None:
                    chunk = id_chunk[batch["ids"][0]]
                    self.streamer.run_batch(recorders,
                                            without_own if chunk in calibration else accs,
                                            batch, lambda acc, cache: acc.update(cache))
                    n = len(batch["ids"])
                    last = id_chunk[batch["ids"][-1]]
                    while pending and pending[0] <= last:
                        mine_done.add(pending.pop(0))
                else:
                    mine_done.update(pending)
                    pending = []
                now = time.perf_counter()
                due = int(self._checkpoint_due())
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
                    self.log(f"{label}: {before + counted}/{plan.n_images} images, "
                             f"{rate:.1f} images/s "
                             f"over {world.size} process(es), about {eta / 60:.1f} min left")
                if stop_flag or due:
                    self.streamer.skipped = _unique(self.streamer.skipped + _skips(loader))
                    self._stopping = bool(stop_flag)
                    states, all_done = self._gather(accs, pass_index, mine_done)
                    self._save_checkpoint(pass_index, states, all_done, True)
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
        self.streamer.skipped = _unique(self.streamer.skipped + _skips(loader))
        self.timings[f"pass{pass_index + 1}_s"] = time.perf_counter() - t0
        return mine_done

    def _count(self, stop: _Stop) -> None:
        """Every pass: calibrate, stream, merge into ``self.finished``."""
        start_pass, current, done, calibrated = self.resumed or (0, {}, set(), False)
        if self.resumed:
            self.log(f"resuming pass {start_pass + 1}/{self.plan.n_passes}: {len(done)} of "
                     f"{self.plan.n_chunks} batches already counted")
        for p in range(start_pass, self.plan.n_passes):
            accs = self._build(p)
            if calibrated:
                for key, acc in accs.items():
                    if key in self.calibration:
                        acc.load_state_dict(self.calibration[key])
                    if self.world.is_main and key in current:
                        acc.load_state_dict(current[key])
            else:
                self.calibration, done = self._calibrate(accs)
                # like any counted work, the calibration is checkpointed when a checkpoint
                # is due (a signal still writes one at once): a run shorter than the
                # interval writes no multi-gigabyte file it deletes moments later
                if dist.broadcast_from_main(self.world, self._checkpoint_due()):
                    states, done = self._gather(accs, p, done)
                    self._save_checkpoint(p, states, done, True)
                done = dist.broadcast_from_main(self.world, done)
            done = self._stream_pass(p, accs, done, stop)
            states, _ = self._gather(accs, p, done)
            if self.world.is_main:
                self.finished |= {f"p{p}/{k}": v for k, v in states.items()}
            # the next pass starts uncalibrated with nothing done (after the last pass:
            # counting is over, and a failure while writing results resumes from here)
            current, done, calibrated, self.calibration = {}, set(), False, {}
            self._save_checkpoint(p + 1, None, set(), False)

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> StudyResult:
        cfg, world = self.config, self.world
        self.t_start = self.last_checkpoint = time.perf_counter()
        reset_peak_memory(self.device)
        self.checkpoints_written = 0  # by this invocation (rank 0 writes them)
        self.elapsed_before = 0.0
        self.finished: dict[str, dict[str, np.ndarray]] = {}
        self.calibration: dict[str, dict[str, np.ndarray]] = {}
        self._stopping = False
        with contextlib.ExitStack() as stack:
            error: VitprobeError | None = None
            if world.is_main:
                try:
                    stack.enter_context(runfolder.lock(self.out))
                    self._check_folder()
                except VitprobeError as err:
                    error = err
            # every rank stops when rank 0 cannot use the folder (no rank waits forever)
            message = dist.broadcast_from_main(world, None if error is None else str(error))
            if error is not None:
                raise error
            if message is not None:
                raise ResultsError(message)
            self._prepare()
            # a checkpoint is checked against these settings and images before anything
            # in the folder changes (images.txt still lists the checkpoint's images)
            self.resumed = None
            if cfg.resume and (self.out / runfolder.CHECKPOINT).exists():
                self.resumed = self._restore()
            if world.is_main:
                if cfg.force:
                    removed = runfolder.clear_run(self.out)
                    if removed:
                        self.log(f"--force: removed the previous run's {', '.join(removed)}")
                runfolder.remove_stale_temporaries(self.out)
                self.run_info = manifest.describe_run(
                    cfg, self.main, self.source, self.ids,
                    weights_sha256=manifest.weights_checksum(self.main),
                    world_size=world.size, n_passes=self.plan.n_passes)
                manifest.write_running(self.out, self.run_info, self.ids)
            try:
                with _Stop() as stop:
                    self._count(stop)
                result = self._finish()
            except StudyInterrupted:
                self._ended("interrupted")
                raise
            except OSError as err:  # a full disk, a folder gone read-only...
                self._ended("failed", error=f"{type(err).__name__}: {err}")
                kept = ("the last checkpoint is kept: make room and rerun the same command "
                        "with --resume"
                        if (self.out / runfolder.CHECKPOINT).exists() else
                        "no checkpoint could be written: make room and rerun the same "
                        "command with --resume (it starts over)")
                raise ResultsError(
                    f"could not write to {self.out}: {err.strerror or err}"
                    + (f" ({err.filename})" if err.filename else "") + f"; {kept}") from err
            except BaseException as err:
                self._ended("failed", error=f"{type(err).__name__}: {err}")
                raise
        dist.barrier(world)
        return result

    def _ended(self, status: str, **facts: Any) -> None:
        if self.world.is_main and hasattr(self, "run_info"):
            with contextlib.suppress(OSError):
                manifest.write_ended(self.out, self.run_info, status,
                                     skipped=[{"path": p, "reason": r}
                                              for p, r in _unique(self.streamer.skipped)],
                                     **facts)

    def _finish(self) -> StudyResult:
        skipped = _unique(self.streamer.skipped)
        result = StudyResult(out=self.out, skipped=skipped)
        if not self.world.is_main:
            return result
        t0 = time.perf_counter()
        every_s = TERMINAL_LOG_EVERY_S if self.progress else LOG_EVERY_S
        datasets = collect(self.analyses, self.models, self.context, self.finished,
                           thinned_counters(self.log, every_s), self.timings)
        self.timings["results_s"] = time.perf_counter() - t0
        attrs = self._common_attrs()
        t0 = time.perf_counter()
        result.datasets = write_results(self.out, datasets, attrs)
        self.timings["write_s"] = time.perf_counter() - t0
        self.timings["total_s"] = self._elapsed()
        result.timings = dict(self.timings)
        result.peak_memory = peak_memory(self.device)
        result.n_images = len(self.ids) - len({s[0] for s in skipped})
        manifest.write_ended(
            self.out, self.run_info, "complete", n_images_counted=result.n_images,
            checkpoints_written=self.checkpoints_written,
            skipped=[{"path": p, "reason": r} for p, r in skipped],
            timings_s={k: round(v, 3) for k, v in result.timings.items()},
            peak_memory_bytes=result.peak_memory,
            results={name: str(path.relative_to(self.out))
                     for name, path in result.datasets.items()})
        (self.out / runfolder.CHECKPOINT).unlink(missing_ok=True)
        return result

    def _common_attrs(self) -> dict[str, Any]:
        from vitprobe import __version__

        cfg = self.config
        return {
            "model_spec": cfg.model,
            "weights_source": self.main.source,
            "images": cfg.images,
            "image_description": self.source.description,
            "demo_images": int(cfg.is_demo),
            "n_images_selected": len(self.ids),
            "seed": cfg.seed,
            "vitprobe_version": __version__,
            "layer_numbering": "0-based in files and code; figures label layers 1..L",
        }


def _skips(loader) -> list[tuple[str, str]]:
    return [(str(s.path), str(s.reason)) for s in getattr(loader, "skipped", [])]


def run_study(config: StudyConfig | None = None, *, report: bool = True,
              progress: bool | str = True, models: Mapping[str, ProbedViT] | None = None,
              **options: Any) -> StudyResult:
    """Run the whole study (the Python face of ``vitprobe run``).

    >>> result = run_study(model="imgfocus-dinov2-s14", images="demo", n_images=256,
    ...                    out="runs/demo")  # doctest: +SKIP
    >>> mine = vitprobe.load_model(my_module)  # a model you built or hooked yourself
    >>> run_study(model="mine", models={"trained": mine}, control=None,
    ...           images="/data/val", out="runs/mine")  # doctest: +SKIP

    Args:
        config: a :class:`StudyConfig`, or None to build one from ``options``.
        report: draw the figures and write ``report.html`` at the end.
        progress: show progress bars (True: when attached to a terminal; "always").
        models: already loaded models by variant (``"trained"``, ``"random-init"``: the
            run's :attr:`StudyConfig.variants`), used instead of loading ``model``; the
            spec then only names the model in the results.
        **options: :class:`StudyConfig` fields (``resume=True``, ``force=True`` too).
    """
    if config is None:
        config = StudyConfig(**options)
    elif options:
        config = config.with_(**options)
    study = Study(config, progress=progress, models=models)
    try:
        with retained_heap():  # a batch's recorded sites reuse the last batch's pages
            result = study.run()
    finally:
        dist.finish(study.world)
    if report and study.world.is_main:
        from vitprobe.report import build_report

        t0 = time.perf_counter()
        result.report = build_report(config.out, pdf=config.pdf)
        result.timings["report_s"] = time.perf_counter() - t0
        manifest.add_timings(config.out, report_s=result.timings["report_s"])
    return result
