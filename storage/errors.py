"""Errors of the registry: each names the object at fault and says how to fix it."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of the registry's errors."""


class DatabaseError(StorageError, RuntimeError):
    """The database cannot be reached or its URL is wrong."""


class SchemaTooNewError(StorageError, RuntimeError):
    """The database was migrated by a newer Graftwork than this one."""


class ImmutableRowError(StorageError, RuntimeError):
    """Something tried to change or delete an artifact row."""


class NotFoundError(StorageError, LookupError):
    """No row has the id or name asked for."""


class BlobMissingError(StorageError, FileNotFoundError):
    """A blob a row points to is not in the blob store."""


class BlobCorruptError(StorageError, ValueError):
    """A blob's bytes do not hash to its name."""
