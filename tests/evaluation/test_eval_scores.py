from __future__ import annotations

import math

import numpy as np
import pytest

from drmime_batch.core._convention import apply_matrix
from drmime_batch.errors import LandmarkError
from drmime_batch.evaluation import LandmarkScores, best_fit_matrix, evaluate_matrix, landmark_errors, summarise

# Three fixed points and moving points displaced by hand-chosen vectors: errors 5, 0 and 13 px
# under the identity; image 30 x 40 -> diagonal 50.
FIXED = np.array([[1.0, 1.0], [10.0, 5.0], [20.0, 20.0]])
MOVING = np.array([[4.0, 5.0], [10.0, 5.0], [25.0, 32.0]])


def test_identity_figures_by_hand() -> None:
    s = evaluate_matrix(np.eye(3), FIXED, MOVING, fixed_shape=(30, 40))
    assert s.diagonal_px == 50.0
    assert s.tre_median_px == 5.0 and s.tre_mean_px == 6.0 and s.tre_max_px == 13.0
    assert s.rtre_median == pytest.approx(0.1) and s.rtre_mean == pytest.approx(0.12)
    assert s.rtre_max == pytest.approx(0.26)
    assert s.naed == pytest.approx(6.0 / 50.0)
    assert s.identity_rtre_median == pytest.approx(0.1)
    assert s.robustness == 0.0  # nothing strictly improved on the identity
    assert s.n_points == 3 and s.tre_median_um is None


def test_translation_figures_by_hand_and_robustness() -> None:
    # translate by (3, 4): point 0 becomes exact, point 1 gets error 5, point 2 error |(2, 8)|
    t = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, 4.0], [0.0, 0.0, 1.0]])
    s = evaluate_matrix(t, FIXED, MOVING, fixed_shape=(30, 40, 3))
    e2 = math.hypot(2.0, 8.0)
    assert s.tre_median_px == pytest.approx(5.0)
    assert s.tre_mean_px == pytest.approx((0.0 + 5.0 + e2) / 3)
    assert s.rtre_max == pytest.approx(e2 / 50)
    assert s.naed == pytest.approx((5.0 + e2) / 3 / 50)
    assert s.robustness == pytest.approx(2 / 3)  # points 0 and 2 improved, point 1 got worse


def test_micrometres_with_anisotropic_pixels() -> None:
    s = evaluate_matrix(np.eye(3), FIXED[:1], MOVING[:1], fixed_shape=(30, 40), pixel_size=(2.0, 0.5))
    assert s.tre_median_um == pytest.approx(math.hypot(3 * 2.0, 4 * 0.5))
    assert s.tre_median_px == 5.0


def test_projective_matrix_divides_by_w() -> None:
    h = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])  # the identity, projectively
    np.testing.assert_allclose(landmark_errors(h, FIXED, FIXED), 0.0)


def test_mismatched_counts_pair_first_points_like_anhir() -> None:
    extra = np.vstack([MOVING, [[1000.0, 1000.0]]])
    a = evaluate_matrix(np.eye(3), FIXED, extra, fixed_shape=(30, 40))
    b = evaluate_matrix(np.eye(3), np.vstack([FIXED, [[0.0, 0.0]]]), MOVING, fixed_shape=(30, 40))
    ref = evaluate_matrix(np.eye(3), FIXED, MOVING, fixed_shape=(30, 40))
    assert a == ref and b == ref and a.n_points == 3


def test_to_dict_round_trip() -> None:
    s = evaluate_matrix(np.eye(3), FIXED, MOVING, fixed_shape=(30, 40), pixel_size=0.25)
    d = s.to_dict()
    assert d["rtre_median"] == s.rtre_median and d["tre_mean_um"] == pytest.approx(1.5)
    assert LandmarkScores.from_dict({**d, "unknown": 1}) == s


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"matrix": np.eye(2)}, ValueError, r"finite 3x3"),
        ({"matrix": np.full((3, 3), np.nan)}, ValueError, r"finite 3x3"),
        ({"fixed_shape": (30,)}, ValueError, r"fixed_shape must be"),
        ({"fixed_shape": (0, 5)}, ValueError, r"fixed_shape must be positive"),
        ({"pixel_size": -1.0}, ValueError, r"pixel_size must be positive"),
        ({"fixed_landmarks": np.zeros((2, 3))}, LandmarkError, r"fixed_landmarks must have shape"),
    ],
)
def test_bad_inputs(kwargs: dict, exc: type, match: str) -> None:
    args = {"matrix": np.eye(3), "fixed_landmarks": FIXED, "moving_landmarks": MOVING, "fixed_shape": (30, 40)}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        evaluate_matrix(
            args["matrix"], args["fixed_landmarks"], args["moving_landmarks"],
            fixed_shape=args["fixed_shape"], pixel_size=args.get("pixel_size"),
        )


def _points(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 500, size=(n, 2))


def test_affine_floor_is_zero_for_exact_affine_landmarks() -> None:
    a = np.array([[0.95, 0.2, 12.0], [-0.15, 1.05, -7.0], [0.0, 0.0, 1.0]])
    f = _points(20, 0)
    m = apply_matrix(a, f)
    fit = best_fit_matrix(f, m)
    np.testing.assert_allclose(fit, a, atol=1e-9)
    assert evaluate_matrix(fit, f, m, fixed_shape=(500, 500)).tre_max_px < 1e-9


def test_homography_floor_is_zero_for_exact_homography_landmarks() -> None:
    h = np.array([[1.02, 0.1, 5.0], [-0.05, 0.97, 3.0], [2e-4, -1e-4, 1.0]])
    f = _points(15, 1)
    m = apply_matrix(h, f)
    fit = best_fit_matrix(f, m, kind="homography")
    np.testing.assert_allclose(fit, h, rtol=1e-6, atol=1e-8)
    assert evaluate_matrix(fit, f, m, fixed_shape=(500, 500)).tre_max_px < 1e-6
    # an affine model cannot absorb the perspective part
    assert evaluate_matrix(best_fit_matrix(f, m), f, m, fixed_shape=(500, 500)).tre_max_px > 0.5


def test_floor_is_least_squares_under_noise() -> None:
    rng = np.random.default_rng(2)
    f = _points(40, 3)
    m = f + [4.0, -2.0] + rng.normal(scale=2.0, size=f.shape)
    fit = best_fit_matrix(f, m)
    sse = np.sum(landmark_errors(fit, f, m) ** 2)
    for _ in range(20):  # any perturbation of the floor is worse in squared error
        assert np.sum(landmark_errors(fit + np.r_[rng.normal(scale=1e-3, size=(2, 3)), [[0, 0, 0]]], f, m) ** 2) > sse
    assert np.sum(landmark_errors(best_fit_matrix(f, m, kind="homography"), f, m) ** 2) <= sse + 1e-9


def test_floor_needs_enough_points_and_a_known_kind() -> None:
    with pytest.raises(LandmarkError, match="affine fit needs at least 3 landmark pairs, got 2"):
        best_fit_matrix(_points(2, 0), _points(2, 1))
    with pytest.raises(LandmarkError, match="homography fit needs at least 4"):
        best_fit_matrix(_points(3, 0), _points(5, 1), kind="homography")
    with pytest.raises(ValueError, match="kind must be one of"):
        best_fit_matrix(_points(5, 0), _points(5, 1), kind="rigid")  # type: ignore[arg-type]


def test_summarise() -> None:
    s = summarise([0.1, 0.3, 0.2, float("nan"), None, 0.4])
    assert s["n"] == 4 and s["median"] == pytest.approx(0.25) and s["mean"] == pytest.approx(0.25)
    assert s["p90"] == pytest.approx(np.percentile([0.1, 0.2, 0.3, 0.4], 90))
    assert summarise([]) == {"n": 0, "median": None, "mean": None, "p90": None}
