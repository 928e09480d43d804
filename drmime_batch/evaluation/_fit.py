"""The best matrix the landmarks allow: a floor for any global (affine/homography) registration."""

from __future__ import annotations

from typing import Literal

import numpy as np

from drmime_batch.core._convention import apply_matrix
from drmime_batch.errors import ConfigError, LandmarkError
from drmime_batch.evaluation._landmarks import pair_landmarks

__all__ = ["best_fit_matrix"]

_MIN_POINTS = {"affine": 3, "homography": 4}


def _normaliser(points: np.ndarray) -> np.ndarray:
    """Hartley normalisation: centroid to 0, mean distance sqrt(2)."""
    c = points.mean(axis=0)
    d = np.mean(np.hypot(*(points - c).T))
    s = np.sqrt(2.0) / d if d > 0 else 1.0
    return np.array([[s, 0.0, -s * c[0]], [0.0, s, -s * c[1]], [0.0, 0.0, 1.0]])


def _fit_affine(f: np.ndarray, m: np.ndarray) -> np.ndarray:
    design = np.c_[f, np.ones(len(f))]
    coef, *_ = np.linalg.lstsq(design, m, rcond=None)
    out = np.eye(3)
    out[:2, :] = coef.T
    return out


def _fit_homography(f: np.ndarray, m: np.ndarray) -> np.ndarray:
    tf, tm = _normaliser(f), _normaliser(m)
    fn, mn = apply_matrix(tf, f), apply_matrix(tm, m)
    rows = []
    for (x, y), (u, v) in zip(fn, mn, strict=True):
        rows.append([x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, -u])
        rows.append([0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(rows))
    h = np.linalg.inv(tm) @ vt[-1].reshape(3, 3) @ tf
    h = h / h[2, 2]
    # Refine the algebraic (DLT) estimate on the geometric error, which is what TRE measures.
    from scipy.optimize import least_squares

    def residuals(p: np.ndarray) -> np.ndarray:
        return (apply_matrix(np.append(p, 1.0).reshape(3, 3), f) - m).ravel()

    start = h.ravel()[:8]
    if np.all(np.isfinite(residuals(start))):
        sol = least_squares(residuals, start, method="lm", xtol=1e-14, ftol=1e-14)
        if np.all(np.isfinite(sol.x)) and np.sum(sol.fun**2) <= np.sum(residuals(start) ** 2):
            h = np.append(sol.x, 1.0).reshape(3, 3)
    return h


def best_fit_matrix(
    fixed_landmarks: np.ndarray,
    moving_landmarks: np.ndarray,
    *,
    kind: Literal["affine", "homography"] = "affine",
) -> np.ndarray:
    """Least-squares fixed → moving matrix of the paired landmarks (the registration floor).

    No registration restricted to ``kind`` can do better on the landmarks' mean squared error
    than this matrix, so ``evaluate_matrix(best_fit_matrix(f, m), f, m, ...)`` is the floor to
    compare a registration with (the landmarks' own noise and the tissue's non-rigid motion).

    Parameters
    ----------
    fixed_landmarks, moving_landmarks : array_like, shape (N, 2) and (K, 2)
        ``(x, y)`` points; the first ``min(N, K)`` pair up (ANHIR).
    kind : {"affine", "homography"}
        Affine: linear least squares (exact minimiser). Homography: normalised DLT refined by
        Levenberg-Marquardt on the landmark distances.

    Returns
    -------
    ndarray, shape (3, 3), float64
        ``M`` with ``M·f_i ≈ m_i`` (``M[2] == [0, 0, 1]`` for affine, ``M[2, 2] == 1`` else).

    Raises
    ------
    LandmarkError
        Fewer pairs than the model needs (3 affine, 4 homography).
    ValueError
        An unknown ``kind``.

    Examples
    --------
    >>> f = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    >>> a = np.array([[1.1, 0.2, 5.0], [-0.1, 0.9, -3.0], [0.0, 0.0, 1.0]])
    >>> np.allclose(best_fit_matrix(f, apply_matrix(a, f)), a)
    True
    """
    if kind not in _MIN_POINTS:
        raise ConfigError(f"kind must be one of {sorted(_MIN_POINTS)}, got {kind!r}")
    f, m = pair_landmarks(np.asarray(fixed_landmarks), np.asarray(moving_landmarks))
    if len(f) < _MIN_POINTS[kind]:
        raise LandmarkError(f"a {kind} fit needs at least {_MIN_POINTS[kind]} landmark pairs, got {len(f)}")
    return _fit_affine(f, m) if kind == "affine" else _fit_homography(f, m)
