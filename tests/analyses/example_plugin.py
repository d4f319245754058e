"""A minimal analysis plug-in, as another package would write one: this module plus one
``register_analysis`` call is all it takes to appear in the report."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from vitprobe.analyses import Analysis, Context, FigureSpec, ReportSection
from vitprobe.schema import main_model, stack_models


def _draw(datasets: Mapping[str, xr.Dataset]) -> Figure:
    ds = main_model(datasets["example"])
    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot(ds["layer"].values + 1, ds["wq_norm"].values, marker="o")
    ax.set_xlabel("layer")
    return fig


def _caption(datasets: Mapping[str, xr.Dataset], manifest: dict) -> str:
    return "Frobenius norm of W_Q per layer (an example plug-in)."


class ExampleAnalysis(Analysis):
    name = "example"
    summary = "Frobenius norm of the query weights per layer"
    needs_images = False
    files = ("example",)
    section = ReportSection("example", "An example analysis")
    figures: ClassVar[tuple[FigureSpec, ...]] = (
        FigureSpec("example", "example_norms", "Query weight norms", ("example",), _draw,
                   _caption),
    )

    def run(self, models: Mapping, context: Context,
            progress: Callable[[str], None] | None = None) -> dict[str, xr.Dataset]:
        parts = {name: xr.Dataset({"wq_norm": ("layer", np.asarray(
                     [float(m.W_Q[layer].norm()) for layer in range(m.n_layers)]))},
                     coords={"layer": np.arange(m.n_layers)})
                 for name, m in models.items()}
        return {"example": stack_models(parts)}

    def findings(self, datasets: Mapping[str, xr.Dataset]) -> list[str]:
        norm = main_model(datasets["example"])["wq_norm"]
        return [f"Example: the largest W_Q norm is {float(norm.max()):.3f}."]


ANALYSIS = ExampleAnalysis
