"""MINE: the statistics network and the Donsker–Varadhan lower bound on mutual information.

Belghazi et al., "Mutual Information Neural Estimation", ICML 2018; used for registration by Nan
et al., "DRMIME", MIDL 2020 (arXiv:2001.09865).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["StatisticsNetwork", "dv_bound"]


class StatisticsNetwork(nn.Module):
    """``T_theta(x, y)``: a small MLP on concatenated pixel vectors.

    Parameters
    ----------
    channels : int
        Channels of the fixed plus the moving image (2 for grayscale pairs, 6 for RGB pairs).
    hidden : int
        Width of the two hidden layers.

    Examples
    --------
    >>> net = StatisticsNetwork(6, hidden=16)
    >>> net(torch.rand(5, 3), torch.rand(5, 3)).shape
    torch.Size([5])
    """

    def __init__(self, channels: int, *, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Scores of the pairs ``(x[i], y[i])``; ``x`` of shape (N, Cf), ``y`` of shape (N, Cm)."""
        scores: torch.Tensor = self.layers(torch.cat([x, y], dim=1))
        return scores.squeeze(1)


def dv_bound(
    net: StatisticsNetwork, x: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The Donsker–Varadhan bound ``mean T(x, y) - log mean exp T(x, y_shuffled)`` (nats).

    The marginal samples pair each ``x`` with the ``y`` of another, randomly chosen point; the log of
    the mean is computed with ``logsumexp`` so it never overflows.

    Parameters
    ----------
    net : StatisticsNetwork
    x, y : Tensor, shape (N, C)
        Fixed and moving values at the same N sampled points.
    generator : torch.Generator, optional
        Makes the shuffle reproducible.

    Returns
    -------
    Tensor, scalar
        A lower bound on I(X; Y), differentiable in the network and in ``y``.
    """
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator, device="cpu").to(y.device)
    joint: torch.Tensor = net(x, y)
    marginal: torch.Tensor = net(x, y[perm])
    return joint.mean() - (torch.logsumexp(marginal, dim=0) - math.log(n))
