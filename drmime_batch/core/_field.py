"""A deformable transform's displacement field in pixel coordinates, and mapping points through it.

The deformable stage maps a fixed pixel ``p`` to the moving pixel ``M (p + d(p))``: the displacement
``d`` acts in the fixed image before the linear matrix ``M`` (the convention of
:mod:`drmime_batch.core._convention`). ``d`` is stored on a regular grid of nodes (``origin`` is
the fixed pixel of node ``(0, 0)``, ``spacing`` the pixels between nodes), bilinear between nodes
and constant beyond the border nodes. The field is the flow of a stationary velocity, so the
inverse map is known on the same grid: ``q -> r + d_inv(r)`` with ``r = M^-1 q``, polished by a
few fixed-point steps of the forward map (:meth:`DisplacementField.invert`).

Numpy only (no torch): readers, the warp and ``apply`` use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["DisplacementField", "map_points"]

Array = NDArray[np.float64]


def _pair(values: Any) -> tuple[float, float]:
    a = np.broadcast_to(np.asarray(values, dtype=np.float64), (2,))
    return float(a[0]), float(a[1])


@dataclass(frozen=True)
class DisplacementField:
    """Forward and inverse displacements on one grid of fixed-image pixels.

    Attributes
    ----------
    forward, inverse : ndarray, shape (2, gh, gw)
        ``(dx, dy)`` in pixels at the nodes: ``d`` (fixed → moving, before the matrix) and ``d_inv``.
    origin : (x0, y0)
        Fixed-image pixel of node ``(0, 0)``.
    spacing : (sx, sy)
        Pixels between neighbouring nodes along x and y.

    Examples
    --------
    >>> f = DisplacementField(np.ones((2, 3, 3)), -np.ones((2, 3, 3)), origin=(0, 0), spacing=(10, 10))
    >>> f.displacement(np.array([[5.0, 5.0]])).tolist(), f.displacement(np.array([[99.0, -7.0]]), inverse=True).tolist()
    ([[1.0, 1.0]], [[-1.0, -1.0]])
    """

    forward: Array
    inverse: Array
    origin: tuple[float, float]
    spacing: tuple[float, float]

    def __post_init__(self) -> None:
        for name in ("forward", "inverse"):
            a = np.array(getattr(self, name), dtype=np.float64)
            if a.ndim != 3 or a.shape[0] != 2 or min(a.shape[1:]) < 2 or not np.all(np.isfinite(a)):
                raise ValueError(f"the {name} field must be a finite (2, gh, gw) array with gh, gw >= 2, "
                                 f"got shape {a.shape}")
            a.setflags(write=False)
            object.__setattr__(self, name, a)
        if self.forward.shape != self.inverse.shape:
            raise ValueError(f"forward and inverse fields differ in shape: {self.forward.shape} vs {self.inverse.shape}")
        object.__setattr__(self, "origin", _pair(self.origin))
        object.__setattr__(self, "spacing", _pair(self.spacing))
        if min(self.spacing) <= 0:
            raise ValueError(f"the field's spacing must be positive, got {self.spacing}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(gh, gw)`` nodes."""
        return int(self.forward.shape[1]), int(self.forward.shape[2])

    def displacement(self, xy: Any, *, inverse: bool = False) -> Array:
        """``d(p)`` (or ``d_inv(p)``) at fixed pixels ``xy`` ``(N, 2)``, bilinear, constant beyond the border."""
        from scipy import ndimage

        pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        gh, gw = self.grid_shape
        gx = np.clip((pts[:, 0] - self.origin[0]) / self.spacing[0], 0, gw - 1)
        gy = np.clip((pts[:, 1] - self.origin[1]) / self.spacing[1], 0, gh - 1)
        values = self.inverse if inverse else self.forward
        parts = [np.asarray(ndimage.map_coordinates(values[c], [gy, gx], order=1, mode="nearest"), dtype=np.float64)
                 for c in range(2)]
        return np.stack(parts, 1)

    def on_grid(self, xs: Any, ys: Any) -> Array:
        """``d`` at every pixel of the grid ``xs`` (columns) x ``ys`` (rows): ``(2, len(ys), len(xs))``.

        Separable bilinear interpolation (the field is bilinear in cells of an axis-aligned grid):
        a few array operations per block instead of a per-pixel lookup, the same values as
        :meth:`displacement`.

        Examples
        --------
        >>> f = DisplacementField(np.arange(8.0).reshape(2, 2, 2), np.zeros((2, 2, 2)), origin=(0, 0), spacing=(4, 4))
        >>> bool(np.allclose(f.on_grid([1.0, 3.0], [2.0])[:, 0, :].T, f.displacement([[1.0, 2.0], [3.0, 2.0]])))
        True
        """
        rows, ix, fx = self.grid_rows(xs, ys)
        out: Array = rows[:, :, ix] * (1 - fx) + rows[:, :, ix + 1] * fx
        return out

    def grid_rows(self, xs: Any, ys: Any) -> tuple[Array, NDArray[np.intp], Array]:
        """The first, row-wise half of :meth:`on_grid`: ``(rows, ix, fx)``.

        ``rows`` ``(2, len(ys), grid width)`` is the field interpolated along y at every row;
        ``on_grid = rows[:, :, ix] * (1 - fx) + rows[:, :, ix + 1] * fx`` (a compiled kernel can
        finish it pixel by pixel with the same operations, without full-block temporaries).
        """
        gh, gw = self.grid_shape

        def axis(v: Any, origin: float, spacing: float, n: int) -> tuple[NDArray[np.intp], Array]:
            g = np.clip((np.asarray(v, dtype=np.float64) - origin) / spacing, 0, n - 1)
            i0 = np.minimum(np.floor(g).astype(np.intp), n - 2)
            return i0, g - i0

        ix, fx = axis(xs, self.origin[0], self.spacing[0], gw)
        iy, fy = axis(ys, self.origin[1], self.spacing[1], gh)
        rows = (self.forward[:, iy, :] * (1 - fy)[None, :, None] + self.forward[:, iy + 1, :] * fy[None, :, None])
        return rows, ix, fx

    def invert(self, xy: Any, *, iterations: int = 8) -> Array:
        """The fixed pixels ``p`` with ``p + d(p) = xy``: the stored inverse, polished by fixed-point steps.

        The stored inverse is the exponential of the negated velocity, exact up to the grid's
        interpolation; a few steps ``p <- xy - d(p)`` from it make forward and inverse undo each
        other to a tiny fraction of a pixel (they converge while the field is a diffeomorphism).
        """
        target = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        p = target + self.displacement(target, inverse=True)
        for _ in range(iterations):
            p = target - self.displacement(p)
        return p

    def rescaled(self, downsample: Sequence[float], offset: Sequence[float] = (0.0, 0.0)) -> DisplacementField:
        """The field of a level (``downsample`` = full / level size) in full-resolution pixels.

        A level pixel ``p`` is the full-resolution pixel ``s (p + 0.5) - 0.5`` (plus ``offset``, the
        full-resolution position of a crop's top-left pixel): the grid moves with it and the
        displacements scale by ``s`` per axis.
        """
        sx, sy = _pair(downsample)
        ox, oy = _pair(offset)
        scale = np.array([sx, sy])[:, None, None]
        origin = (sx * (self.origin[0] + 0.5) - 0.5 + ox, sy * (self.origin[1] + 0.5) - 0.5 + oy)
        return DisplacementField(self.forward * scale, self.inverse * scale, origin=origin,
                                 spacing=(self.spacing[0] * sx, self.spacing[1] * sy))

    def shifted(self, offset: Sequence[float]) -> DisplacementField:
        """The same field for fixed pixels counted from ``offset`` earlier (a crop's top-left)."""
        return self.rescaled((1.0, 1.0), offset)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the grid is small: a few hundred nodes)."""
        return {"forward": self.forward.tolist(), "inverse": self.inverse.tolist(),
                "origin": list(self.origin), "spacing": list(self.spacing),
                "convention": "moving pixel = M @ (p + forward(p)); fixed pixel = r + inverse(r), r = M^-1 @ q"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DisplacementField:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(data["forward"], dtype=np.float64), np.asarray(data["inverse"], dtype=np.float64),
                   origin=data["origin"], spacing=data["spacing"])


def map_points(matrix: Any, field: DisplacementField | None, xy: Any, *, inverse: bool = False) -> Array:
    """Fixed pixels ``xy`` (N, 2) to moving pixels through ``M (p + d(p))``; ``inverse``: moving to fixed.

    Examples
    --------
    >>> m = np.array([[1, 0, 5], [0, 1, 0], [0, 0, 1.0]])
    >>> map_points(m, None, [[1.0, 2.0]]).tolist(), map_points(m, None, [[6.0, 2.0]], inverse=True).tolist()
    ([[6.0, 2.0]], [[1.0, 2.0]])
    """
    m = np.asarray(matrix, dtype=np.float64)
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)

    def apply(mat: Array, p: Array) -> Array:
        h: Array = np.c_[p, np.ones(len(p))] @ mat.T
        out: Array = h[:, :2] / h[:, 2:3]
        return out

    if not inverse:
        return apply(m, pts if field is None else pts + field.displacement(pts))
    r = apply(np.linalg.inv(m).astype(np.float64), pts)
    return r if field is None else field.invert(r)
