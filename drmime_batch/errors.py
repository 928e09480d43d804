"""Every exception drmime_batch raises on purpose.

All of them derive from :class:`DrmimeError`, and each one also derives from the builtin a caller
would naturally catch (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps
working for people who do not know this module. Messages name the offending file, argument or
pair id, what was expected and what was received, and never a command-line flag (the library
does not know how it was called). Warnings are :class:`DrmimeWarning`.

A ``DrmimeError`` is a problem of the input or the environment, told in one line; any other
exception escaping drmime_batch is a bug, and the command line and the queue keep its traceback.
"""

from __future__ import annotations

__all__ = [
    "ClusterConfigError",
    "ConfigError",
    "CorruptImageError",
    "DrmimeError",
    "ImageNotFoundError",
    "IncompleteOutputError",
    "InputImageError",
    "LandmarkError",
    "ManifestError",
    "OutputStoreError",
    "QueueError",
    "QueueLockedError",
    "RegistrationDivergedError",
    "StorageAccessError",
    "UnsupportedFormatError",
    "DrmimeWarning",
]


class DrmimeError(Exception):
    """Root of every error raised on purpose by drmime_batch."""


class ConfigError(DrmimeError, ValueError, TypeError):
    """A setting (a registration option, a run option, an argument) is unknown, of a wrong type or out of range.

    Also a ``TypeError`` (what an unknown keyword argument raises in Python) and a ``ValueError``.
    """


class InputImageError(DrmimeError, ValueError):
    """An image array is unusable: wrong rank, empty, all-NaN, constant, ..."""


class ImageNotFoundError(DrmimeError, FileNotFoundError):
    """An image path does not exist."""


class StorageAccessError(DrmimeError, OSError):
    """An object store refused or failed a request (credentials, permissions, network)."""


class UnsupportedFormatError(DrmimeError, ValueError):
    """A file exists but is not a format drmime_batch can read."""


class CorruptImageError(DrmimeError, ValueError):
    """A file claims a supported format but its content cannot be decoded (truncated, damaged)."""


class RegistrationDivergedError(DrmimeError, RuntimeError):
    """The optimiser produced a non-finite or degenerate transform."""


class ManifestError(DrmimeError, ValueError):
    """A batch manifest is unreadable or inconsistent; nothing from it was queued."""


class QueueError(DrmimeError, RuntimeError):
    """The persistent queue cannot do what was asked."""


class QueueLockedError(QueueError):
    """Another ``run`` driver is alive on the same queue."""


class LandmarkError(DrmimeError, ValueError):
    """A landmark file is missing or malformed."""


class ClusterConfigError(DrmimeError, ValueError):
    """A cluster configuration (dask-jobqueue / Kubernetes / TLS) is invalid."""


class OutputStoreError(DrmimeError, ValueError):
    """An output store or pair id cannot be written as asked (bad pair id, wrong zarr format)."""


class IncompleteOutputError(DrmimeError, FileNotFoundError):
    """A pair's output is missing or was never completed (interrupted write)."""


class DrmimeWarning(UserWarning):
    """Something worked, but not as asked: non-finite pixels treated as background, a fallback taken.

    Filter them as one class: ``warnings.simplefilter("error", DrmimeWarning)`` makes them fatal.
    """
