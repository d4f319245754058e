"""The report: every figure and ``report.html``, redrawn from a results folder alone."""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "open_results"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vitprobe.report import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'vitprobe.report' has no attribute {name!r}")
