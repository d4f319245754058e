"""What an analysis plug-in declares: accumulators, merge, results, figures, findings.

An analysis is one module under :mod:`vitprobe.analyses` holding one
:class:`Analysis` subclass, registered by name in ``vitprobe.analyses.REGISTRY``.
The study (:mod:`vitprobe.study`) drives every analysis through this interface
alone, and the report (:mod:`vitprobe.report`) draws each analysis's figures and
findings from the saved files alone, so adding an analysis touches no other module.

Two kinds:

* **streaming** analyses (``needs_images = True``) hand the study
  :class:`~vitprobe.record.Accumulator` objects per pass over the images; the study
  calibrates them, streams every batch into them, merges ranks with
  :meth:`Accumulator.merge`, checkpoints their ``state_dict`` and finally calls
  :meth:`Analysis.results` with the finished accumulators of every pass.
* **model-only** analyses (``needs_images = False``: the query-key weights,
  generated stimuli) compute their Datasets from the models in :meth:`Analysis.run`.

Every Dataset returned is for one model; the study stacks the models along the
``model`` dimension (:func:`vitprobe.schema.stack_models`) before writing
``results/<file>.nc``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import xarray as xr

from vitprobe.errors import ConfigurationError
from vitprobe.resources import CPU_MEMORY_BUDGET
from vitprobe.schema import has_control

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from vitprobe.models import ProbedViT
    from vitprobe.record import Accumulator

Datasets = dict[str, xr.Dataset]

__all__ = ["Analysis", "Context", "Datasets", "FigureSpec", "ReportSection",
           "one_pass_calibration"]

#: bytes per recorded value in each compute dtype of the study (``--dtype``)
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Context:
    """The run settings an analysis may read (never mutated by it).

    Attributes:
        n_images: images in the seeded subset (the planned count; skips may lower it).
        calibration_images: images that fix bin edges, ranges and mean tokens.
        batch_size: images per batch (null pairs and kernels see one batch at a time).
        seed: the run's seed (subsets, random channel picks, stimuli).
        device: torch device of the models.
        dtype: the models' compute dtype (``float32``, ``bfloat16``, ``float16``): the
            dtype of the recorded activations.
        memory_budget: bytes an analysis's counts may take per pass, and separately the
            bytes of calibration batches it may keep to count them in the same pass
            (:func:`one_pass_calibration`).
        options: analysis-specific options by name (``mi_channels``, ``mi_bins``, ...).
    """

    n_images: int
    calibration_images: int = 256
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    memory_budget: int = CPU_MEMORY_BUDGET
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str, default: Any = None) -> Any:
        value = self.options.get(name)
        return default if value is None else value


def one_pass_calibration(acc: Accumulator, model: ProbedViT, context: Context, *,
                         values_per_image: int | None = None) -> Accumulator:
    """Let ``acc`` count its own calibration images when keeping them fits the budget.

    An accumulator with ``counts_calibration`` keeps every calibration batch (the whole
    recorded tensors of its sites, by reference) until its edges, ranges or mean token
    are fixed, and then counts them: each image is forwarded once. That holds

        ceil(calibration_images / batch_size) * batch_size * len(acc.sites)
        * n_tokens * d_model * bytes per value

    bytes at once (DINOv2-S/14's neuron histograms: 2.4 GB at 256 images in float32;
    ViT-L/16's: 9.9 GB, per model). When that exceeds ``context.memory_budget``,
    ``acc.counts_calibration`` is set to False: it only calibrates on those images and
    the study forwards them once more for it (256 extra forwards, whatever the number of
    images). ``values_per_image``: the recorded values a kept image holds when the
    accumulator keeps less than its sites' whole tensors (a copied channel subset).
    Returns ``acc``.
    """
    # the study calibrates on context.calibration_images images; an accumulator may use
    # fewer (the angles' mean token); None: all it is given
    images = min(getattr(acc, "calibration_images", None) or context.calibration_images,
                 context.calibration_images)
    batch = max(1, context.batch_size)
    kept = -(-images // batch) * batch
    if values_per_image is None:
        values_per_image = len(acc.sites) * model.n_tokens * model.d_model
    itemsize = _ITEMSIZE.get(context.dtype)
    if itemsize is None:
        raise ConfigurationError(f"Context.dtype {context.dtype!r} is not one of "
                                 f"{', '.join(_ITEMSIZE)}")
    acc.counts_calibration = kept * values_per_image * itemsize <= context.memory_budget
    return acc


@dataclass(frozen=True)
class FigureSpec:
    """One figure of the report: what it draws, from which files, with which caption.

    ``needs`` names the result files (``results/<name>.nc``) it reads; a spec whose
    files are absent is left out. ``draw(datasets) -> Figure``;
    ``caption(datasets, manifest) -> str`` (HTML, numbers computed from the data).
    """

    section: str
    slug: str
    title: str
    needs: tuple[str, ...]
    draw: Callable[[Datasets], Figure]
    caption: Callable[[Datasets, dict], str]
    #: drawn only when the first needed file holds a control along ``model``
    control_only: bool = False
    #: drawn only when the first needed file holds these variables (an experiment the
    #: run's options skipped leaves them out)
    variables: tuple[str, ...] = ()

    def available(self, datasets: Datasets) -> bool:
        if not all(name in datasets for name in self.needs):
            return False
        first = datasets[self.needs[0]]
        if any(v not in first for v in self.variables):
            return False
        return not self.control_only or has_control(first)


@dataclass(frozen=True)
class ReportSection:
    slug: str
    title: str


class Analysis:
    """Base class of analysis plug-ins (see the module docstring).

    Subclasses set the class attributes and override :meth:`accumulators` (streaming)
    or :meth:`run` (model-only). One instance serves one run: it may keep what
    :meth:`plan` decided.
    """

    #: the name users type (``--analyses mi,angles``)
    name: ClassVar[str]
    #: one line for ``--help`` and the report
    summary: ClassVar[str] = ""
    #: streams images (True) or needs the models only (False)
    needs_images: ClassVar[bool] = True
    #: the result files it writes (``results/<file>.nc``)
    files: ClassVar[tuple[str, ...]]
    #: the report section its figures and findings go to
    section: ClassVar[ReportSection] = ReportSection("stats", "Statistical analysis")
    #: figures, in report order
    figures: ClassVar[tuple[FigureSpec, ...]] = ()

    # -- streaming analyses ---------------------------------------------------------------
    def plan(self, model: ProbedViT, context: Context) -> int:
        """Decide how the work splits into passes over the images; return their number."""
        return 1

    def plan_note(self, model: ProbedViT, context: Context) -> str | None:
        """A line for the run's log on what :meth:`plan` decided, when the user may want
        to change it (several passes, and the budget that would need one); else None."""
        return None

    def accumulators(self, model: ProbedViT, context: Context,
                     pass_index: int) -> dict[str, Accumulator]:
        """Fresh accumulators of pass ``pass_index`` keyed by result file (``"mi"``).

        Called again with the same arguments to rebuild accumulators whose
        ``state_dict`` is then loaded (ranks, checkpoints, the final results), so it
        must be deterministic. An analysis with nothing to do in a pass returns ``{}``.
        """
        return {}

    def results(self, finished: Mapping[str, Sequence[Accumulator]]) -> Datasets:
        """Result Datasets (one model) from the finished accumulators of every pass.

        ``finished[file]`` lists that file's accumulators in pass order. The default
        takes the only pass's ``result()``; analyses split over passes override it
        with their exact combiner.
        """
        out = {}
        for file, parts in finished.items():
            if len(parts) != 1:
                raise NotImplementedError(f"{type(self).__name__} must combine {len(parts)} "
                                          f"passes of {file!r}")
            out[file] = parts[0].result()
        return out

    # -- model-only analyses --------------------------------------------------------------
    def run(self, models: Mapping[str, ProbedViT], context: Context,
            progress: Callable[[str], None] | None = None) -> Datasets:
        """Result Datasets computed from the models alone, stacked along ``model``
        (``models`` maps variant name to model, the main model first)."""
        raise NotImplementedError(f"{type(self).__name__} is a streaming analysis")

    # -- report -----------------------------------------------------------------------------
    def findings(self, datasets: Datasets) -> list[str]:
        """Sentences for the report's findings, computed from the saved Datasets."""
        return []
