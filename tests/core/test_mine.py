"""MINE: the Donsker–Varadhan bound of a trained statistics network, and its numerical stability."""

from __future__ import annotations

import math

import numpy as np
import torch

from drmime_batch.core import StatisticsNetwork, dv_bound

NOISE = 0.05  # y = x + N(0, NOISE^2) with x ~ U(0, 1)


def _true_mi_uniform_plus_noise(sigma: float) -> float:
    """I(X; X + N(0, sigma^2)) for X ~ U(0, 1), in nats: h(Y) - h(N), h(Y) by quadrature."""
    from scipy.stats import norm

    y = np.linspace(-1.0, 2.0, 300_001)
    p = norm.cdf(y / sigma) - norm.cdf((y - 1.0) / sigma)
    h_y = -np.trapezoid(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0.0), y)
    return float(h_y - 0.5 * np.log(2 * np.pi * np.e * sigma**2))


def _trained_bound(dependent: bool, *, seed: int = 0, steps: int = 300) -> float:
    """Train a small network on fresh samples, then evaluate the bound on 20000 new ones."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = StatisticsNetwork(2, hidden=32)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 1, generator=gen)
        y = x + NOISE * torch.randn(n, 1, generator=gen) if dependent else torch.rand(n, 1, generator=gen)
        return x, y

    for _ in range(steps):
        x, y = sample(1000)
        loss = -dv_bound(net, x, y, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x, y = sample(20_000)
        return float(dv_bound(net, x, y, generator=gen))


def test_independent_samples_give_about_zero():
    for seed in (0, 1):
        assert abs(_trained_bound(False, seed=seed)) < 0.02


def test_dependent_samples_give_a_clear_lower_bound():
    truth = _true_mi_uniform_plus_noise(NOISE)
    assert 1.6 < truth < 1.7  # about 1.667 nats
    estimate = _trained_bound(True)
    assert estimate > 0.3  # clearly dependent ...
    assert estimate > 0.6 * truth  # ... and most of the information is found by a small network
    assert estimate < truth + 0.05  # a lower bound, up to the sampling noise of 20000 points


def test_untrained_network_and_shuffle_generator():
    net = StatisticsNetwork(6, hidden=16)
    x, y = torch.rand(500, 3), torch.rand(500, 3)
    a = dv_bound(net, x, y, generator=torch.Generator().manual_seed(3))
    b = dv_bound(net, x, y, generator=torch.Generator().manual_seed(3))
    assert a.ndim == 0 and torch.equal(a, b)  # the shuffle is reproducible
    a.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.all(torch.isfinite(g)) for g in grads)


def _big_network(scale: float) -> StatisticsNetwork:
    net = StatisticsNetwork(2, hidden=8)
    with torch.no_grad():
        net.layers[-1].weight.mul_(scale)
        net.layers[-1].bias.fill_(scale)
    return net


def test_logsumexp_keeps_large_outputs_finite():
    torch.manual_seed(0)
    x = torch.rand(4000, 1)
    y = (x + 0.1 * torch.randn(4000, 1)).requires_grad_(True)
    for scale in (1e2, 1e4, 1e6):
        net = _big_network(scale)
        with torch.no_grad():
            outputs = net(x, y)
        assert outputs.abs().max() > 89  # exp() of these overflows float32 ...
        assert not torch.all(torch.isfinite(torch.exp(outputs)))
        value = dv_bound(net, x, y, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(value), scale  # ... the bound does not
        # the same number as a float64 log-mean-exp written with the max shifted out
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            joint = net(x, y).double()
            marg = net(x, y[perm]).double()
        m = marg.max()
        reference = joint.mean() - (m + torch.log(torch.exp(marg - m).mean()))
        assert math.isclose(float(value.detach()), float(reference), rel_tol=1e-5, abs_tol=1e-6 * scale)
        y.grad = None
        value.backward()
        assert torch.all(torch.isfinite(y.grad))


def test_constant_statistic_gives_exactly_zero():
    # T = c everywhere: mean T - log mean exp T = c - c, for any c, without overflow
    net = StatisticsNetwork(2, hidden=4)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.layers[-1].bias.fill_(5000.0)
    x, y = torch.rand(100, 1), torch.rand(100, 1)
    assert float(dv_bound(net, x, y).detach()) == 0.0
