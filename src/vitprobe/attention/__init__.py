"""vitprobe.attention: attention against the similarity of patch embeddings.

Public API (imported lazily, so that ``vitprobe --help`` does not import torch):

- :class:`AngleAccumulator`: streamed angle/attention statistics per layer and head;
- :func:`measure_angles`: one model over an image source -> ``xarray.Dataset``;
- :func:`compare_angles`: a trained model and its random-init control, with the
  query-key weight measures attached (what ``vitprobe angles`` runs);
- :func:`angles_dataset`, :func:`attach_qk`, :func:`layer_table`, :func:`save_angles`,
  :func:`load_angles`.

Reference: Philip, Pan & Schwartz, poster "Probing vision transformer attention",
section "Similarity or dissimilarity?"; Pan et al. 2024, arXiv 2405.14880.
"""

from __future__ import annotations

from vitprobe._lazy import lazy_exports

_EXPORTS = {
    "AngleAccumulator": "vitprobe.attention.angles",
    "measure_angles": "vitprobe.attention.measure",
    "compare_angles": "vitprobe.attention.measure",
    "angles_dataset": "vitprobe.attention.result",
    "attach_qk": "vitprobe.attention.result",
    "layer_table": "vitprobe.attention.result",
    "save_angles": "vitprobe.attention.result",
    "load_angles": "vitprobe.attention.result",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
