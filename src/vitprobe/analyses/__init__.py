"""Analyses as plug-ins: each is one module here plus one line in :data:`REGISTRY`.

>>> from vitprobe.analyses import get_analysis
>>> get_analysis("qk").needs_images
False

The registry maps the name users type to the module that holds the analysis's
:class:`~vitprobe.analyses.base.Analysis` subclass (as ``ANALYSIS``); modules are
imported on first use, so ``vitprobe --help`` stays light. Order is report order.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from vitprobe.analyses.base import Analysis, Context, FigureSpec, ReportSection
from vitprobe.errors import VitprobeError

if TYPE_CHECKING:
    from vitprobe.models import ProbedViT
    from vitprobe.record import Accumulator

__all__ = ["REGISTRY", "Analysis", "Context", "FigureSpec", "ReportSection", "analysis_names",
           "first_pass_accumulators", "get_analysis", "register_analysis"]

#: name -> module holding ``ANALYSIS`` (an Analysis subclass), in report order
REGISTRY: dict[str, str] = {
    "moments": "vitprobe.analyses.moments",
    "mi": "vitprobe.analyses.mi",
    "bowtie": "vitprobe.analyses.bowtie",
    "angles": "vitprobe.analyses.angles",
    "qk": "vitprobe.analyses.qk",
    "salience": "vitprobe.analyses.salience",
}


def register_analysis(name: str, module: str) -> None:
    """Add an analysis from another package (``module.ANALYSIS`` is its class)."""
    REGISTRY[name] = module


def analysis_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get_analysis(name: str) -> Analysis:
    """A fresh instance of the analysis called ``name``.

    Raises:
        VitprobeError: no analysis has that name.
    """
    if name not in REGISTRY:
        raise VitprobeError(f"unknown analysis {name!r}; choose from {', '.join(REGISTRY)}")
    cls = importlib.import_module(REGISTRY[name]).ANALYSIS
    return cls()


def first_pass_accumulators(model: ProbedViT, context: Context,
                            names: Iterable[str] | None = None) -> dict[str, Accumulator]:
    """The accumulators of the first pass over the images, as a study builds them: each
    named analysis that reads images (default: every registered one) planned for
    ``model`` and ``context``, keyed ``<analysis>/<file>``. For driving the counting
    yourself (benchmarks, tests): calibrate, ``end_calibration``, ``update``."""
    accs: dict[str, Accumulator] = {}
    for name in analysis_names() if names is None else names:
        analysis = get_analysis(name)
        if analysis.needs_images:
            analysis.plan(model, context)
            accs |= {f"{name}/{file}": acc
                     for file, acc in analysis.accumulators(model, context, 0).items()}
    return accs
