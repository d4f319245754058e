"""The report: every figure and ``report.html``, redrawn from a results folder alone.

Sections, figures and findings come from the registered analyses
(:mod:`vitprobe.analyses`); this package only reads the files, draws in parallel and
assembles the page.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ResultFiles", "build_report", "open_results", "report_figures"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vitprobe.report import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'vitprobe.report' has no attribute {name!r}")
