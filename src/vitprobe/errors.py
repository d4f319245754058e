"""Exceptions that vitprobe raises for bad input; the CLI prints them without a traceback."""


class VitprobeError(Exception):
    """Base class for errors caused by the user's input (paths, specs, data)."""


class UnsupportedModelError(VitprobeError, TypeError):
    """The model is not a vision transformer vitprobe knows how to probe."""


class ImageSourceError(VitprobeError, ValueError):
    """An image source is missing, empty or malformed."""


class ResultsError(VitprobeError, ValueError):
    """A results folder or file is missing, incomplete or from an incompatible run."""


class RunFolderError(ResultsError):
    """The results folder cannot be used: a file, read-only, locked by another run, or
    holding files that are not a vitprobe run's."""


class ConfigError(VitprobeError, ValueError):
    """A study option is invalid (named in the message with the accepted values)."""
