"""The exponential-map transforms: sizes, identity, inverses, structure of each family, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drmime_batch.core import TRANSFORMS, basis, exp_transform

KINDS = ("translation", "rigid", "similarity", "affine", "homography")
I3 = torch.eye(3, dtype=torch.float64)


def _theta(kind: str, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(TRANSFORMS[kind], generator=g, dtype=torch.float64)


def test_basis_sizes_and_nesting():
    assert {k: basis(k).shape for k in KINDS} == {
        "translation": (2, 3, 3), "rigid": (3, 3, 3), "similarity": (4, 3, 3), "affine": (6, 3, 3),
        "homography": (8, 3, 3),
    }
    assert dict(TRANSFORMS) == {"translation": 2, "rigid": 3, "similarity": 4, "affine": 6, "homography": 8}
    full = basis("homography", dtype=torch.float64)
    for kind in KINDS:  # each family is the first generators of the next one
        assert torch.equal(basis(kind, dtype=torch.float64), full[: TRANSFORMS[kind]])
    # the generators are linearly independent (a basis, not a spanning set with repeats)
    assert torch.linalg.matrix_rank(full.reshape(8, 9)) == 8
    affine = basis("affine", dtype=torch.float64)
    assert torch.all(affine[:, 2, :] == 0)  # affine generators keep the last row (0, 0, 1) after exp
    with pytest.raises(ValueError, match="spline"):
        basis("spline")


@pytest.mark.parametrize("kind", KINDS)
def test_zero_is_identity_and_minus_theta_is_the_inverse(kind):
    b = basis(kind, dtype=torch.float64)
    assert torch.equal(exp_transform(torch.zeros(TRANSFORMS[kind], dtype=torch.float64), b), I3)
    for seed in range(3):
        theta = _theta(kind, seed)
        m = exp_transform(theta, b)
        prod = m @ exp_transform(-theta, b)
        prod = prod / prod[2, 2]  # a homography is defined up to scale
        assert torch.allclose(prod, I3, atol=1e-12), prod
        assert m[2, 2] == 1.0
        assert torch.linalg.det(m) > 0  # the exponential never flips or collapses


def test_translation_is_exactly_a_shift():
    m = exp_transform(torch.tensor([0.25, -0.5], dtype=torch.float64), basis("translation", dtype=torch.float64))
    assert torch.allclose(m, torch.tensor([[1, 0, 0.25], [0, 1, -0.5], [0, 0, 1.0]], dtype=torch.float64))


def test_rigid_linear_part_is_a_rotation():
    b = basis("rigid", dtype=torch.float64)
    for seed in range(5):
        theta = _theta("rigid", seed, scale=1.5)
        lin = exp_transform(theta, b)[:2, :2]
        assert torch.allclose(lin.T @ lin, torch.eye(2, dtype=torch.float64), atol=1e-12)
        assert torch.isclose(torch.linalg.det(lin), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
    # the rotation generator turns by theta radians, counter-clockwise in (x, y)
    lin = exp_transform(torch.tensor([0.0, 0.0, np.pi / 6], dtype=torch.float64), b)[:2, :2]
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    assert np.allclose(lin.numpy(), [[c, -s], [s, c]], atol=1e-12)


def test_similarity_keeps_angles_and_scales_by_exp_theta():
    b = basis("similarity", dtype=torch.float64)
    rng = np.random.default_rng(0)
    for seed in range(5):
        theta = _theta("similarity", seed, scale=0.8)
        lin = exp_transform(theta, b)[:2, :2].numpy()
        u, v = rng.normal(size=2), rng.normal(size=2)

        def angle(a: np.ndarray, c: np.ndarray) -> float:
            return float(np.arccos(np.dot(a, c) / np.linalg.norm(a) / np.linalg.norm(c)))

        assert np.isclose(angle(lin @ u, lin @ v), angle(u, v), atol=1e-12)
        # isotropic scale factor exp(theta_scale), whatever the rotation
        assert np.isclose(np.linalg.norm(lin @ u) / np.linalg.norm(u), np.exp(float(theta[3])), rtol=1e-12)
    # the affine family does not keep angles: it is really larger than the similarity family
    shear = exp_transform(torch.tensor([0, 0, 0, 0, 0.3, 0], dtype=torch.float64), basis("affine", dtype=torch.float64))
    lin = shear[:2, :2].numpy()
    assert abs(np.dot(lin @ [1.0, 0.0], lin @ [0.0, 1.0])) > 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    b = basis(kind, dtype=torch.float64)
    theta = _theta(kind, 7, scale=0.2).requires_grad_(True)
    # exact derivative of the matrix exponential, checked against finite differences
    assert torch.autograd.gradcheck(lambda t: exp_transform(t, b), (theta,), eps=1e-6, atol=1e-7)
    # and through mapping points, as the optimiser uses it: every parameter moves some point
    pts = torch.tensor([[-0.7, -0.4, 1.0], [0.5, -0.6, 1.0], [0.3, 0.8, 1.0], [-0.5, 0.6, 1.0]], dtype=torch.float64)
    mapped = pts @ exp_transform(theta, b).T
    xy = mapped[:, :2] / mapped[:, 2:]
    target = torch.randn(xy.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ((xy - target) ** 2).sum().backward()
    assert theta.grad is not None and torch.all(torch.isfinite(theta.grad))
    assert torch.all(theta.grad.abs() > 1e-6), theta.grad
