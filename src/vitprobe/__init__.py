"""vitprobe: measure what vision transformers compute.

Layers are numbered from 0 in code (``blocks.0`` is the first block) and labelled
1..L in figures and reports, as in the papers this toolkit reproduces.
"""

from vitprobe.errors import UnsupportedModelError, VitprobeError

__version__ = "0.1.0"

__all__ = ["UnsupportedModelError", "VitprobeError", "__version__", "load_model", "run_study"]


def __getattr__(name: str):
    # lazy so that `import vitprobe` (and `vitprobe --help`) does not import torch
    if name == "load_model":
        from vitprobe.models import load_model

        return load_model
    if name == "run_study":
        from vitprobe.study import run_study

        return run_study
    raise AttributeError(f"module 'vitprobe' has no attribute {name!r}")
