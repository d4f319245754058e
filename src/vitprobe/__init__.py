"""vitprobe: measure what vision transformers compute.

Layers are numbered from 0 in code (``blocks.0`` is the first block) and labelled
1..L in figures and reports, as in the papers this toolkit reproduces.

``load_model`` and ``run_study`` are imported on first use, so that ``import vitprobe``
(and ``vitprobe --help``) does not import torch.
"""

from vitprobe._lazy import lazy_exports
from vitprobe.errors import UnsupportedModelError, VitprobeError

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "vitprobe.models.registry",
    "run_study": "vitprobe.study",
}

__all__ = ["UnsupportedModelError", "VitprobeError", "__version__", "load_model", "run_study"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
