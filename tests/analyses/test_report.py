"""The report builder on a run folder: the registry decides what is drawn, figures are
drawn in worker processes exactly as in one process, PDF only when asked."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tests.analyses.conftest import CONTEXT
from tests.analyses.helpers import run_analysis, write_run_folder
from vitprobe.analyses import REGISTRY, get_analysis, register_analysis
from vitprobe.cli import main
from vitprobe.errors import ResultsError
from vitprobe.report import build_report, open_results
from vitprobe.schema import MODEL_DIM, RANDOM_INIT, main_model


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, results):
    """Every analysis of the tiny model with its control."""
    return write_run_folder(tmp_path_factory.mktemp("run") / "run", results,
                            control=RANDOM_INIT)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory, results):
    """The moments analysis alone (two quick figures)."""
    return write_run_folder(tmp_path_factory.mktemp("small") / "run",
                            {f: results[f] for f in get_analysis("moments").files},
                            control=RANDOM_INIT)


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("figures", "report.html"))
    return dst


@pytest.mark.slow  # draws all the run's figures twice (about 25 s of CPU)
def test_parallel_figures_equal_serial(run_folder, tmp_path):
    serial = _copy(run_folder, tmp_path / "serial")
    parallel = _copy(run_folder, tmp_path / "parallel")
    page = build_report(serial, workers=1).read_text()
    assert main(["report", str(parallel), "--workers", "2"]) == 0
    ran = ("moments", "mi", "angles", "qk")  # the analyses of the run_folder fixture
    slugs = [s.slug for name in REGISTRY if name in ran for s in get_analysis(name).figures]
    pngs = sorted(p.name for p in (serial / "figures").iterdir())
    assert pngs == sorted(f"{s}.png" for s in slugs)  # every figure, control ones too
    assert sorted(p.name for p in (parallel / "figures").iterdir()) == pngs
    for name in pngs:
        a = (serial / "figures" / name).read_bytes()
        b = (parallel / "figures" / name).read_bytes()
        assert a == b, name
    assert (parallel / "report.html").read_text() == page
    for slug in slugs:
        assert f'id="{slug}"' in page
    assert ".pdf" not in page
    sections = [page.index(t) for t in ("Statistical analysis", "Similarity or dissimilarity")]
    assert sections == sorted(sections)
    assert "independent image" in page and "Main findings" in page


def test_pdf_only_when_asked(small_folder, tmp_path):
    out = _copy(small_folder, tmp_path / "pdf")
    page = build_report(out, workers=1).read_text()
    assert sorted(p.name for p in (out / "figures").iterdir()) == [
        "activation_distributions.png", "kurtosis.png"]
    assert ".pdf" not in page
    assert main(["report", str(out), "--pdf", "--workers", "1"]) == 0
    pdfs = sorted(p.name for p in (out / "figures").glob("*.pdf"))
    assert pdfs == ["activation_distributions.pdf", "kurtosis.pdf"]
    assert (out / "figures" / pdfs[0]).read_bytes()[:5] == b"%PDF-"
    assert "figures/kurtosis.png</code>/<code>.pdf" in (out / "report.html").read_text()
    build_report(out, workers=1)  # a later report without --pdf leaves no stale PDF
    assert not list((out / "figures").glob("*.pdf"))


def test_an_analysis_is_one_module_plus_its_registration(small_folder, tmp_path, models,
                                                         pixels, monkeypatch):
    monkeypatch.setitem(REGISTRY, "qk", REGISTRY["qk"])  # restore the registry afterwards
    register_analysis("example", "tests.analyses.example_plugin")
    monkeypatch.setitem(REGISTRY, "example", REGISTRY["example"])
    out = _copy(small_folder, tmp_path / "with-example")
    example = run_analysis("example", models, CONTEXT, pixels)
    write_run_folder(out, {**open_results(small_folder), **example}, control=RANDOM_INIT)
    page = build_report(out, workers=2).read_text()  # drawn by a worker process
    assert (out / "figures" / "example_norms.png").stat().st_size > 1000
    assert 'id="example_norms"' in page and "An example analysis" in page
    assert "Example: the largest W_Q norm is" in page
    assert page.index("Statistical analysis") < page.index("An example analysis")
    with Image.open(out / "figures" / "example_norms.png") as img:
        assert img.width == 330 and img.height == 220  # 3 x 2 inches at 110 dpi


def test_files_without_the_model_dimension_are_refused(small_folder, tmp_path):
    out = _copy(small_folder, tmp_path / "old")
    from vitprobe.netcdf import save_dataset

    old = main_model(open_results(small_folder)["moments"]).drop_vars(MODEL_DIM)
    assert MODEL_DIM not in old.dims
    save_dataset(old, out / "results" / "moments.nc")
    with pytest.raises(ResultsError, match=r"moments\.nc has no 'model' dimension"):
        build_report(out, workers=1)


def test_unregistered_files_are_named_not_drawn(small_folder, tmp_path):
    out = _copy(small_folder, tmp_path / "extra")
    shutil.copy(out / "results" / "moments.nc", out / "results" / "mystery.nc")
    page = build_report(out, workers=1).read_text()
    assert "results/mystery.nc" in page and "no registered analysis" in page
    assert np.all([not p.name.startswith("mystery") for p in (out / "figures").iterdir()])


def _build_in_subprocess(out, tmp_path, *, stdin: bool):
    """build_report(out, workers=2) in a fresh interpreter, the script read on stdin or
    from a file whose import kills every worker that imports it (as workers import the
    main module); returns the finished process and the RuntimeWarnings it printed."""
    import subprocess
    import sys

    script = ("import warnings\nfrom vitprobe.report import build_report\n"
              "if __name__ == '__mp_main__':  # a worker importing the main module\n"
              "    import os\n    os._exit(3)\n"
              "if __name__ == '__main__':\n"
              "    with warnings.catch_warnings(record=True) as caught:\n"
              "        warnings.simplefilter('always')\n"
              f"        build_report({str(out)!r}, workers=2)\n"
              "    print([str(w.message) for w in caught if w.category is RuntimeWarning])\n")
    if stdin:
        args, feed = [sys.executable, "-"], script
    else:
        path = tmp_path / "build.py"
        path.write_text(script)
        args, feed = [sys.executable, str(path)], None
    done = subprocess.run(args, input=feed, text=True, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    slugs = [s.slug for s in get_analysis("moments").figures]
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(
        f"{s}.png" for s in slugs)
    assert (out / "report.html").exists()
    return done


def test_a_script_on_stdin_draws_in_this_process(small_folder, tmp_path):
    """Workers import the main module from its file, which a script read from stdin does
    not have: the figures are drawn here from the start (no dead workers' tracebacks)."""
    done = _build_in_subprocess(_copy(small_folder, tmp_path / "stdin"), tmp_path,
                                stdin=True)
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"  # no warning


def test_a_dead_drawing_process_falls_back_to_this_one(small_folder, tmp_path):
    """Workers that die (here: killed as they import the main module) break the pool:
    the figures are drawn in the calling process instead, with a warning."""
    done = _build_in_subprocess(_copy(small_folder, tmp_path / "dead"), tmp_path,
                                stdin=False)
    assert "drawing the remaining figures in this process" in done.stdout


def test_small_variables_are_read_when_their_file_opens(small_folder, tmp_path, monkeypatch):
    """Figures slice small variables panel by panel: they are read whole on opening
    (still there once the file is closed and gone); larger ones stay lazy."""
    from vitprobe.report import builder

    def opened_then_gone(name: str):
        out = _copy(small_folder, tmp_path / name)
        files = builder.ResultFiles.from_folder(out)
        ds = files["moments"]
        files.close()
        shutil.rmtree(out / "results")
        return ds

    ds = opened_then_gone("eager")
    assert np.isfinite(ds["excess_kurtosis"].values).any()
    monkeypatch.setattr(builder, "EAGER_BYTES", 0)
    ds = opened_then_gone("lazy")
    with pytest.raises(FileNotFoundError):
        ds["excess_kurtosis"].load()
