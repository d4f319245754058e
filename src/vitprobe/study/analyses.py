"""Which accumulators each analysis needs, and how they are split into passes.

=========  ===========================================  =======================
analysis   accumulators (file in ``results/``)           needs images
=========  ===========================================  =======================
moments    NeuronMoments (moments.nc), NeuronHistograms   yes
           (histograms.nc)
mi         JointCounts per pass (mi.nc)                   yes
angles     AngleAccumulator (angles.nc)                   yes
qk         none: weights only (qk.nc)                     no
=========  ===========================================  =======================

The mutual-information counts grow with layers x channels x positions x bins^2;
when they exceed ``memory_budget`` the (layer, sublayer) groups are split into
several passes over the images (pass 1 also carries every other accumulator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vitprobe.record import Accumulator

if TYPE_CHECKING:
    from vitprobe.models import ProbedViT
    from vitprobe.study.config import StudyConfig

Group = tuple[int, str]


def neuron_layout(model: ProbedViT):
    from vitprobe.stats.layout import NeuronLayout

    return NeuronLayout.from_model(model)


def mi_channels(model: ProbedViT, config: StudyConfig) -> np.ndarray:
    """Evenly spaced channel subset (all channels when ``mi_channels`` is None)."""
    if config.mi_channels is None or config.mi_channels >= model.d_model:
        return np.arange(model.d_model)
    return np.unique(np.linspace(0, model.d_model - 1, config.mi_channels).round().astype(int))


def mi_bins(config: StudyConfig, n_images: int) -> int:
    from vitprobe.stats.binning import choose_bins

    bins = config.mi_bins or choose_bins(n_images)
    return max(2, bins - bins % 2)


def plan_passes(model: ProbedViT, config: StudyConfig) -> list[list[Group]]:
    """Groups of (layer, sublayer) for the MI counts of each pass (one pass without MI)."""
    layout = neuron_layout(model)
    groups = layout.groups()
    if "mi" not in config.analyses:
        return [[]]
    from vitprobe.stats.planning import plan_passes as plan

    bins = mi_bins(config, config.n_images or 10**6)
    return plan(layout, bins, config.memory_budget, groups=groups,
                channels=len(mi_channels(model, config)),
                calibration_images=max(config.calibration_images, bins),
                batch_size=config.batch_size, max_images=config.n_images,
                device=model.device.type)


def build_accumulators(model: ProbedViT, config: StudyConfig, passes: list[list[Group]],
                       pass_index: int) -> dict[str, Accumulator]:
    """Fresh accumulators for one pass; keys name the results (``mi.p2``: MI of pass 2).

    Pass 1 carries every accumulator; later passes only the MI counts of their groups.
    """
    accs: dict[str, Accumulator] = {}
    layout = neuron_layout(model)
    if pass_index == 0 and "moments" in config.analyses:
        from vitprobe.stats.histograms import NeuronHistograms
        from vitprobe.stats.moments import NeuronMoments

        accs["moments"] = NeuronMoments(layout)
        accs["histograms"] = NeuronHistograms(layout)
    if pass_index == 0 and "angles" in config.analyses:
        from vitprobe.attention import AngleAccumulator

        accs["angles"] = AngleAccumulator.from_model(model)
    groups = passes[pass_index]
    if groups and "mi" in config.analyses:
        from vitprobe.stats.joint import JointCounts

        bins = mi_bins(config, config.n_images or 10**6)
        accs[f"mi.p{pass_index + 1}"] = JointCounts(
            layout, bins, groups=groups, channels=mi_channels(model, config),
            calibration_images=max(config.calibration_images, bins),
        )
    return accs
