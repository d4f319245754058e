"""The report's drawing processes import what figures need, not the study's machinery.

Every drawing worker imports the plotting modules of the figures it draws; torch, numba
and scipy.stats took about 5 s to import there (through ``vitprobe.stats.conditional``),
a seventh of the default report's wall time on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "numba", "scipy.stats")

PROBE = f"""
import importlib, pkgutil, sys
import vitprobe.plots, vitprobe.report.builder
from vitprobe.analyses import REGISTRY
for info in pkgutil.iter_modules(vitprobe.plots.__path__, "vitprobe.plots."):
    importlib.import_module(info.name)
for module in REGISTRY.values():
    importlib.import_module(module)
importlib.import_module("vitprobe.stats.conditional")
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_plotting_and_analysis_modules_import_no_torch_numba_or_scipy_stats():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "", f"imported at module level: {proc.stdout.strip()}"
