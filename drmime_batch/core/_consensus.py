"""The consensus of the tissue: the linear transform that best follows a coarse deformation.

The linear stage maximises one similarity over the whole image, so when the sections' pieces
moved apart a little between cuts (lobes, cores, torn edges) the most distinctive piece wins:
the result aligns that piece and leaves the rest off by more than any affine map has to. A short,
coarse deformable refinement with the same objective (4 grid cells by default) lets each region
settle where it belongs; the transform of the requested family that is closest to that map over
the fixed tissue then moves all the tissue consistently. "Closest" is robust (Tukey's biweight
after least squares): where a piece moved on its own, the transform follows the tissue that
agrees. The same idea as fitting an affine map to landmarks, with the deformation's dense
displacements as the landmarks.

Only the tissue the deformation sends inside the moving image counts (:func:`inside_moving`):
beyond its edge the similarity has nothing to compare, so the field there is whatever the
smoothness term extrapolates, and where sections are cropped tightly (tissue to the image
border, shifted between the two cuts) that is a sixth of the tissue.

Everything here is in the optimiser's frame coordinates (see :mod:`drmime_batch.core._optimise`).
"""

from __future__ import annotations

from typing import Callable

import torch

from drmime_batch.core._bases import exp_transform

__all__ = ["fit_transform_to_map", "inside_moving", "tissue_points", "tukey_weights"]

#: Most points the least-squares fit uses (a regular subsample of the tissue pixels).
MAX_POINTS = 16_384
#: Rounds of Tukey reweighting after the least-squares fit (see :func:`fit_transform_to_map`).
ROBUST_REWEIGHTS = 10
#: Tukey's cut-off in robust standard deviations of the residuals (95 % efficiency when they are normal).
TUKEY_C = 4.685


def tissue_points(mask: torch.Tensor | None, shape: tuple[int, int], to_frame: torch.Tensor,
                  limit: int = MAX_POINTS) -> torch.Tensor:
    """Frame coordinates ``(N, 2)`` of the fixed pixels in tissue, on a regular subgrid.

    Parameters
    ----------
    mask : Tensor, shape (H, W), optional
        1 = tissue; None (or a mask without tissue) takes every pixel.
    shape : (int, int)
        ``(H, W)`` of the fixed image the mask belongs to.
    to_frame : Tensor, shape (3, 3)
        Pixel → frame matrix of that image.
    limit : int
        At most about this many points (every ``s``-th row and column).

    Examples
    --------
    >>> m = torch.zeros(8, 8); m[2:6, 2:6] = 1
    >>> tissue_points(m, (8, 8), torch.eye(3, dtype=torch.float64)).shape
    torch.Size([16, 2])
    """
    h, w = shape
    device, dtype = to_frame.device, to_frame.dtype
    keep = torch.ones(h, w, dtype=torch.bool, device=device) if mask is None else (mask.to(device) > 0.5)
    if not bool(keep.any()):
        keep = torch.ones(h, w, dtype=torch.bool, device=device)
    count = int(keep.sum())
    step = max(1, int((count / limit) ** 0.5 + 0.999))
    sub = keep[::step, ::step]
    yy, xx = torch.nonzero(sub, as_tuple=True)
    px = torch.stack([xx.to(dtype) * step, yy.to(dtype) * step], 1)
    hom = torch.cat([px, torch.ones_like(px[:, :1])], 1) @ to_frame.T
    return hom[:, :2] / hom[:, 2:3]


def inside_moving(target: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                  frame_to_grid: torch.Tensor) -> torch.Tensor:
    """Which ``points`` the map ``target`` sends inside the moving image: a boolean ``(N,)``.

    Parameters
    ----------
    target : callable
        Fixed frame points ``(N, 2)`` → moving frame points ``(N, 2)``.
    points : Tensor, shape (N, 2)
    frame_to_grid : Tensor, shape (3, 3)
        Moving frame → ``grid_sample`` coordinates of the moving image (its pixels' outer edges
        at -1 and 1).

    Examples
    --------
    >>> pts = torch.tensor([[0.0, 0.0], [0.9, 0.0], [0.0, -0.8]], dtype=torch.float64)
    >>> inside_moving(lambda p: p + 0.3, pts, torch.eye(3, dtype=torch.float64)).tolist()
    [True, False, True]
    """
    with torch.no_grad():
        mapped = target(points)
        h = torch.cat([mapped, torch.ones_like(mapped[:, :1])], 1) @ frame_to_grid.T
        return (h[:, :2] / h[:, 2:3]).abs().le(1.0).all(1)


def fit_transform_to_map(
    target: Callable[[torch.Tensor], torch.Tensor],
    points: torch.Tensor,
    start: torch.Tensor,
    bases: torch.Tensor,
    theta: torch.Tensor,
    *,
    iterations: int = 50,
    reweights: int = ROBUST_REWEIGHTS,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The transform ``start @ exp(sum t_i B_i)`` closest to ``target`` over ``points``, robustly.

    Least squares first, then ``reweights`` rounds of Tukey's biweight (iteratively reweighted
    least squares, cut-off :data:`TUKEY_C` robust standard deviations of the residuals): a piece
    of tissue that moved on its own between the cuts, or a corner where the coarse deformation is
    only the smoothness term's guess, stops pulling the transform the rest of the tissue agrees on.

    Parameters
    ----------
    target : callable
        Frame points ``(N, 2)`` → where the map to follow sends them ``(N, 2)``.
    points : Tensor, shape (N, 2)
        Frame points weighted equally (the fixed tissue).
    start, bases : Tensor
        ``M0`` (3, 3) and the family's basis matrices (K, 3, 3): the fit stays in the family.
    theta : Tensor, shape (K,)
        Where the fit starts (the linear stage's parameters).
    iterations : int
        L-BFGS iterations per fit (it converges in a few on a smooth quadratic-like loss).
    reweights : int
        Rounds of robust reweighting after the least-squares fit (0: plain least squares).

    Returns
    -------
    matrix : Tensor, shape (3, 3)
    theta : Tensor, shape (K,)
    rms : float
        Root-mean-square distance (frame units) between the fitted transform and ``target`` over
        ``points``: how far the deformation is from any transform of the family.

    Examples
    --------
    >>> from drmime_batch.core._bases import basis
    >>> b = basis("affine", dtype=torch.float64)
    >>> shift = lambda p: p + torch.tensor([0.1, -0.05], dtype=torch.float64)
    >>> pts = torch.rand(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    >>> m, _, rms = fit_transform_to_map(shift, pts, torch.eye(3, dtype=torch.float64), b, torch.zeros(6, dtype=torch.float64))
    >>> [round(float(v), 4) for v in m[:2, 2]], rms < 1e-6
    ([0.1, -0.05], True)
    """
    with torch.no_grad():
        goal = target(points).detach()
    params = theta.detach().clone().requires_grad_(True)
    hom = torch.cat([points, torch.ones_like(points[:, :1])], 1)

    def residuals(p: torch.Tensor) -> torch.Tensor:
        h = hom @ (start @ exp_transform(p, bases)).T
        return ((h[:, :2] / h[:, 2:3] - goal) ** 2).sum(1)

    def minimise(weights: torch.Tensor) -> None:
        opt = torch.optim.LBFGS([params], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-14)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (weights * residuals(params)).sum() / weights.sum()
            loss.backward()
            return loss

        opt.step(closure)

    minimise(torch.ones_like(goal[:, 0]))
    for _ in range(reweights):
        with torch.no_grad():
            weights = tukey_weights(residuals(params).sqrt())
        if not bool(weights.gt(0).any()):  # only when residuals are not finite (else the median's half is > 0)
            break
        minimise(weights)
    with torch.no_grad():
        final = params.detach()
        rms = float(residuals(final).mean().sqrt())
        return start @ exp_transform(final, bases), final, rms


def tukey_weights(residuals: torch.Tensor, c: float = TUKEY_C) -> torch.Tensor:
    """Tukey's biweight ``(1 - (r / (c s))^2)^2`` (0 beyond), ``s`` the residuals' robust scale.

    ``s`` = 1.4826 × the median residual (the standard deviation for normal residuals);
    ``c`` defaults to :data:`TUKEY_C` (95 % efficiency on normal residuals).

    >>> w = tukey_weights(torch.tensor([0.0, 1.0, 1.0, 1.0, 100.0], dtype=torch.float64))
    >>> [round(v, 3) for v in w.tolist()]
    [1.0, 0.959, 0.959, 0.959, 0.0]
    """
    cut = c * 1.4826 * residuals.median() + torch.finfo(residuals.dtype).tiny
    return (1 - (residuals / cut) ** 2).clamp(min=0) ** 2
