"""``vitprobe report`` on folders that are not what a finished run leaves."""

from __future__ import annotations

import json

import pytest

from tests.report.helpers import copy_run
from vitprobe.cli import main
from vitprobe.errors import ResultsError
from vitprobe.report import build_report

pytestmark = pytest.mark.slow


def test_a_result_file_listed_but_missing_is_named_and_the_rest_drawn(random_run, tmp_path,
                                                                      capsys):
    run = copy_run(random_run, tmp_path / "run")
    (run / "results" / "angles.nc").unlink()
    assert main(["report", str(run), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert ("vitprobe: warning: " in err and "results/angles.nc listed in manifest.json but "
            "not found" in err)
    page = (run / "report.html").read_text()
    assert "<code>results/angles.nc</code>" in page and "not found" in page
    assert (run / "figures" / "mi_vs_distance.png").exists()  # the rest is drawn
    assert not list((run / "figures").glob("angle*.png"))


def test_an_unfinished_run_without_results_says_how_to_finish_it(random_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    manifest = json.loads((random_run / "manifest.json").read_text())
    manifest["status"] = "failed"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ResultsError, match=r"holds a failed run that wrote no results yet.*"
                                           r"--resume"):
        build_report(run)
