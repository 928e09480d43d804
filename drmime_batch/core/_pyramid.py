"""Gaussian pyramids and the fixed-image sampling weights, on torch tensors (C, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_pyramid", "sampling_weights", "tissue_weight"]


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = image.shape[0]
    img = image.unsqueeze(0)
    img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return img.squeeze(0)


def gaussian_pyramid(image: torch.Tensor, levels: int, *, min_size: int = 32) -> list[torch.Tensor]:
    """Levels ``[image, image/2, image/4, ...]``, each blurred (sigma = 1 px) before halving.

    Parameters
    ----------
    image : Tensor, shape (C, H, W)
    levels : int
        Upper bound on the number of levels; stops earlier once the shorter side would fall below
        ``min_size``.

    Returns
    -------
    list of Tensor
        Finest first. Level ``k`` has ``ceil(H / 2**k)`` rows and a downsample factor of exactly
        ``2**k``: its pixel ``i`` pools full-resolution pixels ``[2**k i, 2**k (i + 1))`` (see
        :mod:`drmime_batch.core._convention`).

    Examples
    --------
    >>> [tuple(t.shape) for t in gaussian_pyramid(torch.rand(1, 64, 96), 3)]
    [(1, 64, 96), (1, 32, 48)]
    """
    out = [image]
    while len(out) < levels and min(out[-1].shape[1:]) // 2 >= min_size:
        blurred = _blur(out[-1], 1.0)
        out.append(F.avg_pool2d(blurred.unsqueeze(0), 2, ceil_mode=True).squeeze(0))
    return out


def tissue_weight(image: torch.Tensor) -> torch.Tensor:
    """How far each pixel is from the background colour (the median of the border), in [0, 1].

    Slides have a bright (brightfield) or dark (fluorescence) empty background; whichever it is,
    its colour dominates the image border.
    """
    border = torch.cat(
        [image[:, 0, :], image[:, -1, :], image[:, :, 0], image[:, :, -1]], dim=1
    )
    background = border.median(dim=1).values.view(-1, 1, 1)
    dist = (image - background).abs().amax(0)
    return dist / dist.max().clamp_min(1e-6)


def sampling_weights(image: torch.Tensor, *, mode: str = "edges") -> torch.Tensor:
    """Per-pixel probabilities (H, W) of drawing a fixed-image sample point.

    ``"edges"`` mixes a uniform share with weights proportional to the gradient magnitude of the
    smoothed image (structure carries the registration signal; flat background carries none);
    ``"uniform"`` draws every pixel alike.
    """
    h, w = image.shape[1:]
    uniform = torch.full((h, w), 1.0 / (h * w), dtype=image.dtype, device=image.device)
    if mode == "uniform":
        return uniform
    smooth = _blur(image, 1.0).mean(0)
    gx = torch.zeros_like(smooth)
    gy = torch.zeros_like(smooth)
    gx[:, 1:-1] = smooth[:, 2:] - smooth[:, :-2]
    gy[1:-1, :] = smooth[2:, :] - smooth[:-2, :]
    grad = torch.sqrt(gx**2 + gy**2)
    total = grad.sum()
    if not torch.isfinite(total) or total <= 0:
        return uniform
    return 0.3 * uniform + 0.7 * grad / total
