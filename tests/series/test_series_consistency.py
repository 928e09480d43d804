"""The consistency solve on synthetic series: exact links give the truth, noisy links beat plain chaining."""

from __future__ import annotations

import numpy as np

from drmime_batch.series import LinkMatrix, SeriesSlide, plan_series, solve_consistent

SHAPE = (400, 500)


def _affine(rng: np.random.Generator, scale: float) -> np.ndarray:
    """A small random affine about the frame's centre (rotation, scale, shear, shift)."""
    a = np.deg2rad(rng.normal(0, 3 * scale))
    s = 1 + rng.normal(0, 0.02 * scale, 2)
    shear = rng.normal(0, 0.02 * scale)
    lin = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array([[s[0], shear], [0, s[1]]])
    c = np.array([SHAPE[1] / 2, SHAPE[0] / 2])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = c - lin @ c + rng.normal(0, 8 * scale, 2)
    return m


def _series(n: int, seed: int, noise: float, skip: int = 2):
    """Ground truth reference → slide transforms and the links of a plan, each off by ``noise``."""
    rng = np.random.default_rng(seed)
    plan = plan_series("S", [SeriesSlide(f"z{i:02d}", f"/z{i}.tif") for i in range(n)], reference="z00", skip=skip)
    truth = {"z00": np.eye(3)}
    for i in range(1, n):  # each section a small step from the one before: drift along the series
        truth[f"z{i:02d}"] = _affine(rng, 1.0) @ truth[f"z{i - 1:02d}"]
    links = []
    for k in plan.links:
        exact = truth[k.moving] @ np.linalg.inv(truth[k.fixed])
        noisy = _affine(rng, noise) @ exact if noise else exact
        links.append(LinkMatrix(k.fixed, k.moving, noisy, 1.0 / k.distance, k.pair_id))
    return plan, truth, links


def _corner_error(m: np.ndarray, truth: np.ndarray) -> float:
    """Largest distance, in pixels, between where the two matrices send the frame's corners."""
    h, w = SHAPE
    pts = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], dtype=float).T
    a, b = m @ pts, truth @ pts
    return float(np.max(np.hypot(*(a[:2] / a[2] - b[:2] / b[2]))))


def test_exact_links_give_the_truth():
    plan, truth, links = _series(8, seed=1, noise=0.0)
    sol = solve_consistent(plan.reference, plan.slide_ids, links, frame_shape=SHAPE)
    assert sol.unreached == ()
    for s, t in truth.items():
        np.testing.assert_allclose(sol.transforms[s], t, atol=1e-8)
    assert max(sol.residuals.values()) < 1e-8


def test_noisy_links_consistent_beats_chaining_at_the_far_end():
    wins, far_chain, far_cons = 0, [], []
    for seed in range(10):
        plan, truth, links = _series(15, seed=seed, noise=0.5)
        sol = solve_consistent(plan.reference, plan.slide_ids, links, frame_shape=SHAPE)
        far = plan.slide_ids[-1]
        chain, cons = _corner_error(sol.chained[far], truth[far]), _corner_error(sol.transforms[far], truth[far])
        far_chain.append(chain)
        far_cons.append(cons)
        wins += cons < chain
        assert sol.iterations < 50  # converged
    assert wins >= 7
    assert np.mean(far_cons) < 0.8 * np.mean(far_chain)


def test_a_failed_link_is_routed_around_and_a_cut_off_slide_is_unreached():
    plan, truth, links = _series(6, seed=3, noise=0.0)
    without = [k for k in links if k.pair_id != "S--z02--z03"]  # z03's neighbour link failed
    sol = solve_consistent(plan.reference, plan.slide_ids, without, frame_shape=SHAPE)
    assert sol.paths["z03"] == ["S--z00--z01", "S--z01--z03"]
    np.testing.assert_allclose(sol.transforms["z03"], truth["z03"], atol=1e-8)
    cut = [k for k in links if k.moving not in ("z05",) and k.fixed != "z05"]
    sol = solve_consistent(plan.reference, plan.slide_ids, cut, frame_shape=SHAPE)
    assert sol.unreached == ("z05",) and "z05" not in sol.transforms


def test_mirrored_link_needs_no_real_logarithm_of_its_own():
    flip = np.array([[-1.0, 0, 499], [0, 1, 0], [0, 0, 1]])
    links = [LinkMatrix("a", "b", flip), LinkMatrix("b", "c", np.eye(3)), LinkMatrix("a", "c", flip)]
    sol = solve_consistent("a", ["a", "b", "c"], links, frame_shape=SHAPE)
    np.testing.assert_allclose(sol.transforms["c"], flip, atol=1e-9)
