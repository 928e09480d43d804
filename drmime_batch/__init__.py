"""drmime_batch: batch registration of whole-slide histology images with DRMIME on Dask.

The public surface is small: :func:`register` (one pair of arrays), :func:`register_files` (one
pair of slide files, full-resolution result), :class:`RegistrationResult` (the immutable record)
and :class:`RegistrationConfig` (every knob, with defaults that work); :class:`PairOutcome` is what
a batch records of each pair (:mod:`drmime_batch.outcome`).
Whole-slide IO lives in :mod:`drmime_batch.io`, the batch engine in :mod:`drmime_batch.engine`,
landmark evaluation in :mod:`drmime_batch.evaluation`.

The names are imported lazily so that queue commands (``status``, ``cancel``) start without
importing torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("drmime-batch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from drmime_batch._api import register
    from drmime_batch._files import FileRegistration, register_files
    from drmime_batch.core import RegistrationConfig, RegistrationResult
    from drmime_batch.outcome import ImageSide, PairOutcome
    from drmime_batch.transforms import open_transform

__all__ = [
    "FileRegistration",
    "ImageSide",
    "PairOutcome",
    "RegistrationConfig",
    "RegistrationResult",
    "__version__",
    "open_transform",
    "register",
    "register_files",
]


def __getattr__(name: str) -> Any:
    if name == "register":
        from drmime_batch._api import register

        return register
    if name in ("register_files", "FileRegistration"):
        from drmime_batch import _files

        return getattr(_files, name)
    if name in ("PairOutcome", "ImageSide"):
        from drmime_batch import outcome

        return getattr(outcome, name)
    if name in ("RegistrationConfig", "RegistrationResult"):
        from drmime_batch import core

        return getattr(core, name)
    if name == "open_transform":
        from drmime_batch.transforms import open_transform

        return open_transform
    raise AttributeError(f"module 'drmime_batch' has no attribute {name!r}")
