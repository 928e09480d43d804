"""Baseline similarities on sampled point pairs, for comparison with MINE in the same optimiser.

Each takes the fixed and moving values at the same N points (shape (N, C), values in [0, 1]) and
returns a similarity to *maximise* (larger is better), differentiable in ``y``.
"""

from __future__ import annotations

import torch

__all__ = ["METRICS", "negative_mse", "ncc", "parzen_mi"]


def negative_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Minus the mean squared difference (only meaningful for a single modality)."""
    return -torch.mean((x - y) ** 2)


def ncc(x: torch.Tensor, y: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Normalised cross-correlation, averaged over channels, in [-1, 1].

    Examples
    --------
    >>> x = torch.rand(100, 1)
    >>> round(float(ncc(x, 2 * x + 1)), 4)
    1.0
    """
    xc = x - x.mean(0)
    yc = y - y.mean(0)
    num = (xc * yc).mean(0)
    den = torch.sqrt(xc.pow(2).mean(0) * yc.pow(2).mean(0) + eps)
    return (num / den).mean()


def parzen_mi(x: torch.Tensor, y: torch.Tensor, *, bins: int = 32) -> torch.Tensor:
    """Mutual information (nats) of the grayscale values from a Parzen-window joint histogram.

    Mattes et al. (2003) style: Gaussian kernels of one bin width on ``bins`` bins over [0, 1] make
    the histogram differentiable in the moving values.
    """
    xg = x.mean(1, keepdim=True)
    yg = y.mean(1, keepdim=True)
    centres = torch.linspace(0.0, 1.0, bins, device=x.device, dtype=x.dtype)
    sigma = 1.0 / (bins - 1)
    wx = torch.exp(-0.5 * ((xg - centres) / sigma) ** 2)
    wy = torch.exp(-0.5 * ((yg - centres) / sigma) ** 2)
    wx = wx / (wx.sum(1, keepdim=True) + 1e-12)
    wy = wy / (wy.sum(1, keepdim=True) + 1e-12)
    joint = wx.T @ wy / x.shape[0]
    px = joint.sum(1, keepdim=True)
    py = joint.sum(0, keepdim=True)
    eps = 1e-10
    return torch.sum(joint * (torch.log(joint + eps) - torch.log(px @ py + eps)))


#: Baseline metrics by name (the MINE bound is handled by the optimiser itself).
METRICS = {"mse": negative_mse, "ncc": ncc, "mi": parzen_mi}
