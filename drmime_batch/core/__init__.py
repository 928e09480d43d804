"""The DRMIME maths on torch tensors: transforms, MINE, pyramids, tissue masks, initialisation, optimisation.

No files, no dask, no console here; see :mod:`drmime_batch.core._convention` for the one
coordinate convention every other layer follows.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# The names are imported on first use (PEP 562) so that the torch-free submodules (the coordinate
# convention, displacement fields) which ``drmime_batch.io`` and ``drmime_batch.transforms`` need do
# not pull torch in through this package's ``__init__``: applying a stored transform needs no torch.
_SUBMODULE = {
    "METRICS": "_metrics",
    "METRIC_NAMES": "_config",
    "RegistrationConfig": "_config",
    "RegistrationResult": "_result",
    "StatisticsNetwork": "_mine",
    "TRANSFORMS": "_bases",
    "apply_matrix": "_convention",
    "basis": "_bases",
    "dv_bound": "_mine",
    "exp_transform": "_bases",
    "gaussian_pyramid": "_pyramid",
    "level_to_full_matrix": "_convention",
    "mask_fraction": "_mask",
    "matrix_from_crop": "_convention",
    "matrix_from_level": "_convention",
    "matrix_from_physical": "_convention",
    "matrix_to_level": "_convention",
    "matrix_to_physical": "_convention",
    "ncc": "_metrics",
    "negative_mse": "_metrics",
    "normalised_frame_matrix": "_convention",
    "optimise": "_optimise",
    "parzen_mi": "_metrics",
    "resize_mask": "_mask",
    "resolve_device": "_optimise",
    "sampling_weights": "_pyramid",
    "tissue_mask": "_mask",
}


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule on first access (and cache it here)."""
    module = _SUBMODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
