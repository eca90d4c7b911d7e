"""Every error Graftwork raises on purpose, in one tree.

The root is :class:`GraftError`; each subclass also inherits the built-in exception that matches it,
so a caller can catch either (`except GraftError`, `except FileExistsError`). Each carries the object
it is about as an attribute (a path, a tensor name, a track, an id: the names in its annotations),
given as keyword arguments when it is raised, and its message says what is wrong and how to fix it::

    raise ModelFolderError(f"{path} has no config.json; pass a Hugging Face model folder.", path=path)

This module is the bottom layer: tasks, storage, flows and deployments all import it, and it imports
nothing of Graftwork's.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar


class GraftError(Exception):
    """The root of every error Graftwork raises on purpose.

    Attributes are declared by each subclass's annotations and default to None; passing a keyword
    the class does not declare is a programming error (TypeError).
    """

    fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = [name for name in inspect.get_annotations(cls) if name != "fields"]
        cls.fields = tuple(dict.fromkeys((*cls.fields, *own)))

    def __init__(self, message: str, /, **about: Any) -> None:
        super().__init__(message)
        unknown = sorted(set(about) - set(self.fields))
        if unknown:
            raise TypeError(f"{type(self).__name__} carries {', '.join(self.fields) or 'nothing'}, not {unknown}")
        for name in self.fields:
            setattr(self, name, about.get(name))

    def __str__(self) -> str:  # KeyError and OSError would otherwise decorate the message
        return str(self.args[0]) if self.args else ""


# -- files and folders -------------------------------------------------------------------------


class OutputExistsError(GraftError, FileExistsError):
    """The output path exists already and overwriting was not asked for."""

    path: Path | str | None


class DiskFullError(GraftError, OSError):
    """The device (or the quota) holding a path Graftwork writes to is full; nothing was left half-written."""

    path: Path | str | None


class NoAccessError(GraftError, PermissionError):
    """A path Graftwork writes to (or reads) may not be written (or read) by this user, or is read-only."""

    path: Path | str | None


class ModelFolderError(GraftError, ValueError):
    """A model or diff folder is missing, incomplete or malformed."""

    path: Path | str | None


class PickleWeightsError(GraftError, PermissionError):
    """A folder holds only pickle weights (`*.bin`, `*.pt`) and the caller did not opt in."""

    path: Path | str | None


class CodecError(GraftError, ValueError):
    """A compressed blob is malformed, truncated, or decodes to other bytes than were stored."""

    what: str | None


# -- the engine --------------------------------------------------------------------------------


class ArchitectureMismatchError(GraftError, ValueError):
    """The models do not share one architecture, so their weights cannot be combined."""

    path: Path | str | None


class TensorSetMismatchError(GraftError, KeyError):
    """A tensor is present in one model and missing from another."""

    tensor: str | None


class ShapeMismatchError(GraftError, ValueError):
    """A tensor has different shapes in two models and no alignment rule applies."""

    tensor: str | None
    shapes: dict[str, tuple[int, ...]] | None


class UnsupportedDtypeError(GraftError, TypeError):
    """A tensor is not a floating-point tensor the engine can do arithmetic on."""

    tensor: str | None
    dtype: str | None


class NonFiniteError(GraftError, ArithmeticError):
    """A tensor holds NaN or Inf, in an input or in the result."""

    tensor: str | None


class InexactDeltaError(GraftError, ArithmeticError):
    """No stored dtype lets base + Δ give back the fine-tuned tensor bit for bit."""

    tensor: str | None


class VocabularyError(GraftError, ValueError):
    """Vocabulary rows cannot be aligned between two models."""

    role: str | None


# -- the Hub ------------------------------------------------------------------------------------


class ModelRefError(GraftError, ValueError):
    """A model reference (`org/name@rev`, a revision) is malformed, or not pinned where a pinned one is needed."""

    ref: str | None


class HubNotFoundError(GraftError, LookupError):
    """A Hub repository, branch, tag or commit does not exist (or is private and no valid token was given)."""

    ref: str | None


class HubUnavailableError(GraftError, ConnectionError):
    """The Hub cannot be reached (or offline mode is on) and the files are not in the local cache."""

    ref: str | None


class HubPermissionError(GraftError, PermissionError):
    """The Hub refused a request: the token is missing, invalid or lacks the write permission."""

    ref: str | None


# -- fine-tuning, evaluation, the test bed ------------------------------------------------------


class FinetuneDataError(GraftError, ValueError):
    """The fine-tuning data file is missing, empty or malformed."""

    path: Path | str | None


class FinetuneConfigError(GraftError, ValueError):
    """The arguments of a fine-tuning run contradict each other."""

    field: str | None


class LaunchConfigError(GraftError, ValueError):
    """An accelerate config file is missing, malformed, or declares another kind of distribution."""

    path: Path | str | None


class PlanModelError(GraftError, LookupError):
    """The config of the model a track's fine-tune would train cannot be found, so it cannot be planned."""

    track: str | None


class GpuFitError(GraftError, ValueError):
    """A track's fine-tune needs more GPU memory per process (or more GPUs) than the pool has."""

    track: str | None


class LaunchError(GraftError, ChildProcessError):
    """A fine-tuning launch exited with a non-zero status."""

    command: list[str] | None
    status: int | None


class TrainerCommandError(GraftError, ChildProcessError):
    """A track's own training command could not start, exited with a non-zero status, ran past its timeout, or
    names a file whose bytes changed since the track was added."""

    command: list[str] | None
    status: int | None


class SuiteError(GraftError, ValueError):
    """A suite file is malformed or names tasks lm-eval cannot find."""

    suite: str | None


class EvalBackendError(GraftError, RuntimeError):
    """This machine cannot run a suite the way its settings ask: no such CUDA device, or no vLLM installed."""

    suite: str | None


class TestbedError(GraftError, ValueError):
    """A test bed folder cannot be built or read."""

    __test__ = False  # not a pytest test class
    path: Path | str | None


# -- tracks and webhooks ------------------------------------------------------------------------


class TrackError(GraftError, ValueError):
    """A track file is missing, not YAML, or not a valid track."""

    track: str | None


class WebhookPayloadError(GraftError, ValueError):
    """A delivery's body is not JSON, or not a Hub webhook payload."""

    field: str | None


class WebhookSecretError(GraftError, ValueError):
    """The receiver was given no secret, so it could not tell the Hub's deliveries from anyone's."""


class RecorderStoppedError(GraftError, RuntimeError):
    """The webhook receiver's recorder is not running (not started yet, or stopped): the delivery is not recorded."""


class ReleaseOrderError(GraftError, RuntimeError):
    """A release's run cannot start yet: the release it carries from is not done."""

    release: str | None


class ReleaseChangedError(GraftError, ValueError):
    """A local release's files are no longer those it was recorded with (its folder was changed in place), or
    it is superseded by the release that holds them now: a run would read other bytes than its sha names."""

    release: str | None
    revision: str | None


class LocalPrefectError(GraftError, RuntimeError):
    """The Prefect server a command starts for itself did not come up."""

    path: Path | str | None


class PrefectUnreachableError(GraftError, ConnectionError):
    """The Prefect API a long-running command talks to stopped answering."""

    url: str | None


class RunStartError(GraftError, RuntimeError):
    """A track's run could not be started; nothing of the delivery was recorded."""

    track: str | None


# -- the registry -------------------------------------------------------------------------------


class DatabaseError(GraftError, RuntimeError):
    """The database cannot be reached or its URL is wrong."""

    url: str | None


class SchemaTooNewError(GraftError, RuntimeError):
    """The database was migrated by a newer Graftwork than this one."""

    revision: str | None


class ImmutableRowError(GraftError, RuntimeError):
    """Something tried to change or delete an artifact row."""

    row: str | None


class NotFoundError(GraftError, LookupError):
    """No row has the id or name asked for."""

    ref: str | None


class PromotionError(GraftError, ValueError):
    """A promotion or rollback the channel's history does not allow: another track's candidate, the
    champion itself, or a rollback with no earlier champion to go back to."""

    track: str | None


class ChampionChangedError(PromotionError):
    """A decision measured against one champion, or meant to replace it, found another one in place when it was
    to be recorded: another decision on the channel was recorded first, and this one is recorded nowhere."""


class BlobMissingError(GraftError, FileNotFoundError):
    """A blob a row points to is not in the blob store."""

    blob: str | None
    owner: str | None


class BlobStoreError(GraftError, NotADirectoryError):
    """The blob store's URL, or a path inside it, is not what the store needs (a folder, a file)."""

    path: str | None


class BlobCorruptError(GraftError, ValueError):
    """A blob's bytes do not hash to its name."""

    blob: str | None
    owner: str | None
