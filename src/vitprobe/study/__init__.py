"""The whole study in one call: ``vitprobe.run_study(...)`` / ``vitprobe run``.

Attributes are imported lazily so that ``vitprobe --help`` does not import torch.
"""

from __future__ import annotations

from vitprobe._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_ANALYSES": "vitprobe.study.config",
    "Study": "vitprobe.study.runner",
    "StudyConfig": "vitprobe.study.config",
    "StudyInterrupted": "vitprobe.study.runner",
    "StudyResult": "vitprobe.study.runner",
    "run_study": "vitprobe.study.runner",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
