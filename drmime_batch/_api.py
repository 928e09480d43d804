"""``register``: one pair of numpy images in, one :class:`RegistrationResult` out."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from drmime_batch.core._config import RegistrationConfig
from drmime_batch.core._convention import matrix_from_level
from drmime_batch.core._optimise import optimise
from drmime_batch.core._result import RegistrationResult
from drmime_batch.errors import InputImageError

__all__ = ["register"]


def _versions() -> dict[str, str]:
    from drmime_batch import __version__

    return {"drmime_batch": __version__, "torch": torch.__version__, "numpy": np.__version__}


def _coerce_image(image: Any, name: str) -> np.ndarray:
    """Validate one input and return it as float32 (H, W, C) scaled to [0, 1]."""
    try:
        arr = np.asarray(image)
    except Exception as exc:  # pragma: no cover - exotic array-likes
        raise InputImageError(f"{name} image cannot be read as an array: {exc}") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputImageError(f"{name} image must have a numeric dtype, got {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise InputImageError(
            f"{name} image must be 2-D (H, W) or 3-D (H, W, C), got shape {arr.shape}"
        )
    if arr.ndim == 3 and not 1 <= arr.shape[2] <= 8:
        raise InputImageError(
            f"{name} image must have 1 to 8 channels in its last axis, got shape {arr.shape}"
        )
    if arr.size == 0 or min(arr.shape[:2]) < 8:
        raise InputImageError(f"{name} image is empty or smaller than 8x8 pixels: shape {arr.shape}")
    arr = arr.astype(np.float32, copy=False)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    finite = np.isfinite(arr)
    if not finite.any():
        raise InputImageError(f"{name} image has no finite values (all NaN/inf)")
    if not finite.all():
        warnings.warn(
            f"{name} image has {int((~finite).sum())} non-finite values; they are treated as background",
            stacklevel=3,
        )
        arr = np.where(finite, arr, np.nanmin(np.where(finite, arr, np.nan)))
    sample = arr[:: max(1, arr.shape[0] // 512), :: max(1, arr.shape[1] // 512)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if hi - lo <= 0:
        lo, hi = float(arr.min()), float(arr.max())
    if hi - lo <= 0:
        raise InputImageError(f"{name} image is constant (every pixel is {lo:g}): nothing to register")
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def _to_tensor(arr: np.ndarray, max_size: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """(C, H, W) tensor no larger than ``max_size`` and its downsample factors (sx, sy)."""
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    h, w = t.shape[1:]
    if max(h, w) <= max_size:
        return t, (1.0, 1.0)
    f = max_size / max(h, w)
    size = [max(8, round(h * f)), max(8, round(w * f))]
    small = F.interpolate(t.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return small, (w / size[1], h / size[0])


def register(
    fixed: Any,
    moving: Any,
    *,
    transform: str = "affine",
    metric: str = "mine",
    config: RegistrationConfig | None = None,
    callback: Callable[[int, float], None] | None = None,
    **options: Any,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` with DRMIME (or a baseline similarity).

    Parameters
    ----------
    fixed, moving : array_like, shape (H, W) or (H, W, C)
        Any numeric dtype; the two may differ in size, dtype and channels (e.g. H&E RGB against a
        single stain channel). Each is scaled to [0, 1] by its own 0.5–99.5 percentiles.
    transform : {"translation", "rigid", "similarity", "affine", "homography"}
    metric : {"mine", "mse", "ncc", "mi"}
        ``"mine"`` (DRMIME) or a baseline in the same optimiser.
    config : RegistrationConfig, optional
        Every other setting; ``options`` override its fields by name (``device="cuda"``,
        ``seed=1``, ``max_iterations=200``, ...).
    callback : callable, optional
        ``callback(iteration, similarity)`` every 10 iterations (live progress).

    Returns
    -------
    RegistrationResult
        ``result.matrix`` maps a fixed pixel ``(x, y)`` (x = column) to the moving pixel it shows,
        in the pixel coordinates of the arrays given: ``registered(p) = moving(M @ p)``.

    Raises
    ------
    InputImageError
        (a ``ValueError``) for empty, wrong-rank, all-NaN or constant images.
    RegistrationDivergedError
        (a ``RuntimeError``) when the optimisation produced a non-finite or degenerate transform.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:64, :64]
    >>> fixed = np.exp(-((xx - 30.0) ** 2 + (yy - 34.0) ** 2) / 80.0)
    >>> moving = np.exp(-((xx - 33.0) ** 2 + (yy - 32.0) ** 2) / 80.0)
    >>> res = register(fixed, moving, transform="translation", metric="ncc", init="none",
    ...                max_iterations=150)
    >>> np.round(res.matrix[:2, 2]).tolist()
    [3.0, -2.0]
    """
    base = config if config is not None else RegistrationConfig()
    merged = base.to_dict() | options | {"transform": transform, "metric": metric}
    if config is not None and transform == "affine" and "transform" not in options:
        merged["transform"] = config.transform
    if config is not None and metric == "mine" and "metric" not in options:
        merged["metric"] = config.metric
    cfg = RegistrationConfig.from_dict(merged)
    f_arr = _coerce_image(fixed, "fixed")
    m_arr = _coerce_image(moving, "moving")
    f_t, f_ds = _to_tensor(f_arr, cfg.max_size)
    m_t, m_ds = _to_tensor(m_arr, cfg.max_size)
    out = optimise(f_t, m_t, cfg, callback=callback)
    matrix = matrix_from_level(out.matrix, fixed_downsample=f_ds, moving_downsample=m_ds)
    return RegistrationResult(
        matrix=matrix,
        transform=cfg.transform,
        metric=cfg.metric,
        parameters=out.parameters,
        level_scores=out.level_scores,
        loss_history=out.history,
        iterations=out.iterations,
        init=out.init,
        timings=out.timings,
        device=out.device,
        seed=cfg.seed,
        config=cfg.to_dict(),
        versions=_versions(),
        fixed_shape=tuple(np.shape(fixed)),
        moving_shape=tuple(np.shape(moving)),
    )
