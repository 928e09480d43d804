"""drmime_batch: batch registration of whole-slide histology images with DRMIME on Dask.

The public surface is small: :func:`register` (one pair of arrays), :class:`RegistrationResult`
(its immutable record) and :class:`RegistrationConfig` (every knob, with defaults that work).
Whole-slide IO lives in :mod:`drmime_batch.io`, the batch engine in :mod:`drmime_batch.engine`,
landmark evaluation in :mod:`drmime_batch.evaluation`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("drmime-batch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

from drmime_batch._api import register
from drmime_batch.core import RegistrationConfig, RegistrationResult

__all__ = ["RegistrationConfig", "RegistrationResult", "__version__", "register"]
