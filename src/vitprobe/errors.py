"""Exceptions that vitprobe raises for bad input; the CLI prints them without a traceback."""


class VitprobeError(Exception):
    """Base class for errors caused by the user's input (paths, specs, data)."""


class UnsupportedModelError(VitprobeError, TypeError):
    """The model is not a vision transformer vitprobe knows how to probe."""


class ImageSourceError(VitprobeError, ValueError):
    """An image source is missing, empty or malformed."""


class ResultsError(VitprobeError, ValueError):
    """A results folder or file is missing, incomplete or from an incompatible run."""


class IncomparableRunsError(VitprobeError, ValueError):
    """Runs given to ``vitprobe compare`` cannot be compared (different analyses or images)."""
