"""Coarse initialisation: a start that can only help.

Serial sections arrive rotated by any angle, shifted and sometimes mounted upside down; gradient
descent on any similarity only finds the nearest local optimum, so DRMIME starts from the best of
a few candidates: the identity, the centre-of-mass alignment, and the best rotations (and mirror
images) about the tissue's centre of mass from an exhaustive grid scored by joint-histogram mutual
information at tens of pixels. Each candidate is polished by a short rigid-transform ascent,
then all are compared by one score (:func:`comparable_score`: the whole fixed image against the
warped moving image, outside filled with the moving background colour, over a few scales).

Near-symmetric tissue (round cores, ovals) scores almost alike at every rotation, and picking a
rotated or mirrored basin there is much worse than starting a little off: a far candidate must
beat the best near-identity one by a stated margin (``FAR_MARGIN``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

import torch
import torch.nn.functional as F

from drmime_batch.core._convention import grid_sample_matrix
from drmime_batch.core._pyramid import tissue_weight

__all__ = ["FAR_MARGIN", "NEAR_IDENTITY_DEG", "Initialisation", "centre_of_mass", "comparable_score", "search_initialisation"]

#: A rotation within this many degrees of zero (and not mirrored) counts as "near the identity".
NEAR_IDENTITY_DEG = 20.0
#: A far candidate (a large rotation or a mirror image) must beat the best near-identity candidate by
#: this fraction of its score: on near-symmetric tissue (round cores) every rotation scores alike, and
#: a wrong basin there is far worse than a start that is merely a little off.
FAR_MARGIN = 0.25


@dataclass(frozen=True)
class Initialisation:
    """The chosen starting matrix (frame coordinates) and how it was found."""

    matrix: torch.Tensor
    angle: float
    flip: bool
    score: float | None  # None when nothing was scored (``init="none"``)
    name: str = "identity"  # "identity", "moments" or "rotation"
    candidates: tuple[dict[str, Any], ...] = ()  # every polished candidate and its comparable score

    def to_dict(self) -> dict[str, Any]:
        return {
            "angle_deg": self.angle,
            "flip": self.flip,
            "score": self.score,
            "chosen": self.name,
            "candidates": [dict(c) for c in self.candidates],
            "near_identity_deg": NEAR_IDENTITY_DEG,
            "far_margin": FAR_MARGIN,
        }


def centre_of_mass(image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Tissue-weighted centroid ``(x, y)`` in the image's pixel coordinates.

    With a ``mask`` (H, W) of the image's size, the weights are restricted to it: padding, ink and
    tile seams no longer pull the centre, and tissue that fills the whole frame is still weighted
    by its stain (the mask alone would give the frame's centre).
    """
    w = tissue_weight(image)
    if mask is not None:
        w = w.to(mask.dtype) * mask
        if not (w.sum() > 0):  # tissue without contrast: the mask's own centre
            w = mask
    h, wd = w.shape
    ys = torch.arange(h, dtype=w.dtype, device=w.device)
    xs = torch.arange(wd, dtype=w.dtype, device=w.device)
    total = w.sum().clamp_min(1e-6)
    return torch.stack([(w.sum(0) * xs).sum() / total, (w.sum(1) * ys).sum() / total])


def _grey(image: torch.Tensor) -> torch.Tensor:
    """One grey plane (1, H, W) of a (C, H, W) image: the mean of its channels, each signed by its
    correlation with the first.

    For stains (RGB) every channel rises from tissue to glass together and this is the plain mean.
    A second modality may remap channels against each other (one inverted, one not); their plain
    mean would cancel the structure, the signed mean keeps it.
    """
    if image.shape[0] == 1:
        return image
    flat = image.reshape(image.shape[0], -1)
    centred = flat - flat.mean(1, keepdim=True)
    signs = torch.where((centred @ centred[0]) < 0, -1.0, 1.0).to(image.dtype)
    return (signs[:, None] * flat).mean(0).reshape(1, *image.shape[1:])


def _gray_bins(image: torch.Tensor, bins: int) -> torch.Tensor:
    g = _grey(image)[0]
    lo, hi = g.min(), g.max()
    return ((g - lo) / (hi - lo).clamp_min(1e-6) * (bins - 1)).round().long()


def _batched_mi(fixed_bins: torch.Tensor, moving_bins: torch.Tensor, bins: int) -> torch.Tensor:
    k = moving_bins.shape[0]
    joint_idx = fixed_bins.reshape(1, -1) * bins + moving_bins.reshape(k, -1)
    counts = torch.zeros(k, bins * bins, dtype=torch.float64, device=moving_bins.device)
    counts.scatter_add_(1, joint_idx, torch.ones_like(joint_idx, dtype=torch.float64))
    p = (counts / counts.sum(1, keepdim=True)).view(k, bins, bins)
    px = p.sum(2, keepdim=True)
    py = p.sum(1, keepdim=True)
    ratio = torch.where(p > 0, p / (px * py).clamp_min(1e-300), torch.ones_like(p))
    return (p * torch.log(ratio)).sum((1, 2))


def _candidates(
    com_f: torch.Tensor, com_m: torch.Tensor, *, angles: int, flip: bool, rotate: bool
) -> list[tuple[float, bool, torch.Tensor]]:
    """Rotations (and mirror images) about the fixed centre of mass, landing on the moving one."""
    dtype, device = com_f.dtype, com_f.device
    out: list[tuple[float, bool, torch.Tensor]] = []
    for mirrored in (False, True) if (flip and rotate) else (False,):
        for i in range(angles if rotate else 1):
            a = 2 * math.pi * i / angles
            c, s = math.cos(a), math.sin(a)
            lin = torch.tensor([[c, -s], [s, c]], dtype=dtype, device=device)
            if mirrored:
                lin = lin @ torch.diag(torch.tensor([-1.0, 1.0], dtype=dtype, device=device))
            m = torch.eye(3, dtype=dtype, device=device)
            m[:2, :2] = lin
            m[:2, 2] = com_m[:2] - lin @ com_f[:2]
            out.append((math.degrees(a), mirrored, m))
    return out


def _pixel_points(image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Homogeneous pixel coordinates ``(x, y, 1)`` of every pixel of ``image`` (C, H, W) → (3, H*W)."""
    _, h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=image.device),
        torch.arange(w, dtype=dtype, device=image.device),
        indexing="ij",
    )
    return torch.stack([xs.ravel(), ys.ravel(), torch.ones_like(xs.ravel())])


def _scores(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    stack: torch.Tensor,
    fixed_to_frame: torch.Tensor,
    moving_to_frame: torch.Tensor,
    bins: int,
    deform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Joint-histogram MI of the fixed image against each candidate's warped moving image.

    ``deform`` (frame points (N, 2) -> displacements (N, 2)) moves the fixed frame's points before
    the candidates' matrices (the deformable stage's map).
    """
    dtype = stack.dtype
    _, hf, wf = fixed.shape
    pts = _pixel_points(fixed, dtype)
    to_grid = torch.as_tensor(grid_sample_matrix(moving.shape[1:]), dtype=dtype, device=fixed.device)
    to_grid = to_grid @ torch.linalg.inv(moving_to_frame)  # frame -> moving grid_sample coordinates
    frame_pts = fixed_to_frame @ pts
    if deform is not None:
        xy = frame_pts[:2].T
        frame_pts = torch.cat([(xy + deform(xy)).T, frame_pts[2:3]], 0)
    mapped = to_grid @ stack @ frame_pts
    n = stack.shape[0]
    grid = (mapped[:, :2] / mapped[:, 2:3]).transpose(1, 2).reshape(n, hf, wf, 2)
    grey = _grey(moving)
    border = torch.cat([grey[:, 0, :], grey[:, -1, :], grey[:, :, 0], grey[:, :, -1]], dim=1)
    background = border.median(dim=1).values.view(1, -1, 1, 1)
    warped = F.grid_sample(
        (grey.unsqueeze(0) - background).expand(n, -1, -1, -1).float(),
        grid.float(),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ) + background
    g = warped[:, 0]
    lo, hi = grey.min(), grey.max()
    moving_bins = ((g - lo) / (hi - lo).clamp_min(1e-6) * (bins - 1)).round().clamp(0, bins - 1).long()
    return _batched_mi(_gray_bins(fixed, bins), moving_bins, bins)


def _soft_mi(fixed: torch.Tensor, warped: torch.Tensor, bins: int) -> torch.Tensor:
    """Parzen-window MI of gray values: ``fixed`` (P,), ``warped`` (K, P) → (K,), differentiable."""
    centres = torch.linspace(0.0, 1.0, bins, dtype=warped.dtype, device=warped.device)
    sigma = 1.0 / (bins - 1)
    wx = torch.softmax(-0.5 * ((fixed.unsqueeze(-1) - centres) / sigma) ** 2, -1)
    wy = torch.softmax(-0.5 * ((warped.unsqueeze(-1) - centres) / sigma) ** 2, -1)
    joint = torch.einsum("pb,kpc->kbc", wx, wy) / fixed.shape[0]
    px = joint.sum(2, keepdim=True)
    py = joint.sum(1, keepdim=True)
    return (joint * (torch.log(joint + 1e-10) - torch.log(px * py + 1e-10))).sum((1, 2))


def _refine(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    stack: torch.Tensor,
    fixed_to_frame: torch.Tensor,
    moving_to_frame: torch.Tensor,
    *,
    bins: int,
    iterations: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Polish several candidates at once by a short rigid-transform ascent of Parzen MI.

    A candidate from the grid is up to half a step off in angle and a few pixels off in position,
    which at finer scales costs more similarity than a wrong but symmetric pose; polishing every
    shortlisted candidate before comparing them removes that bias. Rotation and shift only: a
    one-directional histogram MI gains by shrinking one image onto the other (on lung-lesion-3
    H&E -> CC10 a similarity polish shrank the start by 14 %, worse than the identity, and the
    optimiser never recovered); the scale is left to DRMIME's symmetric objective.
    """
    from drmime_batch.core._bases import basis

    dtype = stack.dtype
    pts = fixed_to_frame @ _pixel_points(fixed, dtype)
    to_grid = torch.as_tensor(grid_sample_matrix(moving.shape[1:]), dtype=dtype, device=fixed.device)
    to_grid = to_grid @ torch.linalg.inv(moving_to_frame)  # frame -> moving grid_sample coordinates
    gray_f = _grey(fixed)[0].ravel()
    gray_f = (gray_f - gray_f.min()) / (gray_f.max() - gray_f.min()).clamp_min(1e-6)
    gray_m = _grey(moving)
    lo, hi = gray_m.min(), gray_m.max()
    gray_m = (gray_m - lo) / (hi - lo).clamp_min(1e-6)
    background = torch.cat([gray_m[0, 0], gray_m[0, -1], gray_m[0, :, 0], gray_m[0, :, -1]]).median()
    bases = basis("rigid", dtype=dtype, device=fixed.device)
    k = stack.shape[0]
    params = torch.zeros(k, bases.shape[0], dtype=dtype, device=fixed.device, requires_grad=True)
    opt = torch.optim.Adam([params], lr=0.01)

    def evaluate() -> tuple[torch.Tensor, torch.Tensor]:
        mats = stack @ torch.linalg.matrix_exp(torch.einsum("kb,bij->kij", params, bases))
        mapped = to_grid @ mats @ pts
        grid = (mapped[:, :2] / mapped[:, 2:3]).transpose(1, 2).reshape(k, 1, -1, 2)
        warped = F.grid_sample(
            (gray_m - background).unsqueeze(0).expand(k, -1, -1, -1).float(),
            grid.float(),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        ).reshape(k, -1) + background
        return _soft_mi(gray_f.float(), warped, bins), mats

    for _ in range(iterations):
        mi, _ = evaluate()
        opt.zero_grad()
        (-mi.sum()).backward()
        opt.step()
    with torch.no_grad():
        mi, mats = evaluate()
    return mi.double(), mats.detach()


def _polished_angle(matrix: torch.Tensor, mirrored: bool) -> float:
    """Rotation angle (degrees in [0, 360)) of a polished candidate's linear part."""
    sign = -1.0 if mirrored else 1.0  # a mirrored candidate is R @ diag(-1, 1)
    return math.degrees(math.atan2(sign * float(matrix[1, 0]), sign * float(matrix[0, 0]))) % 360.0


def _is_near(angle: float, mirrored: bool) -> bool:
    return not mirrored and min(angle % 360.0, 360.0 - angle % 360.0) <= NEAR_IDENTITY_DEG


def comparable_score(
    fixed: Sequence[torch.Tensor],
    moving: Sequence[torch.Tensor],
    matrices: torch.Tensor,
    *,
    fixed_to_frame: Sequence[torch.Tensor],
    moving_to_frame: Sequence[torch.Tensor],
    bins: int = 24,
    deform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One score for any set of frame matrices: joint-histogram MI, summed over the given scales.

    Every fixed pixel counts at every candidate (the moving image is extended by its background
    colour), so scores of different candidates, and of a start and a result, compare directly.

    Parameters
    ----------
    fixed, moving : sequence of Tensor, shape (C, H, W)
        The same two images at a few scales.
    matrices : Tensor, shape (K, 3, 3)
        Fixed frame -> moving frame candidates.
    fixed_to_frame, moving_to_frame : sequence of Tensor, shape (3, 3)
    deform : callable, optional
        A displacement of the fixed frame's points applied before the matrices (frame points
        ``(N, 2)`` to displacements ``(N, 2)``): scores a deformable map.

    Returns
    -------
    Tensor, shape (K,)
    """
    return cast(torch.Tensor, sum(  # sum of at least one tensor: a tensor
        _scores(f, m, matrices, ff, mf, bins, deform)
        for f, m, ff, mf in zip(fixed, moving, fixed_to_frame, moving_to_frame, strict=True)
    ))


def search_initialisation(
    fixed: Sequence[torch.Tensor],
    moving: Sequence[torch.Tensor],
    *,
    fixed_to_frame: Sequence[torch.Tensor],
    moving_to_frame: Sequence[torch.Tensor],
    angles: int = 36,
    flip: bool = True,
    rotate: bool = True,
    bins: int = 16,
    shortlist: int = 8,
    refine_iterations: int = 60,
    com_fixed: torch.Tensor | None = None,
    com_moving: torch.Tensor | None = None,
    scorer: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Initialisation:
    """The best start among the identity, the centre-of-mass alignment and rotations/flips of it.

    Parameters
    ----------
    fixed, moving : sequence of Tensor, shape (C, H, W)
        The same images at a few coarse scales (tens of pixels, lightly blurred); a grid
        candidate's score is the sum of its mutual information over the scales, which is steadier
        than any single scale on faint stains and near-symmetric tissue.
    fixed_to_frame, moving_to_frame : sequence of Tensor, shape (3, 3)
        Per scale, the matrix taking that image's pixel coordinates to the shared frame.
    angles : int
        Number of rotations tried, evenly spaced over 360 degrees.
    flip : bool
        Also try the mirror image.
    rotate : bool
        False keeps only the identity and the centre-of-mass translation (``init="moments"``).
    shortlist, refine_iterations : int
        How many of the best grid candidates are polished (similarity transform, Parzen MI on the
        last, finest scale) before the final choice, and for how many steps. The identity and the
        centre-of-mass candidate are always polished too.
    com_fixed, com_moving : Tensor, shape (2,), optional
        Tissue centres ``(x, y)`` in the pixel coordinates of the last scale (from the tissue
        masks); by default the background-distance-weighted centre of mass.
    scorer : callable, optional
        ``scorer(matrices (K, 3, 3)) -> (K,)``: the score that compares the polished candidates
        (the optimiser passes :func:`comparable_score` at the registration's finer scales, the same
        score it later compares the result with the start by); by default
        :func:`comparable_score` on ``fixed`` and ``moving``.

    Returns
    -------
    Initialisation
        ``matrix`` maps fixed frame coordinates to moving frame coordinates. Every polished
        candidate and its score is in ``candidates``. A far candidate (rotation beyond
        ``NEAR_IDENTITY_DEG`` or a mirror image) wins only when its score exceeds the best
        near-identity candidate's by ``FAR_MARGIN`` of it.
    """
    dtype = fixed_to_frame[0].dtype
    one = torch.ones(1, dtype=dtype, device=fixed[0].device)
    cf = centre_of_mass(fixed[-1]) if com_fixed is None else com_fixed
    cm = centre_of_mass(moving[-1]) if com_moving is None else com_moving
    com_f = fixed_to_frame[-1] @ torch.cat([cf.to(dtype), one])
    com_m = moving_to_frame[-1] @ torch.cat([cm.to(dtype), one])
    grid = _candidates(com_f, com_m, angles=angles, flip=flip, rotate=rotate)
    stack = torch.stack([c[2] for c in grid])
    grid_scores: torch.Tensor | None = None
    top: list[int] = []
    if len(grid) > 1:
        grid_scores = cast(torch.Tensor, sum(  # sum of at least one tensor: a tensor
            _scores(f, m, stack, ff, mf, bins)
            for f, m, ff, mf in zip(fixed, moving, fixed_to_frame, moving_to_frame, strict=True)
        ))
        top = torch.argsort(grid_scores, descending=True)[:shortlist].tolist()
    # The identity and the plain centre-of-mass alignment (grid index 0) always compete.
    chosen = [None, 0] + [i for i in top if i != 0]
    names = ["identity"] + ["moments" if i == 0 else "rotation" for i in chosen[1:]]
    starts = torch.stack([torch.eye(3, dtype=dtype, device=stack.device)] + [stack[i] for i in chosen[1:]])
    _, mats = _refine(
        fixed[-1], moving[-1], starts, fixed_to_frame[-1], moving_to_frame[-1], bins=bins, iterations=refine_iterations
    )
    if scorer is None:
        scores = comparable_score(fixed, moving, mats, fixed_to_frame=fixed_to_frame, moving_to_frame=moving_to_frame)
    else:
        scores = scorer(mats)
    records: list[dict[str, Any]] = []
    for j, (i, name) in enumerate(zip(chosen, names, strict=True)):
        grid_angle, mirrored = (0.0, False) if i is None else (grid[i][0], grid[i][1])
        records.append({
            "name": name,
            "angle_deg": _polished_angle(mats[j], mirrored),
            "grid_angle_deg": grid_angle,
            "flip": mirrored,
            "grid_score": None if (i is None or grid_scores is None) else float(grid_scores[i]),
            "score": float(scores[j]),
        })
    near = [j for j, r in enumerate(records) if _is_near(r["grid_angle_deg"], r["flip"])]
    far = [j for j in range(len(records)) if j not in near]
    best_near = max(near, key=lambda j: records[j]["score"])
    best = best_near
    if far:
        best_far = max(far, key=lambda j: records[j]["score"])
        if records[best_far]["score"] > records[best_near]["score"] * (1.0 + FAR_MARGIN):
            best = best_far
    winner = records[best]
    return Initialisation(
        matrix=mats[best],
        angle=winner["angle_deg"],
        flip=winner["flip"],
        score=winner["score"],
        name=winner["name"],
        candidates=tuple(records),
    )
