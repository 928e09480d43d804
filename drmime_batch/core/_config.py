"""The registration configuration lives in :mod:`drmime_batch.config` (torch-free); re-exported here."""

from __future__ import annotations

from drmime_batch.config import METRIC_NAMES, RegistrationConfig

__all__ = ["METRIC_NAMES", "RegistrationConfig"]
