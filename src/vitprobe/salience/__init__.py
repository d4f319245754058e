"""vitprobe.salience: does attention single out what stands out?

The poster (Philip, Pan & Schwartz) ends on a hypothesis it never tested: "transformers
may partially capture visual salience, which we propose to test with structured visual
stimuli". Biological neurons suppress inputs that resemble their surround and so
highlight what stands out; this package asks the same of attention heads with three
experiments, each run on the model and on a random-init control:

1. pop-out search arrays (:mod:`vitprobe.salience.stimuli`): how much more attention a
   singleton receives than identical distractors, against feature difference;
2. centre-surround: suppression of the centre's neurons by a like or unlike surround;
3. eigen-stimuli (:mod:`vitprobe.salience.eigen`): patches aligned to the query-key
   modes of each head, and how much of their attention ``x M y^T`` predicts.

Public API (lazy): :func:`measure_salience` (model -> ``xarray.Dataset``),
:class:`SalienceConfig`.
"""

from __future__ import annotations

from vitprobe._lazy import lazy_exports

_EXPORTS = {
    "measure_salience": "vitprobe.salience.battery",
    "SalienceConfig": "vitprobe.salience.battery",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
