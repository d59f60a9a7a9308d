"""Every error cxrkit raises on purpose, under one base class: :class:`CxrkitError`.

Each error also derives from the builtin it resembles, so ``except ValueError``
(or ``FileNotFoundError``, ``RuntimeError``) still catches it, and the command line
reports any :class:`CxrkitError` as one line instead of a traceback. Each error is
also importable from the module that raises it (e.g. ``cxrkit.checkpoints.CheckpointError``).

>>> issubclass(AnnotationError, CxrkitError) and issubclass(AnnotationError, ValueError)
True
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "CxrkitError",
    "DataNotFoundError",
    "DicomReadError",
    "AnnotationError",
    "DatasetError",
    "PreprocessError",
    "OverwriteError",
    "WeightsError",
    "CheckpointError",
    "ResumeError",
    "FoldError",
    "UnsupportedError",
    "NonFiniteLossError",
    "SubmissionError",
    "ConfigError",
    "ConfigTypeError",
    "UnknownNameError",
]


class CxrkitError(Exception):
    """Base class: bad input or settings that cxrkit detected (not a bug in cxrkit)."""


# ------------------------------------------------------------------ data on disk
class DataNotFoundError(CxrkitError, FileNotFoundError):
    """A data folder is missing or does not have the VinBigData layout."""


class DicomReadError(CxrkitError, RuntimeError):
    """A DICOM file could not be turned into an image; says which file and why.

    Attributes:
        path: the file, as a string.
        reason: what is wrong with it, in words (and what to do, where known).
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read DICOM file {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from (path, reason) so the error survives multiprocessing pickling.
        return (type(self), (self.path, self.reason))


class PreprocessError(CxrkitError, RuntimeError):
    """A folder cannot be converted as asked: the output holds another size, the
    disk is full, or two input files give one image id (``x.dicom`` and ``x.dcm``)."""


class OverwriteError(CxrkitError, FileExistsError):
    """An output would replace what must be kept: an input of the same command, a
    non-empty folder that cxrkit did not write, a finished run (without ``--resume``
    or ``--overwrite``) or a run folder another training is writing."""


# -------------------------------------------------------------------- settings
class ConfigError(CxrkitError, ValueError):
    """A setting or argument that cannot be used: an unknown model or schedule, a
    fraction outside (0, 1), a size that is not a number of pixels. The message
    names the setting, the value given and what is allowed."""


class ConfigTypeError(CxrkitError, TypeError):
    """An argument of the wrong kind (a float where a whole number is needed, a table
    where a path is expected); the message names the argument and its type."""


class UnknownNameError(CxrkitError, KeyError):
    """A name looked up in a fixed table is not there (a class name, a prediction key).

    ``str()`` is the plain message (a bare ``KeyError`` would show it quoted).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------------- tables
class AnnotationError(CxrkitError, ValueError):
    """An annotation or meta table is malformed; the message names file, line and image."""


class DatasetError(CxrkitError, ValueError):
    """An image or table the dataset needs is missing or does not match."""


class SubmissionError(CxrkitError, ValueError):
    """A submission that Kaggle would reject or mis-score; the message says where and why."""


# ---------------------------------------------------------------------- models
class WeightsError(CxrkitError, RuntimeError):
    """Pretrained weights could not be obtained (no internet, bad file, no such weights)."""


class CheckpointError(CxrkitError, RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to another model or class count."""


class ResumeError(CxrkitError, ValueError):
    """A run folder cannot be resumed with these settings (another schedule, rate, size...).

    Resuming continues *the same* run; a run with other settings belongs in another
    folder (start it from the old weights with ``weights=RUN/best.pt`` if you like).
    """


class FoldError(CxrkitError, ValueError):
    """A k-fold setting is impossible (a fold index outside ``0..K-1``, fewer than 2
    folds or images) or out-of-fold tables do not cover each image exactly once."""


class UnsupportedError(CxrkitError, NotImplementedError):
    """A way of running that cxrkit does not offer (yet), e.g. the classifier under torchrun."""


class NonFiniteLossError(CxrkitError, FloatingPointError):
    """The training loss became NaN or infinite; training on would waste the time.

    Under DistributedDataParallel every rank raises it with the same message, naming
    the rank(s) whose loss was not finite (see :func:`cxrkit.distributed.any_rank`).
    """
