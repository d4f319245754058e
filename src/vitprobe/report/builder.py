"""Re-draw every figure and ``report.html`` from a results folder alone.

Nothing here loads a model or an image: the figures come from ``results/*.nc`` and
the page's facts from ``manifest.json``, so ``vitprobe report DIR`` works on a copy
of the folder on any machine.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import xarray as xr

from vitprobe.cache import atomic_write
from vitprobe.errors import ResultsError
from vitprobe.netcdf import load_dataset
from vitprobe.report.figures import FIGURES, SECTIONS
from vitprobe.report.findings import findings
from vitprobe.report.html import RenderedFigure, render_page
from vitprobe.study import manifest as manifest_io

FIGURES_DIR = "figures"
REPORT = "report.html"


def open_results(out: Path) -> dict[str, xr.Dataset]:
    """Every ``results/<analysis>.nc``, loaded into memory (files closed)."""
    folder = Path(out) / "results"
    if not folder.is_dir():
        raise ResultsError(f"{out} has no results/ folder; is it a vitprobe run folder?")
    datasets = {path.stem: load_dataset(path) for path in sorted(folder.glob("*.nc"))}
    if not datasets:
        raise ResultsError(f"{folder} holds no .nc result files")
    return datasets


def build_report(out: str | Path, *, pdf: bool = True) -> Path:
    """Draw every figure (PNG and PDF under ``figures/``) and write ``report.html``."""
    out = Path(out)
    manifest = manifest_io.read(out)
    datasets = open_results(out)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    rendered: list[RenderedFigure] = []
    for spec in FIGURES:
        if not spec.available(datasets):
            continue
        fig = spec.draw(datasets)
        png = fig_dir / f"{spec.slug}.png"
        with atomic_write(png) as tmp:
            fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
        pdf_path = None
        if pdf:
            pdf_path = fig_dir / f"{spec.slug}.pdf"
            with atomic_write(pdf_path) as tmp:
                fig.savefig(tmp, format="pdf", metadata={"CreationDate": None})
        fig.clf()
        caption = spec.caption(datasets, manifest) + (
            f" <br><i>Data:</i> <code>results/{spec.needs[0]}.nc</code>; figure: "
            f"<code>{FIGURES_DIR}/{spec.slug}.png</code>/<code>.pdf</code>.")
        rendered.append(RenderedFigure(spec.section, spec.slug, spec.title, caption, png,
                                       pdf_path))
    page = render_page(
        title=f"vitprobe report: {manifest['model']['spec']}",
        meta_rows=_meta_rows(manifest),
        banner=_banner(manifest),
        findings=findings(datasets),
        sections=SECTIONS,
        figures=rendered,
        skipped=[(s["path"], s["reason"]) for s in manifest.get("skipped", [])],
        notes=_notes(manifest),
    )
    # -- the interactive explorer (issue 17): keep this call when rewriting the builder --
    from vitprobe.report.explorer import explorer_html

    page = page.replace("</main></body></html>",
                        explorer_html(datasets, manifest) + "\n</main></body></html>")
    report = out / REPORT
    with atomic_write(report) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return report


def _banner(manifest: dict) -> str | None:
    if manifest["images"].get("demo"):
        return ("Demo scale: the images are random crops of the built-in photographs shipped "
                "with scikit-image and scikit-learn, not ImageNet. Run on an ImageNet folder "
                "(--images path/to/val --n-images 10000) for numbers comparable to the papers.")
    return None


def _meta_rows(manifest: dict) -> list[tuple[str, str]]:
    model, images, cfg = manifest["model"], manifest["images"], manifest["config"]
    timings = manifest.get("timings_s", {})
    return [
        ("model", f"{model['spec']} ({model['family']}: {model['model_class']}), "
                  f"{model['n_layers']} layers x {model['n_heads']} heads, d_model "
                  f"{model['d_model']}, {model['grid'][0]}x{model['grid'][1]} patches"),
        ("weights", f"{model['source']}; sha256 {model['weights_sha256'][:16]}..."),
        ("control", manifest.get("control") or "none"),
        ("images", f"{images['description']}"),
        ("counted", f"{manifest.get('n_images_counted', '?')} images, seed {images['seed']}, "
                    f"{len(manifest.get('skipped', []))} skipped"),
        ("analyses", ", ".join(cfg["analyses"])),
        ("processes", str(manifest.get("world_size", 1))),
        ("run time", f"{timings.get('total_s', float('nan')) / 60:.1f} min"),
        ("command", manifest.get("command", "")),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())),
    ]


def _notes(manifest: dict) -> list[str]:
    return [
        "Layers are numbered 1..L in every figure (0..L-1 in the files and in code).",
        "Every figure is drawn from the netCDF file named in its caption; "
        "<code>vitprobe report DIR</code> redraws them without the model or the images.",
        "Full settings: <code>manifest.json</code>; image identities: <code>images.txt</code>. "
        + html.escape(json.dumps({k: manifest["config"][k] for k in
                                  ("batch_size", "calibration_images", "mi_bins",
                                   "mi_channels", "dtype", "device")})),
    ]
