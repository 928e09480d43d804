"""Landmark error figures of one registration: TRE, rTRE, NAED, robustness.

Definitions (the ANHIR challenge, Borovec et al., IEEE TMI 2020, and the DRMIME paper, Nan et
al., MIDL 2020, arXiv:2001.09865), with ``M`` the fixed → moving matrix of
:mod:`drmime_batch.core._convention` and the first ``n = min(n_fixed, n_moving)`` landmarks paired:

- ``TRE_i = |M·f_i - m_i|`` in moving-image pixels (and µm when the pixel size is known);
- ``rTRE_i = TRE_i / d`` with ``d = sqrt(H² + W²)`` the diagonal of the fixed image;
- ``NAED`` = the normalised average Euclidean distance: ``mean_i TRE_i / d``. The DRMIME paper
  normalises the average landmark distance by the image size; we use the diagonal as ANHIR does,
  so NAED equals the mean rTRE of the pair (it is reported under its own name for comparison
  with the paper's tables);
- ``robustness`` = share of landmarks whose error is strictly smaller than before registration
  (the identity matrix), as ANHIR's ``Robustness``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from drmime_batch.core._convention import apply_matrix
from drmime_batch.core._field import DisplacementField, map_points
from drmime_batch.errors import ConfigError
from drmime_batch.evaluation._landmarks import pair_landmarks

__all__ = ["LandmarkScores", "evaluate_matrix", "image_diagonal", "landmark_errors", "summarise"]


@dataclass(frozen=True)
class LandmarkScores:
    """Landmark errors of one registered pair (immutable).

    Attributes
    ----------
    tre_median_px, tre_mean_px, tre_max_px : float
        Target registration error in moving-image pixels.
    rtre_median, rtre_mean, rtre_max : float
        TRE divided by the fixed image's diagonal.
    naed : float
        Normalised average Euclidean distance (mean TRE / diagonal, DRMIME paper).
    robustness : float
        Share (0-1) of landmarks whose error improved on the identity.
    identity_rtre_median, identity_rtre_mean : float
        The same figures before registration (identity matrix).
    n_points : int
        Landmarks paired (``min(n_fixed, n_moving)``).
    diagonal_px : float
        ``sqrt(H² + W²)`` of the fixed image.
    tre_median_um, tre_mean_um : float or None
        TRE in micrometres, when a pixel size was given.
    """

    tre_median_px: float
    tre_mean_px: float
    tre_max_px: float
    rtre_median: float
    rtre_mean: float
    rtre_max: float
    naed: float
    robustness: float
    identity_rtre_median: float
    identity_rtre_mean: float
    n_points: int
    diagonal_px: float
    tre_median_um: float | None = None
    tre_mean_um: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict of every field.

        Examples
        --------
        >>> s = evaluate_matrix(np.eye(3), [[0, 0]], [[3, 4]], fixed_shape=(30, 40))
        >>> s.to_dict()["tre_mean_px"], s.to_dict()["rtre_mean"]
        (5.0, 0.1)
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LandmarkScores:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in names})


def image_diagonal(shape: Sequence[int]) -> float:
    """``sqrt(H² + W²)`` of an image of shape ``(H, W[, C])``.

    Examples
    --------
    >>> image_diagonal((3, 4))
    5.0
    """
    if len(shape) < 2:
        raise ConfigError(f"fixed_shape must be (H, W) or (H, W, C), got {tuple(shape)!r}")
    h, w = int(shape[0]), int(shape[1])
    if h <= 0 or w <= 0:
        raise ConfigError(f"fixed_shape must be positive, got {tuple(shape)!r}")
    return math.hypot(h, w)


def _pixel_size_pair(pixel_size: float | Sequence[float]) -> tuple[float, float]:
    if np.isscalar(pixel_size):
        px = py = float(pixel_size)  # type: ignore[arg-type]
    else:
        values = [float(v) for v in pixel_size]  # type: ignore[union-attr]
        if len(values) != 2:
            raise ConfigError(f"pixel_size must be a number or an (x, y) pair in µm, got {pixel_size!r}")
        px, py = values
    if not (px > 0 and py > 0 and math.isfinite(px) and math.isfinite(py)):
        raise ConfigError(f"pixel_size must be positive and finite (µm per pixel), got {pixel_size!r}")
    return px, py


def landmark_errors(
    matrix: np.ndarray,
    fixed_landmarks: np.ndarray,
    moving_landmarks: np.ndarray,
    *,
    pixel_size: float | Sequence[float] | None = None,
    field: DisplacementField | None = None,
) -> np.ndarray:
    """Per-landmark error ``|M·f_i - m_i|`` for the first ``min(n_fixed, n_moving)`` points.

    Parameters
    ----------
    matrix : ndarray, shape (3, 3)
        Fixed → moving pixel matrix.
    fixed_landmarks, moving_landmarks : array_like, shape (N, 2) and (K, 2)
        ``(x, y)`` points.
    pixel_size : float or (px, py), optional
        Micrometres per pixel; when given the errors are in µm, else in pixels.
    field : DisplacementField, optional
        A deformable result's displacement: points map through ``M (p + d(p))``.

    Returns
    -------
    ndarray, shape (min(N, K),)

    Examples
    --------
    >>> landmark_errors(np.eye(3), [[0, 0], [1, 1]], [[3, 4], [1, 1]])
    array([5., 0.])
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        raise ConfigError(f"matrix must be a finite 3x3 array, got shape {m.shape}")
    f, mv = pair_landmarks(np.asarray(fixed_landmarks), np.asarray(moving_landmarks))
    diff = (apply_matrix(m, f) if field is None else map_points(m, field, f)) - mv
    if pixel_size is not None:
        px, py = _pixel_size_pair(pixel_size)
        diff = diff * np.array([px, py])
    return np.hypot(diff[:, 0], diff[:, 1])


def evaluate_matrix(
    matrix: np.ndarray,
    fixed_landmarks: np.ndarray,
    moving_landmarks: np.ndarray,
    *,
    fixed_shape: Sequence[int],
    pixel_size: float | Sequence[float] | None = None,
    field: DisplacementField | None = None,
) -> LandmarkScores:
    """Score a fixed → moving matrix (and a deformable result's ``field``) against paired landmarks.

    Parameters
    ----------
    matrix : ndarray, shape (3, 3)
        Full-resolution fixed → moving pixel matrix (``drmime_batch.core._convention``).
    fixed_landmarks, moving_landmarks : array_like, shape (N, 2) and (K, 2)
        ``(x, y)`` landmarks in full-resolution pixels of each image; the first
        ``min(N, K)`` pair up (ANHIR).
    fixed_shape : (H, W) or (H, W, C)
        Full-resolution shape of the fixed image (for the diagonal).
    pixel_size : float or (px, py), optional
        Micrometres per pixel (of the moving image, where the error is measured); adds the µm
        figures.

    Returns
    -------
    LandmarkScores
        A new immutable record; nothing is modified.

    Raises
    ------
    LandmarkError
        Landmarks not ``(N, 2)`` or no pair left.
    ValueError
        A matrix that is not a finite 3x3, or a bad shape / pixel size.

    See Also
    --------
    best_fit_matrix : the least-squares floor these figures can be compared with.

    Examples
    --------
    A translation by (3, 4) pixels, evaluated with the identity and with the right matrix:

    >>> f = np.array([[10.0, 10.0], [20.0, 10.0], [10.0, 30.0]])
    >>> m = f + [3.0, 4.0]
    >>> s = evaluate_matrix(np.eye(3), f, m, fixed_shape=(60, 80))
    >>> s.tre_median_px, s.rtre_median, s.robustness
    (5.0, 0.05, 0.0)
    >>> t = np.array([[1, 0, 3], [0, 1, 4], [0, 0, 1.0]])
    >>> s = evaluate_matrix(t, f, m, fixed_shape=(60, 80), pixel_size=0.5)
    >>> s.tre_max_px, s.robustness, s.identity_rtre_median, s.tre_mean_um
    (0.0, 1.0, 0.05, 0.0)
    """
    diag = image_diagonal(fixed_shape)
    tre = landmark_errors(matrix, fixed_landmarks, moving_landmarks, field=field)
    identity = landmark_errors(np.eye(3), fixed_landmarks, moving_landmarks)
    um_median = um_mean = None
    if pixel_size is not None:
        tre_um = landmark_errors(matrix, fixed_landmarks, moving_landmarks, pixel_size=pixel_size, field=field)
        um_median, um_mean = float(np.median(tre_um)), float(np.mean(tre_um))
    rtre = tre / diag
    return LandmarkScores(
        tre_median_px=float(np.median(tre)),
        tre_mean_px=float(np.mean(tre)),
        tre_max_px=float(np.max(tre)),
        rtre_median=float(np.median(rtre)),
        rtre_mean=float(np.mean(rtre)),
        rtre_max=float(np.max(rtre)),
        naed=float(np.mean(tre) / diag),
        robustness=float(np.mean(tre < identity)),
        identity_rtre_median=float(np.median(identity) / diag),
        identity_rtre_mean=float(np.mean(identity) / diag),
        n_points=int(len(tre)),
        diagonal_px=float(diag),
        tre_median_um=um_median,
        tre_mean_um=um_mean,
    )


def summarise(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Median, mean and 90th percentile of per-pair figures (``None``/NaN skipped).

    Returns
    -------
    dict
        ``{"n": count, "median": ..., "mean": ..., "p90": ...}`` (``None`` when ``n == 0``).

    Examples
    --------
    >>> summarise([1.0, 2.0, 3.0, None])
    {'n': 3, 'median': 2.0, 'mean': 2.0, 'p90': 2.8}
    """
    arr = np.array([float(v) for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"n": 0, "median": None, "mean": None, "p90": None}
    return {
        "n": int(arr.size),
        "median": float(np.median(arr)),
        "mean": float(np.mean(arr)),
        "p90": round(float(np.percentile(arr, 90)), 12),
    }


