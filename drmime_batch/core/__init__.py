"""The DRMIME maths on torch tensors: transforms, MINE, pyramids, tissue masks, initialisation, optimisation.

No files, no dask, no console here; see :mod:`drmime_batch.core._convention` for the one
coordinate convention every other layer follows.
"""

from __future__ import annotations

from drmime_batch.core._bases import TRANSFORMS, basis, exp_transform
from drmime_batch.core._config import METRIC_NAMES, RegistrationConfig
from drmime_batch.core._convention import (
    apply_matrix,
    level_to_full_matrix,
    matrix_from_crop,
    matrix_from_level,
    matrix_from_physical,
    matrix_to_level,
    matrix_to_physical,
    normalised_frame_matrix,
)
from drmime_batch.core._mask import mask_fraction, resize_mask, tissue_mask
from drmime_batch.core._metrics import METRICS, ncc, negative_mse, parzen_mi
from drmime_batch.core._mine import StatisticsNetwork, dv_bound
from drmime_batch.core._optimise import optimise, resolve_device
from drmime_batch.core._pyramid import gaussian_pyramid, sampling_weights
from drmime_batch.core._result import RegistrationResult

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "TRANSFORMS",
    "RegistrationConfig",
    "RegistrationResult",
    "StatisticsNetwork",
    "apply_matrix",
    "basis",
    "dv_bound",
    "exp_transform",
    "gaussian_pyramid",
    "level_to_full_matrix",
    "mask_fraction",
    "matrix_from_crop",
    "matrix_from_level",
    "matrix_from_physical",
    "matrix_to_level",
    "matrix_to_physical",
    "ncc",
    "negative_mse",
    "normalised_frame_matrix",
    "optimise",
    "parzen_mi",
    "resize_mask",
    "resolve_device",
    "sampling_weights",
    "tissue_mask",
]
