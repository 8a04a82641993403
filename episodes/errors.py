"""The errors of the episode store: every one is a StoreError, itself a ValueError."""

from __future__ import annotations

__all__ = ["StoreError", "MissingCameraError", "CorruptStoreError", "VersionError", "StoreNotFoundError"]


class StoreError(ValueError):
    """Base class of every error this module raises about a store or an episode."""


class MissingCameraError(StoreError):
    """A camera was requested that the store (or episode) does not contain."""


class CorruptStoreError(StoreError):
    """The file is missing its HDF5 structure: not HDF5, truncated, or a demo lacks datasets."""


class VersionError(StoreError):
    """The file is HDF5 but not a stepwise store of the version this code reads."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The store path does not exist (also a FileNotFoundError)."""

