"""Errors raised by Graftwork's tasks.

Every error inherits :class:`GraftError` and the built-in exception that matches it, so callers can
catch either. Messages name the object at fault and say how to fix it.
"""

from __future__ import annotations


class GraftError(Exception):
    """Base class of every error Graftwork raises on purpose."""


class ModelFolderError(GraftError, ValueError):
    """A model or diff folder is missing, incomplete or malformed."""


class PickleWeightsError(GraftError, PermissionError):
    """A folder holds only pickle weights (`*.bin`, `*.pt`) and the caller did not opt in."""


class ArchitectureMismatchError(GraftError, ValueError):
    """The models do not share one architecture, so their weights cannot be combined."""


class TensorSetMismatchError(GraftError, KeyError):
    """A tensor is present in one model and missing from another."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ShapeMismatchError(GraftError, ValueError):
    """A tensor has different shapes in two models and no alignment rule applies."""


class UnsupportedDtypeError(GraftError, TypeError):
    """A tensor is not a floating-point tensor the engine can do arithmetic on."""


class NonFiniteError(GraftError, ArithmeticError):
    """A tensor holds NaN or Inf, in an input or in the result."""


class VocabularyError(GraftError, ValueError):
    """Vocabulary rows cannot be aligned between two models."""


class OutputExistsError(GraftError, FileExistsError):
    """The output path exists already and overwriting was not asked for."""


class InexactDeltaError(GraftError, ArithmeticError):
    """No stored dtype lets base + Δ give back the fine-tuned tensor bit for bit."""


class ModelRefError(GraftError, ValueError):
    """A model reference (`org/name@rev`, a revision) is malformed, or not pinned where a pinned one is needed."""


class HubNotFoundError(GraftError, LookupError):
    """A Hub repository, branch, tag or commit does not exist (or is private and no valid token was given)."""


class HubUnavailableError(GraftError, ConnectionError):
    """The Hub cannot be reached (or offline mode is on) and the files are not in the local cache."""


class HubPermissionError(GraftError, PermissionError):
    """The Hub refused a request: the token is missing, invalid or lacks the write permission."""
