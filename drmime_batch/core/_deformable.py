"""DRMIME's non-rigid stage: a stationary velocity field on a coarse grid, trained by the same MINE.

After the linear stage has converged to the frame matrix ``A`` (fixed frame → moving frame), a
fixed-frame point ``p`` is mapped to ``A (p + u(p))`` where ``u = exp(v) - id`` is the
displacement of the flow of a stationary velocity field ``v``: ``v`` lives on a coarse grid over
the fixed image, and its exponential is computed by scaling and squaring, so the map is a
diffeomorphism (no folds when ``v`` is smooth) and its inverse is the exponential of ``-v``.

The objective is the linear stage's: one statistics network (the linear stage's, trained on),
fresh points drawn from every pyramid level at every iteration, symmetric (half the points start in
the moving image and go back through the inverse map), minus the mean of the per-level
Donsker–Varadhan bounds; plus a smoothness penalty on the velocity's spatial derivatives (on
their deviation from the mean for the deformable stage, so a global affine correction of the linear
result is free).
Afterwards the deformation must raise the linear result's comparable score (joint-histogram MI at
a few scales) and keep the Jacobian determinant positive, else the linear result stands.

All coordinates here are the optimiser's frame (centred, isotropic, about [-1, 1] over the longer
side); :func:`field_to_pixels` turns a field into full-resolution pixels for storage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DisplacementGrid", "VelocityField", "jacobian_stats"]

#: Scaling-and-squaring steps (the velocity is divided by 2**steps, then composed steps times).
SQUARINGS = 6


@dataclass
class DisplacementGrid:
    """A displacement sampled on a regular grid of the fixed frame (bilinear between nodes).

    Attributes
    ----------
    values : Tensor, shape (2, gh, gw)
        ``(dx, dy)`` at the nodes, frame units.
    lower, upper : Tensor, shape (2,)
        Frame coordinates ``(x, y)`` of the first and last nodes; beyond them the border value holds.
    """

    values: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Displacement at frame points ``(N, 2)`` → ``(N, 2)``."""
        return _sample(self.values, points, self.lower, self.upper)


def _sample(values: torch.Tensor, points: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    grid = (points - lower) / (upper - lower) * 2 - 1
    out = F.grid_sample(values.unsqueeze(0).to(points.dtype), grid.view(1, 1, -1, 2), mode="bilinear",
                        padding_mode="border", align_corners=True)
    return out.view(2, -1).T


class VelocityField(torch.nn.Module):
    """The trainable velocity ``v`` on a ``(gh, gw)`` grid spanning the fixed image's frame box.

    Parameters
    ----------
    lower, upper : sequence of float
        Frame ``(x, y)`` of the fixed image's top-left and bottom-right corners.
    cells : int
        Grid cells along the longer side (the shorter side gets as many as keep cells square).

    Examples
    --------
    >>> vf = VelocityField((-1.0, -0.5), (1.0, 0.5), cells=8)
    >>> tuple(vf.velocity.shape), vf.spacing
    ((2, 5, 9), 0.25)
    >>> u = vf.displacement()  # zero velocity: the identity
    >>> float(u(torch.zeros(3, 2, dtype=torch.float64)).detach().abs().max())
    0.0
    """

    lower: torch.Tensor
    upper: torch.Tensor

    def __init__(self, lower: tuple[float, float], upper: tuple[float, float], cells: int,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> None:
        super().__init__()
        lo = torch.as_tensor(lower, dtype=dtype, device=device)
        hi = torch.as_tensor(upper, dtype=dtype, device=device)
        extent = hi - lo
        self.spacing = float(extent.max()) / cells
        gw, gh = (int(max(2, math.ceil(float(e) / self.spacing - 1e-9))) + 1 for e in extent)
        # centre the node lattice on the box (it may overhang by less than a cell)
        centre = (lo + hi) / 2
        half = torch.tensor([(gw - 1) / 2, (gh - 1) / 2], dtype=dtype, device=device) * self.spacing
        self.register_buffer("lower", centre - half)
        self.register_buffer("upper", centre + half)
        self.velocity = torch.nn.Parameter(torch.zeros(2, gh, gw, dtype=dtype, device=device))
        self._node_cache: dict[tuple[int, int, torch.dtype, torch.device], torch.Tensor] = {}

    def _nodes(self, gh: int, gw: int) -> torch.Tensor:
        # computed once per grid shape: reading the corners as numbers waits for the device, and
        # the stage integrates the field twice per iteration
        key = (gh, gw, self.velocity.dtype, self.velocity.device)
        cached = self._node_cache.get(key)
        if cached is not None:
            return cached
        ys = torch.linspace(float(self.lower[1]), float(self.upper[1]), gh, dtype=self.velocity.dtype,
                            device=self.velocity.device)
        xs = torch.linspace(float(self.lower[0]), float(self.upper[0]), gw, dtype=self.velocity.dtype,
                            device=self.velocity.device)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        nodes = torch.stack([xx, yy], -1).reshape(-1, 2)
        self._node_cache[key] = nodes
        return nodes

    def displacement(self, sign: float = 1.0, refine: int = 1) -> DisplacementGrid:
        """``exp(sign * v) - id`` by scaling and squaring (differentiable).

        ``refine`` > 1 integrates on a grid that many times finer (the velocity interpolated
        bilinearly): the result is closer to the true exponential, so the forward and inverse
        maps undo each other more exactly (used for the stored field).
        """
        v: torch.Tensor = self.velocity
        if refine > 1:
            _, gh0, gw0 = v.shape
            v = F.interpolate(v.unsqueeze(0), size=((gh0 - 1) * refine + 1, (gw0 - 1) * refine + 1), mode="bilinear",
                              align_corners=True)[0]
        _, gh, gw = v.shape
        nodes = self._nodes(gh, gw)
        u = sign * v / 2**SQUARINGS
        for _ in range(SQUARINGS):
            flat = u.reshape(2, -1).T
            u = (flat + _sample(u, nodes + flat, self.lower, self.upper)).T.reshape(2, gh, gw)
        return DisplacementGrid(u, self.lower, self.upper)

    def roughness(self, *, free_affine: bool = False) -> torch.Tensor:
        """Mean squared spatial derivative of the velocity (dimensionless: frame units per frame unit).

        With ``free_affine`` the derivatives' mean over the grid is taken out first, so an affine
        velocity (constant derivatives) costs nothing and only local variation is penalised.

        Examples
        --------
        >>> vf = VelocityField((-1.0, -1.0), (1.0, 1.0), cells=4)
        >>> with torch.no_grad():
        ...     _ = vf.velocity[0].copy_(0.1 * torch.linspace(-1, 1, 5))  # v_x = 0.1 x: a stretch
        >>> round(float(vf.roughness().detach()), 6), float(vf.roughness(free_affine=True).detach()) < 1e-12
        (0.005, True)
        """
        v = self.velocity
        dx = (v[:, :, 1:] - v[:, :, :-1]) / self.spacing
        dy = (v[:, 1:, :] - v[:, :-1, :]) / self.spacing
        if free_affine:
            dx = dx - dx.mean((1, 2), keepdim=True)
            dy = dy - dy.mean((1, 2), keepdim=True)
        return (dx**2).mean() + (dy**2).mean()


def jacobian_stats(u: DisplacementGrid, lower: torch.Tensor, upper: torch.Tensor, n: int = 128) -> dict[str, float]:
    """Jacobian determinant of ``p -> p + u(p)`` over the fixed image's box: minimum and percentiles.

    A minimum above zero means no fold. Evaluated by finite differences on an ``n``-point grid.
    """
    with torch.no_grad():
        dtype, device = u.values.dtype, u.values.device
        xs = torch.linspace(float(lower[0]), float(upper[0]), n, dtype=dtype, device=device)
        ys = torch.linspace(float(lower[1]), float(upper[1]), n, dtype=dtype, device=device)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pts = torch.stack([xx, yy], -1).reshape(-1, 2)
        phi = (pts + u(pts)).reshape(n, n, 2)
        hx, hy = float(xs[1] - xs[0]), float(ys[1] - ys[0])
        dphi_dx = (phi[:, 1:, :] - phi[:, :-1, :])[:-1] / hx
        dphi_dy = (phi[1:, :, :] - phi[:-1, :, :])[:, :-1] / hy
        det = dphi_dx[..., 0] * dphi_dy[..., 1] - dphi_dx[..., 1] * dphi_dy[..., 0]
        q = torch.quantile(det.flatten().float(), torch.tensor([0.01, 0.5, 0.99], device=device))
    return {"jacobian_min": float(det.min()), "jacobian_p01": float(q[0]), "jacobian_p50": float(q[1]),
            "jacobian_p99": float(q[2])}


def frame_map(matrix: torch.Tensor, u: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``p -> matrix (p + u(p))`` on homogeneous frame points ``(3, N)`` (what the scorer maps)."""

    def apply(points: torch.Tensor) -> torch.Tensor:
        xy = points[:2].T / points[2:3].T
        moved = xy + u(xy.to(torch.float64)).to(xy.dtype)
        return matrix @ torch.cat([moved.T, torch.ones_like(moved[:, :1]).T], 0)

    return apply


def to_numpy(u: DisplacementGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values (2, gh, gw), lower (2,), upper (2,))`` as float64 numpy arrays."""
    return (u.values.detach().cpu().numpy().astype(np.float64), u.lower.detach().cpu().numpy().astype(np.float64),
            u.upper.detach().cpu().numpy().astype(np.float64))
