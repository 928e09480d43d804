"""Transform bases and the matrix-exponential map.

A transform is ``exp(sum_i theta_i B_i)`` over a basis of 3x3 generator matrices, acting on the
centred isotropic frame of :func:`drmime_batch.core._convention.normalised_frame_matrix`. The
parameters are unconstrained; the exponential always gives an invertible matrix (positive
determinant), ``theta = 0`` is the identity and ``exp(-A)`` is the inverse of ``exp(A)``.

Sub-bases nest: translation (2) ⊂ rigid (3) ⊂ similarity (4) ⊂ affine (6) ⊂ homography (8).
"""

from __future__ import annotations

from typing import Literal

import torch

from drmime_batch.config import TRANSFORMS  # the names and sizes, kept beside the config (torch-free)
from drmime_batch.errors import ConfigError

__all__ = ["TRANSFORMS", "TransformKind", "basis", "exp_transform"]

TransformKind = Literal["translation", "rigid", "similarity", "affine", "homography"]



def _unit(i: int, j: int) -> list[list[float]]:
    m = [[0.0] * 3 for _ in range(3)]
    m[i][j] = 1.0
    return m


def _generators() -> list[list[list[float]]]:
    e = _unit

    def add(a: list[list[float]], b: list[list[float]], s: float = 1.0) -> list[list[float]]:
        return [[a[i][j] + s * b[i][j] for j in range(3)] for i in range(3)]

    return [
        e(0, 2),  # translation x
        e(1, 2),  # translation y
        add(e(1, 0), e(0, 1), -1.0),  # rotation (antisymmetric)
        add(e(0, 0), e(1, 1)),  # isotropic scale
        add(e(0, 1), e(1, 0)),  # shear (symmetric, traceless)
        add(e(0, 0), e(1, 1), -1.0),  # anisotropic stretch (traceless)
        e(2, 0),  # perspective x
        e(2, 1),  # perspective y
    ]


def basis(
    kind: str, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """The generator matrices of a transform kind.

    Parameters
    ----------
    kind : {"translation", "rigid", "similarity", "affine", "homography"}
    dtype, device
        Of the returned tensor.

    Returns
    -------
    Tensor, shape (K, 3, 3)
        ``K`` = 2, 3, 4, 6 or 8.

    Examples
    --------
    >>> basis("rigid").shape
    torch.Size([3, 3, 3])
    """
    if kind not in TRANSFORMS:
        raise ConfigError(f"transform must be one of {sorted(TRANSFORMS)}, got {kind!r}")
    gens = _generators()[: TRANSFORMS[kind]]
    return torch.tensor(gens, dtype=dtype, device=device)


def exp_transform(theta: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """The matrix exponential of ``sum_i theta_i B_i``.

    Parameters
    ----------
    theta : Tensor, shape (K,)
        Unconstrained parameters.
    bases : Tensor, shape (K, 3, 3)
        From :func:`basis`.

    Returns
    -------
    Tensor, shape (3, 3)
        Differentiable in ``theta``. For homographies the result is scaled so that its bottom-right
        entry is 1 (a homography is defined up to scale).

    Examples
    --------
    >>> b = basis("affine")
    >>> bool(torch.allclose(exp_transform(torch.zeros(6), b), torch.eye(3)))
    True
    """
    generator = torch.einsum("k,kij->ij", theta, bases)
    matrix: torch.Tensor = torch.linalg.matrix_exp(generator)
    return matrix / matrix[2, 2]
