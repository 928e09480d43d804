"""Coarse initialisation: centre-of-mass alignment plus a rotation (and flip) search.

Serial sections arrive rotated by any angle, shifted and sometimes mounted upside down; gradient
descent on any similarity only finds the nearest local optimum, so DRMIME starts from the best of
a small exhaustive search at the coarsest level: every candidate rotation (and its mirror image)
about the tissue's centre of mass, scored by the joint-histogram mutual information of the whole
fixed image against the warped moving image (outside filled with the moving background colour).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from drmime_batch.core._pyramid import tissue_weight

__all__ = ["Initialisation", "centre_of_mass", "search_initialisation"]


@dataclass(frozen=True)
class Initialisation:
    """The chosen starting matrix (frame coordinates) and how it was found."""

    matrix: torch.Tensor
    angle: float
    flip: bool
    score: float

    def to_dict(self) -> dict[str, float | bool]:
        return {"angle_deg": self.angle, "flip": self.flip, "score": self.score}


def centre_of_mass(image: torch.Tensor) -> torch.Tensor:
    """Tissue-weighted centroid ``(x, y)`` in the image's pixel coordinates."""
    w = tissue_weight(image)
    h, wd = w.shape
    ys = torch.arange(h, dtype=w.dtype, device=w.device)
    xs = torch.arange(wd, dtype=w.dtype, device=w.device)
    total = w.sum().clamp_min(1e-6)
    return torch.stack([(w.sum(0) * xs).sum() / total, (w.sum(1) * ys).sum() / total])


def _gray_bins(image: torch.Tensor, bins: int) -> torch.Tensor:
    g = image.mean(0)
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


def search_initialisation(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    fixed_to_frame: torch.Tensor,
    moving_to_frame: torch.Tensor,
    angles: int = 36,
    flip: bool = True,
    rotate: bool = True,
    bins: int = 24,
) -> Initialisation:
    """Best rotation/flip about the centres of mass, in the centred frame.

    Parameters
    ----------
    fixed, moving : Tensor, shape (C, H, W)
        Coarse pyramid levels (a few hundred pixels at most).
    fixed_to_frame, moving_to_frame : Tensor, shape (3, 3)
        Matrices taking each level's pixel coordinates to the shared frame.
    angles : int
        Number of rotations tried, evenly spaced over 360 degrees.
    flip : bool
        Also try the mirror image.
    rotate : bool
        False keeps only the centre-of-mass translation (``init="moments"``).

    Returns
    -------
    Initialisation
        ``matrix`` maps fixed frame coordinates to moving frame coordinates.
    """
    dtype = fixed_to_frame.dtype
    one = torch.ones(1, dtype=dtype, device=fixed.device)
    com_f = fixed_to_frame @ torch.cat([centre_of_mass(fixed).to(dtype), one])
    com_m = moving_to_frame @ torch.cat([centre_of_mass(moving).to(dtype), one])
    candidates: list[tuple[float, bool, torch.Tensor]] = []
    for mirrored in (False, True) if (flip and rotate) else (False,):
        for i in range(angles if rotate else 1):
            a = 2 * math.pi * i / angles
            c, s = math.cos(a), math.sin(a)
            lin = torch.tensor([[c, -s], [s, c]], dtype=dtype, device=fixed.device)
            if mirrored:
                lin = lin @ torch.diag(torch.tensor([-1.0, 1.0], dtype=dtype, device=fixed.device))
            m = torch.eye(3, dtype=dtype, device=fixed.device)
            m[:2, :2] = lin
            m[:2, 2] = com_m[:2] - lin @ com_f[:2]
            candidates.append((math.degrees(a), mirrored, m))
    if len(candidates) == 1:
        angle, mirrored, m = candidates[0]
        return Initialisation(matrix=m, angle=angle, flip=mirrored, score=float("nan"))

    # Grid of every fixed pixel, mapped by each candidate into moving grid_sample coordinates.
    _, hf, wf = fixed.shape
    _, hm, wm = moving.shape
    ys, xs = torch.meshgrid(
        torch.arange(hf, dtype=dtype, device=fixed.device),
        torch.arange(wf, dtype=dtype, device=fixed.device),
        indexing="ij",
    )
    pts = torch.stack([xs.ravel(), ys.ravel(), torch.ones_like(xs.ravel())])
    to_grid = torch.tensor(
        [[2.0 / wm, 0.0, 1.0 / wm - 1.0], [0.0, 2.0 / hm, 1.0 / hm - 1.0], [0.0, 0.0, 1.0]],
        dtype=dtype,
        device=fixed.device,
    ) @ torch.linalg.inv(moving_to_frame)
    stack = torch.stack([c[2] for c in candidates])
    mapped = to_grid @ stack @ (fixed_to_frame @ pts)
    grid = (mapped[:, :2] / mapped[:, 2:3]).transpose(1, 2).reshape(len(candidates), hf, wf, 2)
    border = torch.cat([moving[:, 0, :], moving[:, -1, :], moving[:, :, 0], moving[:, :, -1]], dim=1)
    background = border.median(dim=1).values.view(1, -1, 1, 1)
    warped = F.grid_sample(
        (moving.unsqueeze(0) - background).expand(len(candidates), -1, -1, -1).float(),
        grid.float(),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ) + background
    fixed_bins = _gray_bins(fixed, bins)
    g = warped.mean(1)
    lo, hi = moving.mean(0).min(), moving.mean(0).max()
    moving_bins = ((g - lo) / (hi - lo).clamp_min(1e-6) * (bins - 1)).round().clamp(0, bins - 1).long()
    scores = _batched_mi(fixed_bins, moving_bins, bins)
    best = int(torch.argmax(scores))
    angle, mirrored, m = candidates[best]
    return Initialisation(matrix=m, angle=angle, flip=mirrored, score=float(scores[best]))
