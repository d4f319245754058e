"""Re-draw every figure and ``report.html`` from a results folder alone.

Nothing here loads a model or an image: the figures come from ``results/*.nc`` and
the page's facts from ``manifest.json``, so ``vitprobe report DIR`` works on a copy
of the folder on any machine.

What the report holds comes from the analysis registry
(:data:`vitprobe.analyses.REGISTRY`): every registered analysis whose result files are
in the folder contributes its section, its figures (:attr:`Analysis.figures`, each
drawn when its files are there) and its findings (:meth:`Analysis.findings`). Adding an
analysis therefore needs no change here.

Speed: figures are drawn in worker processes (``forkserver`` start method where the
platform has it, else ``spawn``; never ``fork``, which would copy the parent's
threads and matplotlib state), one figure per task, while the parent writes captions
and findings. Each worker opens the result files lazily and reads only the variables
its figure touches. PNG only by default; PDF copies when asked.
"""

from __future__ import annotations

import html
import importlib
import json
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import xarray as xr

from vitprobe.analyses import REGISTRY, get_analysis
from vitprobe.analyses.base import Analysis, FigureSpec, ReportSection
from vitprobe.cache import atomic_write
from vitprobe.errors import ResultsError
from vitprobe.netcdf import open_lazily
from vitprobe.plots.common import save_figure
from vitprobe.report.explorer import explorer_html
from vitprobe.report.html import DPI, RenderedFigure, render_page
from vitprobe.resources import available_cpus
from vitprobe.runfolder import FIGURES_DIR, MANIFEST, REPORT, RESULTS_DIR, read_manifest, status
from vitprobe.schema import MODEL_DIM, check_schema

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FIGURES_DIR", "REPORT", "ResultFiles", "build_report", "open_results",
           "report_figures"]

#: variables up to this size are read into memory when their file is opened
EAGER_BYTES = 8 * 1000**2


# -- reading results ---------------------------------------------------------------------------
class ResultFiles(Mapping[str, xr.Dataset]):
    """``results/<name>.nc`` by name, each opened lazily on first access.

    Only the variables a figure or finding touches are read from disk (the MI file's
    edges and joint counts can be hundreds of MB). Every file must have the ``model``
    dimension (:func:`vitprobe.schema.check_schema`). Close with :meth:`close` (or use
    as a context manager).
    """

    def __init__(self, paths: Mapping[str, str | os.PathLike]) -> None:
        self.paths = {name: Path(p) for name, p in paths.items()}
        self._open: dict[str, xr.Dataset] = {}

    @classmethod
    def from_folder(cls, out: str | os.PathLike) -> ResultFiles:
        """Every ``results/*.nc`` of a run folder.

        Raises:
            ResultsError: no ``results/`` folder or no ``.nc`` file in it.
        """
        folder = Path(out) / RESULTS_DIR
        if not folder.is_dir():
            state = status(out)
            if state not in (None, "complete"):
                raise ResultsError(
                    f"{out} holds a {state} run that wrote no results yet: finish it with "
                    f"`vitprobe run --resume --out {out}` (and the run's other options)")
            raise ResultsError(f"{out} has no {RESULTS_DIR}/ folder; is it a vitprobe run "
                               "folder?")
        paths = {p.stem: p for p in sorted(folder.glob("*.nc"))}
        if not paths:
            raise ResultsError(f"{folder} holds no .nc result files")
        return cls(paths)

    def __getitem__(self, name: str) -> xr.Dataset:
        if name not in self._open:
            path = self.paths[name]  # KeyError for an absent file, as a Mapping should
            ds = open_lazily(path)
            if MODEL_DIM not in ds.dims:
                ds.close()
                raise ResultsError(
                    f"{path} has no {MODEL_DIM!r} dimension: it was written by an older "
                    "vitprobe (before every results file held the model under study and its "
                    "controls along 'model'); rerun the study to redraw its report")
            check_schema(ds)
            # small variables are read whole at once: figures slice them panel by
            # panel, and every lazy read costs milliseconds of bookkeeping (a bowtie
            # figure's 169 slices took 1.4 s through h5netcdf, read whole 0.05 s)
            for var in ds.variables.values():
                if var.nbytes <= EAGER_BYTES:
                    var.load()
            self._open[name] = ds
        return self._open[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, name: object) -> bool:
        return name in self.paths

    def check(self) -> None:
        """Open every file once (raises :class:`ResultsError` on the first bad one)."""
        for name in self.paths:
            self[name]

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()

    def __enter__(self) -> ResultFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_results(out: str | os.PathLike) -> dict[str, xr.Dataset]:
    """Every ``results/<analysis>.nc``, loaded into memory (files closed).

    Raises:
        ResultsError: not a run folder, no results, or a file without the ``model``
            dimension.
    """
    with ResultFiles.from_folder(out) as files:
        return {name: files[name].load() for name in files}


# -- what to draw --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Planned:
    """One figure to draw: the analysis module that owns it and its spec."""

    module: str
    analysis: Analysis
    spec: FigureSpec


def _present_analyses(files: Mapping[str, Any]) -> list[tuple[str, Analysis]]:
    """Registered analyses (registry order) with at least one result file present."""
    found = []
    for name in REGISTRY:
        analysis = get_analysis(name)
        if any(f in files for f in analysis.files):
            found.append((name, analysis))
    return found


def report_figures(files: Mapping[str, xr.Dataset]) -> list[FigureSpec]:
    """The figure specs a report of these result files holds, in report order."""
    return [p.spec for p in _plan(files)]


def _plan(files: Mapping[str, xr.Dataset]) -> list[_Planned]:
    return [_Planned(REGISTRY[name], analysis, spec)
            for name, analysis in _present_analyses(files)
            for spec in analysis.figures if spec.available(files)]  # type: ignore[arg-type]


# -- drawing -------------------------------------------------------------------------------------
def _save(fig: Figure, png: Path, pdf: Path | None) -> None:
    save_figure(fig, png, dpi=DPI, close=pdf is None)
    if pdf is not None:
        save_figure(fig, pdf, dpi=DPI, fmt="pdf")


def _spec_of(module: str, slug: str) -> FigureSpec:
    cls = importlib.import_module(module).ANALYSIS
    for spec in cls.figures:
        if spec.slug == slug:
            return spec
    raise ResultsError(f"{module} has no figure {slug!r}")  # pragma: no cover - internal


#: a drawing worker's open result files, kept from one figure to the next (a worker
#: lives for one report; opening a file and reading its small variables takes up to 1 s)
_worker_files: ResultFiles | None = None


def _draw_task(module: str, slug: str, paths: dict[str, str], png: str,
               pdf: str | None) -> str:
    """Worker: draw one figure from the files alone and write it; returns the slug."""
    global _worker_files
    matplotlib.use("Agg")
    spec = _spec_of(module, slug)
    wanted = {name: Path(p) for name, p in paths.items()}
    if _worker_files is None or _worker_files.paths != wanted:
        if _worker_files is not None:
            _worker_files.close()
        _worker_files = ResultFiles(wanted)
    _save(spec.draw(_worker_files), Path(png), None if pdf is None else Path(pdf))  # type: ignore[arg-type]
    return slug


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # imported once in the server, then forked into every worker
        ctx.set_forkserver_preload(["vitprobe.report.builder", "matplotlib.pyplot", "netCDF4"])
        return ctx
    return multiprocessing.get_context("spawn")


def _workers_can_start() -> bool:
    """Whether spawned or forkserver workers can start: they import the main module from
    its file, which a script read from stdin (``__file__ == "<stdin>"``) does not have;
    without a ``__file__`` (a REPL, Jupyter) nothing is imported."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    return path is None or os.path.exists(path)


def _draw_all(planned: Sequence[_Planned], files: ResultFiles, fig_dir: Path, pdf: bool,
              workers: int) -> None:
    """Draw every planned figure, in ``workers`` processes when more than one."""
    tasks = [(p.module, p.spec.slug, {k: str(v) for k, v in files.paths.items()},
              str(fig_dir / f"{p.spec.slug}.png"),
              str(fig_dir / f"{p.spec.slug}.pdf") if pdf else None) for p in planned]
    done: set[str] = set()
    if workers > 1 and len(tasks) > 1 and _workers_can_start():
        try:
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                     mp_context=_context()) as pool:
                futures = [pool.submit(_draw_task, *t) for t in tasks]
                for f in futures:
                    done.add(f.result())
                return
        except BrokenProcessPool as err:
            # a worker died (killed for memory, or a main module the workers could not
            # import after all): draw the rest here
            warnings.warn(f"a figure-drawing process died ({err}); drawing the remaining "
                          "figures in this process", RuntimeWarning, stacklevel=3)
    for p, (_, slug, _, png, pdf_path) in zip(planned, tasks, strict=True):
        if slug not in done:
            _save(p.spec.draw(files), Path(png),  # type: ignore[arg-type]
                  None if pdf_path is None else Path(pdf_path))


# -- the page ------------------------------------------------------------------------------------
def build_report(out: str | os.PathLike, *, pdf: bool = False,
                 workers: int | None = None) -> Path:
    """Draw every figure under ``figures/`` and write ``report.html``; return its path.

    Args:
        out: a run folder (``manifest.json`` and ``results/*.nc``).
        pdf: also write each figure as PDF (``vitprobe report DIR --pdf``); PNG only by
            default.
        workers: processes that draw figures; default one per CPU core available,
            1 draws in this process.

    Raises:
        ResultsError: no manifest, no results, or a results file without the ``model``
            dimension.
    """
    out = Path(out)
    manifest = read_manifest(out)
    fig_dir = out / FIGURES_DIR
    with ResultFiles.from_folder(out) as files:
        files.check()
        planned = _plan(files)
        fig_dir.mkdir(parents=True, exist_ok=True)
        n_workers = available_cpus() if workers is None else int(workers)
        _draw_all(planned, files, fig_dir, pdf, n_workers)
        rendered = [
            RenderedFigure(
                p.spec.section, p.spec.slug, p.spec.title,
                p.spec.caption(files, manifest)  # type: ignore[arg-type]
                + " <br><i>Data:</i> "
                + ", ".join(f"<code>{RESULTS_DIR}/{n}.nc</code>" for n in p.spec.needs)
                + f"; figure: <code>{FIGURES_DIR}/{p.spec.slug}.png</code>"
                + ("/<code>.pdf</code>." if pdf else "."),
                fig_dir / f"{p.spec.slug}.png", fig_dir / f"{p.spec.slug}.pdf" if pdf else None)
            for p in planned]
        present = _present_analyses(files)
        findings = [line for _, analysis in present
                    for line in analysis.findings(files)]  # type: ignore[arg-type]
        notes = _notes(manifest, present, files)
        lost = _listed_but_missing(manifest, files)
        if lost:
            warnings.warn(f"{out}: {', '.join(lost)} listed in {MANIFEST} but not found; "
                          "their figures are not drawn", stacklevel=2)
            notes.append("Listed in <code>manifest.json</code> but not found (their figures "
                         "are not drawn): "
                         + ", ".join(f"<code>{html.escape(f)}</code>" for f in lost) + ".")
        explorer = explorer_html(files, manifest)
    if not pdf:  # a PDF left by an earlier --pdf report would no longer match
        for p in planned:
            (fig_dir / f"{p.spec.slug}.pdf").unlink(missing_ok=True)
    page = render_page(
        title=f"vitprobe report: {manifest.get('model', {}).get('spec', out.name)}",
        meta_rows=_meta_rows(manifest),
        banner=_banner(manifest),
        findings=findings,
        sections=_sections(present, planned),
        figures=rendered,
        skipped=[(s["path"], s["reason"]) for s in manifest.get("skipped", [])],
        notes=notes,
        explorer=explorer,
    )
    report = out / REPORT
    with atomic_write(report) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return report


def _sections(present: Sequence[tuple[str, Analysis]],
              planned: Sequence[_Planned]) -> list[tuple[str, str]]:
    """(slug, heading) in the order the analyses first name them."""
    found: dict[str, str] = {}
    for _, analysis in present:
        section: ReportSection = analysis.section
        found.setdefault(section.slug, section.title)
    for p in planned:  # a figure may name a section of its own
        found.setdefault(p.spec.section, p.spec.section.capitalize())
    return list(found.items())


def _banner(manifest: dict) -> str | None:
    if manifest.get("images", {}).get("demo"):
        return ("Demo scale: the images are random crops of the built-in photographs shipped "
                "with scikit-image and scikit-learn, not ImageNet. Run on an ImageNet folder "
                "(--images path/to/val --n-images 10000) for numbers comparable to the papers.")
    return None


def _meta_rows(manifest: dict) -> list[tuple[str, str]]:
    model, images = manifest.get("model", {}), manifest.get("images", {})
    cfg = manifest.get("config", {})
    timings = manifest.get("timings_s", {})
    grid = model.get("grid", ("?", "?"))
    return [
        ("model", f"{model.get('spec', '?')} ({model.get('family', '?')}: "
                  f"{model.get('model_class', '?')}), {model.get('n_layers', '?')} layers x "
                  f"{model.get('n_heads', '?')} heads, d_model {model.get('d_model', '?')}, "
                  f"{grid[0]}x{grid[1]} patches"),
        ("weights", f"{model.get('source', '?')}; sha256 "
                    f"{str(model.get('weights_sha256', '?'))[:16]}..."),
        ("control", manifest.get("control") or "none"),
        ("images", f"{images.get('description', '?')}"),
        ("counted", f"{manifest.get('n_images_counted', '?')} images, seed "
                    f"{images.get('seed', '?')}, {len(manifest.get('skipped', []))} skipped"),
        ("analyses", ", ".join(cfg.get("analyses", []))),
        ("processes", str(manifest.get("world_size", 1))),
        ("run time", f"{timings.get('total_s', float('nan')) / 60:.1f} min"),
        ("command", manifest.get("command", "")),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())),
    ]


def _listed_but_missing(manifest: dict, files: Mapping[str, Any]) -> list[str]:
    """Result files the run wrote (``manifest["results"]``) that are not in the folder."""
    listed = manifest.get("results", {})
    return sorted(str(path) for name, path in listed.items() if name not in files)


def _notes(manifest: dict, present: Sequence[tuple[str, Analysis]],
           files: Mapping[str, Any]) -> list[str]:
    cfg = manifest.get("config", {})
    settings = {k: cfg[k] for k in ("batch_size", "calibration_images", "mi_bins",
                                    "mi_channels", "dtype", "device") if k in cfg}
    notes = [
        "Layers are numbered 1..L in every figure (0..L-1 in the files and in code).",
        "Every figure is drawn from the netCDF file named in its caption; "
        "<code>vitprobe report DIR</code> redraws them without the model or the images.",
        "Full settings: <code>manifest.json</code>; image identities: <code>images.txt</code>. "
        + html.escape(json.dumps(settings)),
    ]
    claimed = {f for _, analysis in present for f in analysis.files}
    unclaimed = sorted(set(files) - claimed)
    if unclaimed:
        notes.append("Not drawn (no registered analysis writes them): "
                     + ", ".join(f"<code>{RESULTS_DIR}/{html.escape(n)}.nc</code>"
                                 for n in unclaimed) + ".")
    missing = [a for a in cfg.get("analyses", []) if a not in REGISTRY]
    if missing:
        notes.append("Analyses of this run without a registered plug-in here: "
                     + html.escape(", ".join(missing)) + ".")
    return notes
