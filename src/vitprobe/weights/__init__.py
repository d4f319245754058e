"""vitprobe.weights: query-key weight analysis of every attention head.

Public API (imported lazily so that ``vitprobe --help`` does not import torch):

- :func:`analyze_qk` (model or factors -> ``xarray.Dataset``), :func:`analyze_qk_models`
  (several, stacked along ``model``), :func:`save_qk`,
  :func:`load_qk`, :func:`summary_table`;
- :func:`qk_spectra` (exact low-rank spectra from factor arrays) and
  :func:`dense_qk_spectra` (dense numpy reference);
- :class:`QKFactors`, :func:`factors_from_probed`, :func:`factors_from_module`,
  :func:`factors_from_arrays`, :func:`effective_factors`;
- :mod:`vitprobe.weights.measures` (positive share, symmetry score, weighted cosine, ranks).

References: Pan et al. 2024, arXiv 2405.14880; Saponati et al. 2025, arXiv 2502.10927.
"""

from __future__ import annotations

from vitprobe._lazy import lazy_exports

_EXPORTS = {
    "analyze_qk": "vitprobe.weights.analysis",
    "analyze_qk_models": "vitprobe.weights.analysis",
    "as_factors": "vitprobe.weights.analysis",
    "save_qk": "vitprobe.weights.io",
    "load_qk": "vitprobe.weights.io",
    "summary_table": "vitprobe.weights.io",
    "qk_spectra": "vitprobe.weights.lowrank",
    "dense_qk_spectra": "vitprobe.weights.lowrank",
    "QKSpectra": "vitprobe.weights.lowrank",
    "QKFactors": "vitprobe.weights.factors",
    "effective_factors": "vitprobe.weights.factors",
    "factors_from_arrays": "vitprobe.weights.factors",
    "factors_from_probed": "vitprobe.weights.factors",
    "factors_from_module": "vitprobe.weights.modules",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
