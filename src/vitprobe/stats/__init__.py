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
"""

from vitprobe.stats.binning import choose_bins, digitize, quantile_edges
from vitprobe.stats.bowtie import BowtieCounts
from vitprobe.stats.histograms import NeuronHistograms
from vitprobe.stats.joint import JointCounts
from vitprobe.stats.ksg import mutual_info_ksg
from vitprobe.stats.layout import NeuronLayout, site_name
from vitprobe.stats.mi import coarsen_counts, gaussian_copula_mi, mi_from_counts, mutual_info
from vitprobe.stats.moments import NeuronMoments
from vitprobe.stats.planning import MemoryEstimate, describe_plan, joint_memory, plan_passes
from vitprobe.stats.results import combine_results, open_results, save_results

__all__ = [
    "BowtieCounts",
    "JointCounts",
    "MemoryEstimate",
    "NeuronHistograms",
    "NeuronLayout",
    "NeuronMoments",
    "choose_bins",
    "coarsen_counts",
    "combine_results",
    "describe_plan",
    "digitize",
    "gaussian_copula_mi",
    "joint_memory",
    "mi_from_counts",
    "mutual_info",
    "mutual_info_ksg",
    "open_results",
    "plan_passes",
    "quantile_edges",
    "save_results",
    "site_name",
]
