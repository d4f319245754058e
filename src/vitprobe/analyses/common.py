"""What the analysis modules share in the report: sections, caption phrases, labels.

Captions and findings are HTML / plain sentences computed from the saved Datasets and
the run's ``manifest.json``; these helpers keep the phrases that recur across analyses
in one place (how many images, whether a control is drawn, layer and sublayer names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xarray as xr

from vitprobe.analyses.base import ReportSection
from vitprobe.schema import CONTROLS, controls, has_control

__all__ = [
    "SIMILARITY",
    "STATS",
    "SUBLAYER_NAMES",
    "control_note",
    "layer_label",
    "layer_list",
    "n_images_text",
    "sublayer_name",
]

#: the poster's first half: single neurons, bowties, mutual information
STATS = ReportSection("stats", "Statistical analysis: neurons, bowties and mutual information")
#: the poster's second half: query-key weights and embedding angles
SIMILARITY = ReportSection(
    "similarity", "Similarity or dissimilarity? Query-key weights and embedding angles")

#: how sublayers are named in figures and sentences (MHA: multi-head attention)
SUBLAYER_NAMES = {"attn": "MHA", "mlp": "MLP"}


def sublayer_name(sublayer: object) -> str:
    """``"MHA"`` / ``"MLP"`` for ``"attn"`` / ``"mlp"``; other names unchanged."""
    return SUBLAYER_NAMES.get(str(sublayer), str(sublayer))


def layer_label(layer: object) -> int:
    """A 0-based layer index as figures and sentences name it (1..L)."""
    return int(layer) + 1  # type: ignore[call-overload]


def layer_list(layers: list[int]) -> str:
    """``"1, 2, 5"``, or ``"none"`` for an empty list (already 1-based)."""
    return ", ".join(map(str, layers)) if layers else "none"


def n_images_text(manifest: Mapping[str, Any]) -> str:
    """``"512 images (built-in demo crops (not ImageNet))"`` from a run's manifest."""
    images = manifest.get("images", {})
    kind = ("built-in demo crops (not ImageNet)" if images.get("demo")
            else images.get("source", "unknown source"))
    count = manifest.get("n_images_counted", images.get("n_selected", "?"))
    return f"{count} images ({kind})"


def control_note(ds: xr.Dataset) -> str:
    """The caption's last sentence: which controls are drawn, or how to add one."""
    if has_control(ds):
        names = ", ".join(controls(ds))
        return f" The {names} control is drawn in grey or dashed."
    return f" No control was run (add <code>--control {CONTROLS[0]}</code>)."
