"""vitprobe.stats: streaming neuron statistics of vision transformers.

The statistical half of the reference study (Philip, Pan & Schwartz, poster
"Probing vision transformer attention", section "Statistical analysis"): how strongly
a spatially central neuron depends on the neurons of its channel around it, and how
that falls off with distance, per layer and sublayer; what the joint distributions
look like (bowtie plots, Schwartz & Simoncelli 2001); how single neurons are
distributed (moments, kurtosis).

* :func:`mutual_info` - MI between 1-D samples (quantile bins, Miller-Madow,
  bin-width extrapolation); :func:`mutual_info_ksg` - the k-NN reference;
  :func:`gaussian_copula_mi` - a cheap lower bound.
* Accumulators (protocol :class:`vitprobe.record.accumulator.Accumulator`, constant
  memory in the number of images, exact merges, save/load): :class:`JointCounts`
  (central neuron vs. every position: MI against distance), :class:`NeuronMoments`,
  :class:`NeuronHistograms`, :class:`BowtieCounts` (fine bowtie histograms of selected
  pairs; their conditional statistics in :mod:`vitprobe.stats.conditional`).
* :class:`NeuronLayout` - the neuron geometry of a model; :func:`plan_passes` - the
  memory-budget planner.

Public names are imported lazily (as in :mod:`vitprobe.attention`): the report's drawing
processes read :mod:`vitprobe.stats.conditional` without paying for torch and numba.
"""

from __future__ import annotations

from vitprobe._lazy import lazy_exports

_EXPORTS = {
    "choose_bins": "vitprobe.stats.binning",
    "digitize": "vitprobe.stats.binning",
    "quantile_edges": "vitprobe.stats.binning",
    "BowtieCounts": "vitprobe.stats.bowtie",
    "NeuronHistograms": "vitprobe.stats.histograms",
    "JointCounts": "vitprobe.stats.joint",
    "mutual_info_ksg": "vitprobe.stats.ksg",
    "NeuronLayout": "vitprobe.stats.layout",
    "site_name": "vitprobe.stats.layout",
    "coarsen_counts": "vitprobe.stats.mi",
    "gaussian_copula_mi": "vitprobe.stats.mi",
    "mi_from_counts": "vitprobe.stats.mi",
    "mutual_info": "vitprobe.stats.mi",
    "NeuronMoments": "vitprobe.stats.moments",
    "MemoryEstimate": "vitprobe.stats.planning",
    "describe_plan": "vitprobe.stats.planning",
    "joint_memory": "vitprobe.stats.planning",
    "plan_passes": "vitprobe.stats.planning",
    "combine_results": "vitprobe.stats.results",
    "open_results": "vitprobe.stats.results",
    "save_results": "vitprobe.stats.results",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
