"""One uninterrupted single-process study, shared by the resume and distributed tests."""

from __future__ import annotations

import pytest

from tests.study.helpers import SMALL_RUN, run, vitprobe_cmd


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """Results of SMALL_RUN in one process, never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    run(vitprobe_cmd("run", *SMALL_RUN, "--out", str(out), "--no-report"))
    return out
