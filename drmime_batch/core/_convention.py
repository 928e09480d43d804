"""The one coordinate convention of drmime_batch, written down once.

Pixel coordinates
    A point is ``(x, y)`` with ``x`` = column and ``y`` = row, in **full-resolution pixels** of its
    image, origin at the **centre** of the top-left pixel (so pixel ``(i, j)`` covers
    ``[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]``).

The registration matrix
    A 3x3 float64 matrix ``M`` mapping a **fixed** pixel to the **moving** pixel it corresponds to,
    in homogeneous coordinates: ``[x_m, y_m, w] = M @ [x_f, y_f, 1]``, then ``(x_m/w, y_m/w)``
    (``w == 1`` for affine matrices). Warping is backward: ``registered(p) = moving(M @ p)``, so the
    registered image lives on the fixed image's grid. Landmarks map the same way: a fixed landmark
    ``p`` lands on the moving landmark ``M @ p``.

Pyramid levels
    A level of downsample factors ``(sx, sy)`` (full-res width / level width, full-res height /
    level height) has its pixel centres at ``p0 = s * (p_level + 0.5) - 0.5``: the pixel *edges* of
    every level coincide with the full-resolution edges. This is exactly what
    ``torch.nn.functional.grid_sample(..., align_corners=False)`` assumes, so one normalised
    coordinate serves every level.

Physical units
    When pixel sizes (micrometres per pixel, ``(px, py)``) are known, the same map in micrometres is
    ``S_m @ M @ inv(S_f)`` with ``S = diag(px, py, 1)`` (see :func:`matrix_to_physical`).

Everything here is plain numpy on 3x3 matrices: tiny, exact (float64) and shared by the core, the
readers and the warp.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from drmime_batch.errors import ConfigError

__all__ = [
    "apply_matrix",
    "level_to_full_matrix",
    "matrix_from_crop",
    "matrix_from_level",
    "matrix_to_level",
    "matrix_to_physical",
    "matrix_from_physical",
    "normalised_frame_matrix",
]


def _as_pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    if np.isscalar(value):
        return float(value), float(value)  # type: ignore[arg-type]
    seq = tuple(float(v) for v in value)  # type: ignore[union-attr]
    if len(seq) != 2:
        raise ConfigError(f"{name} must be a number or an (x, y) pair, got {value!r}")
    return seq


def level_to_full_matrix(downsample: float | Sequence[float]) -> np.ndarray:
    """Matrix taking a level's pixel coordinates to full-resolution pixel coordinates.

    Parameters
    ----------
    downsample : float or (sx, sy)
        Full-resolution size divided by the level's size, along x (columns) and y (rows).

    Returns
    -------
    ndarray, shape (3, 3)
        ``L`` with ``p_full = L @ p_level``.

    Examples
    --------
    >>> level_to_full_matrix(2.0) @ [0.0, 0.0, 1.0]
    array([0.5, 0.5, 1. ])
    """
    sx, sy = _as_pair(downsample, "downsample")
    return np.array([[sx, 0.0, 0.5 * (sx - 1.0)], [0.0, sy, 0.5 * (sy - 1.0)], [0.0, 0.0, 1.0]])


def matrix_from_level(
    matrix: np.ndarray,
    *,
    fixed_downsample: float | Sequence[float],
    moving_downsample: float | Sequence[float],
) -> np.ndarray:
    """Express a matrix found between two pyramid levels at full resolution.

    ``M_full = L_moving @ M_level @ inv(L_fixed)``.

    Examples
    --------
    >>> m = matrix_from_level(np.eye(3), fixed_downsample=4, moving_downsample=4)
    >>> np.allclose(m, np.eye(3))
    True
    """
    lf = level_to_full_matrix(fixed_downsample)
    lm = level_to_full_matrix(moving_downsample)
    return lm @ np.asarray(matrix, dtype=np.float64) @ np.linalg.inv(lf)


def matrix_from_crop(
    matrix: np.ndarray,
    *,
    fixed_offset: Sequence[float] = (0.0, 0.0),
    moving_offset: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
    """A matrix between two crops, as a matrix between the images they were cut from.

    Parameters
    ----------
    matrix : ndarray, shape (3, 3)
        Fixed-crop pixel -> moving-crop pixel.
    fixed_offset, moving_offset : (x, y)
        Pixel of the image at each crop's top-left pixel (column, row).

    Returns
    -------
    ndarray, shape (3, 3)
        Fixed-image pixel -> moving-image pixel.

    Examples
    --------
    >>> matrix_from_crop(np.eye(3), fixed_offset=(10, 20), moving_offset=(15, 5))[:2, 2]
    array([  5., -15.])
    """
    fx, fy = _as_pair(fixed_offset, "fixed_offset")
    mx, my = _as_pair(moving_offset, "moving_offset")
    to_moving = np.array([[1.0, 0.0, mx], [0.0, 1.0, my], [0.0, 0.0, 1.0]])
    from_fixed = np.array([[1.0, 0.0, -fx], [0.0, 1.0, -fy], [0.0, 0.0, 1.0]])
    out: np.ndarray = to_moving @ np.asarray(matrix, dtype=np.float64) @ from_fixed
    return out


def matrix_to_level(
    matrix: np.ndarray,
    *,
    fixed_downsample: float | Sequence[float],
    moving_downsample: float | Sequence[float],
) -> np.ndarray:
    """Inverse of :func:`matrix_from_level`: the full-resolution matrix seen between two levels."""
    lf = level_to_full_matrix(fixed_downsample)
    lm = level_to_full_matrix(moving_downsample)
    out: np.ndarray = np.linalg.inv(lm) @ np.asarray(matrix, dtype=np.float64) @ lf
    return out


def matrix_to_physical(
    matrix: np.ndarray,
    *,
    fixed_pixel_size: float | Sequence[float],
    moving_pixel_size: float | Sequence[float],
) -> np.ndarray:
    """The fixed → moving map in physical units (e.g. µm): ``S_m @ M @ inv(S_f)``."""
    fx, fy = _as_pair(fixed_pixel_size, "fixed_pixel_size")
    mx, my = _as_pair(moving_pixel_size, "moving_pixel_size")
    return np.diag([mx, my, 1.0]) @ np.asarray(matrix, dtype=np.float64) @ np.diag([1 / fx, 1 / fy, 1.0])


def matrix_from_physical(
    matrix: np.ndarray,
    *,
    fixed_pixel_size: float | Sequence[float],
    moving_pixel_size: float | Sequence[float],
) -> np.ndarray:
    """Inverse of :func:`matrix_to_physical`: back to full-resolution pixels."""
    fx, fy = _as_pair(fixed_pixel_size, "fixed_pixel_size")
    mx, my = _as_pair(moving_pixel_size, "moving_pixel_size")
    return np.diag([1 / mx, 1 / my, 1.0]) @ np.asarray(matrix, dtype=np.float64) @ np.diag([fx, fy, 1.0])


def normalised_frame_matrix(shape: Sequence[int], scale: float) -> np.ndarray:
    """Matrix taking full-resolution pixels of an image to its centred, isotropic frame.

    The optimiser works in ``u = (p - c) / scale`` with ``c`` the image centre
    ``((W - 1) / 2, (H - 1) / 2)``; one ``scale`` is shared by the fixed and the moving image so a
    rotation in the frame is a rotation in pixels, and ``u`` stays within about [-1, 1].

    Parameters
    ----------
    shape : (H, W) or (H, W, C)
        Full-resolution shape of the image.
    scale : float
        Pixels per frame unit (e.g. half the longer side of the larger image).
    """
    h, w = int(shape[0]), int(shape[1])
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    return np.array([[1 / scale, 0.0, -cx / scale], [0.0, 1 / scale, -cy / scale], [0.0, 0.0, 1.0]])


def grid_sample_matrix(shape: Sequence[int]) -> np.ndarray:
    """Matrix taking pixel coordinates of an ``(H, W)`` image to ``grid_sample`` coordinates.

    ``torch.nn.functional.grid_sample`` with ``align_corners=False`` addresses the image by
    ``[-1, 1]`` across its outer pixel edges: pixel centre ``x`` sits at ``(2 x + 1) / W - 1``.

    Examples
    --------
    >>> grid_sample_matrix((4, 8)) @ np.array([-0.5, 3.5, 1.0])  # left edge, bottom edge
    array([-1.,  1.,  1.])
    """
    h, w = int(shape[0]), int(shape[1])
    return np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points ``(x, y)`` through a 3x3 matrix (with the projective divide).

    Examples
    --------
    >>> apply_matrix(np.array([[1, 0, 5], [0, 1, -2], [0, 0, 1.0]]), np.array([[1.0, 1.0]]))
    array([[ 6., -1.]])
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ConfigError(f"points must have shape (N, 2), got {pts.shape}")
    hom = np.c_[pts, np.ones(len(pts))] @ np.asarray(matrix, dtype=np.float64).T
    out: np.ndarray = hom[:, :2] / hom[:, 2:3]
    return out
