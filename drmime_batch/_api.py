"""``register``: one pair of numpy images in, one :class:`RegistrationResult` out."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from drmime_batch.core._config import RegistrationConfig
from drmime_batch.core._convention import matrix_from_crop, matrix_from_level
from drmime_batch.core._field import DisplacementField
from drmime_batch.core._mask import tissue_box
from drmime_batch.core._optimise import optimise
from drmime_batch.core._result import RegistrationResult
from drmime_batch.errors import DrmimeWarning, InputImageError

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
            DrmimeWarning,
            stacklevel=3,
        )
        arr = np.where(finite, arr, np.nanmin(np.where(finite, arr, np.nan)))
    # Each channel by its own robust range: channels of one image can differ by orders of
    # magnitude (a bright nuclear stain beside a faint marker, an alpha channel), and the
    # statistics network learns slowly on inputs squeezed into a sliver of [0, 1].
    c = arr.shape[2]
    sample = arr[:: max(1, arr.shape[0] // 512), :: max(1, arr.shape[1] // 512)].reshape(-1, c)
    lo, hi = np.percentile(sample, [0.5, 99.5], axis=0)
    flat = hi - lo <= 0
    lo = np.where(flat, arr.reshape(-1, c).min(0), lo)
    hi = np.where(flat, arr.reshape(-1, c).max(0), hi)
    if np.all(hi - lo <= 0):
        raise InputImageError(f"{name} image is constant (every pixel is {float(lo[0]):g}): nothing to register")
    span = np.where(hi - lo > 0, hi - lo, 1.0)  # a constant channel becomes 0: it carries nothing
    return np.clip((arr - lo) / span, 0.0, 1.0).astype(np.float32)


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


#: Below this tissue fraction an automatic mask counts as "no tissue found" (whole image used).
_MIN_TISSUE_FRACTION = 0.005


def _user_mask(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """A user mask (non-zero = tissue) as a boolean array of the image's (H, W)."""
    from drmime_batch.core._mask import resize_mask

    try:
        arr = np.asarray(mask)
    except Exception as exc:  # pragma: no cover - exotic array-likes
        raise InputImageError(f"{name} mask cannot be read as an array: {exc}") from exc
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise InputImageError(f"{name} mask must be a 2-D (H, W) or 3-D (H, W, C) image, got shape {arr.shape}")
    h, w = shape
    mh, mw = arr.shape[:2]
    # A mask may come from a lower pyramid level: same aspect ratio (to 2 %), any size.
    if abs((mw / mh) / (w / h) - 1.0) > 0.02:
        raise InputImageError(
            f"{name} mask has shape {arr.shape[:2]}, which does not match the image's {shape} "
            "(nor its aspect ratio, for a lower-resolution mask)"
        )
    out = resize_mask(arr, shape)
    if not out.any():
        raise InputImageError(f"{name} mask covers no pixel: nothing to register")
    return out


def _mask_for(user: Any, image: np.ndarray, name: str, cfg: RegistrationConfig) -> tuple[np.ndarray | None, dict]:
    """The tissue mask of one image and the record of where it came from."""
    from drmime_batch.core._mask import tissue_mask

    shape = image.shape[:2]
    if user is not None:
        m = _user_mask(user, shape, name)
        return m, {"source": "user", "fraction": float(m.mean())}
    if cfg.mask == "none":
        return None, {"source": "none"}
    m = tissue_mask(image)
    fraction = float(m.mean())
    if fraction < _MIN_TISSUE_FRACTION:
        # Documented fall back: a blank-looking image still registers, on the whole frame.
        return None, {"source": "auto", "fraction": fraction, "fallback": "no tissue found: the whole image is used"}
    return m, {"source": "auto", "fraction": fraction}


def _without_ink(raw: Any, image: np.ndarray) -> tuple[np.ndarray, float]:
    """``image`` with marker-pen ink painted over by the colours around it, and the ink fraction.

    Ink strokes are long, dark structures in one section only; a similarity measure gains by
    laying them over dark structures of the other section. Filled with the local mean of the
    surrounding non-ink pixels (normalised convolution), they carry no structure.
    """
    from scipy import ndimage

    from drmime_batch.core._mask import ink_mask

    ink = ink_mask(np.asarray(raw))
    fraction = float(ink.mean())
    if fraction == 0.0 or fraction > 0.5:  # none, or a "slide" that is mostly ink: leave it
        return image, fraction
    keep = (~ink).astype(np.float32)
    sigma = max(2.0, 0.02 * min(image.shape[:2]))
    weight = ndimage.gaussian_filter(keep, sigma)
    out = image.copy()
    for c in range(image.shape[2]):
        fill = ndimage.gaussian_filter(image[..., c] * keep, sigma) / np.maximum(weight, 1e-6)
        out[..., c] = np.where(ink, fill, image[..., c])
    return out, fraction


def _mask_tensor(mask: np.ndarray | None, shape: tuple[int, int]) -> torch.Tensor | None:
    """The mask at a tensor's (H, W), as a float tensor (1 = tissue)."""
    if mask is None:
        return None
    from drmime_batch.core._mask import resize_mask

    return torch.from_numpy(resize_mask(mask, (int(shape[0]), int(shape[1]))).astype(np.float32))


def register(
    fixed: Any,
    moving: Any,
    *,
    transform: str = "affine",
    metric: str = "mine",
    config: RegistrationConfig | None = None,
    callback: Callable[[int, float], None] | None = None,
    fixed_mask: Any = None,
    moving_mask: Any = None,
    **options: Any,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` with DRMIME (or a baseline similarity).

    Parameters
    ----------
    fixed, moving : array_like, shape (H, W) or (H, W, C)
        Any numeric dtype; the two may differ in size, dtype and channels (e.g. H&E RGB against a
        single stain channel). Each channel is scaled to [0, 1] by its own 0.5–99.5 percentiles.
    transform : {"translation", "rigid", "similarity", "affine", "homography"}
    metric : {"mine", "mse", "ncc", "mi"}
        ``"mine"`` (DRMIME) or a baseline in the same optimiser.
    config : RegistrationConfig, optional
        Every other setting; ``options`` override its fields by name (``device="cuda"``,
        ``seed=1``, ``max_iterations=200``, ...).
    callback : callable, optional
        ``callback(iteration, similarity)`` every 10 iterations (live progress).
    fixed_mask, moving_mask : array_like, optional
        Tissue masks (non-zero = tissue), of the image's size or of a lower resolution with the
        same aspect ratio. Without them, ``mask="auto"`` (the default) computes them. Masks place
        the initialisation's centres of mass and crop the registration to the tissue when the
        tissue is small on a large image (``result.masks`` records what was used).

    Returns
    -------
    RegistrationResult
        ``result.matrix`` maps a fixed pixel ``(x, y)`` (x = column) to the moving pixel it shows,
        in the pixel coordinates of the arrays given: ``registered(p) = moving(M @ p)``.

    Raises
    ------
    InputImageError
        (a ``ValueError``) for empty, wrong-rank, all-NaN or constant images, and for masks of
        another shape or covering nothing.
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
    inks = (0.0, 0.0)
    if cfg.mask == "auto":
        (f_arr, f_ink), (m_arr, m_ink) = _without_ink(fixed, f_arr), _without_ink(moving, m_arr)
        inks = (f_ink, m_ink)
    f_mask, f_record = _mask_for(fixed_mask, f_arr, "fixed", cfg)
    m_mask, m_record = _mask_for(moving_mask, m_arr, "moving", cfg)
    f_record["ink_fraction"], m_record["ink_fraction"] = inks
    if "fallback" in f_record or "fallback" in m_record:
        # Centres of mass must mean the same thing in both images: when one image shows no
        # background to tell tissue from (a view filled with tissue), the other's automatic mask
        # is not used either.
        for mask_record in (f_record, m_record):
            if mask_record["source"] == "auto" and "fallback" not in mask_record:
                mask_record["fallback"] = "the other image's mask found no tissue: the whole image is used"
        f_mask = f_mask if f_record["source"] == "user" else None
        m_mask = m_mask if m_record["source"] == "user" else None
    # Crop each image to its tissue (when that is small on an image larger than max_size) before
    # shrinking: a small biopsy on a large slide keeps the resolution it needs. Offsets go back
    # into the matrix.
    offsets = []
    for arr_mask, record in ((f_mask, f_record), (m_mask, m_record)):
        box = tissue_box(arr_mask) if arr_mask is not None and max(arr_mask.shape) > cfg.max_size else None
        record["crop"] = list(box) if box else None
        offsets.append((box[2], box[0]) if box else (0, 0))
    if f_record["crop"] and f_mask is not None:  # a crop exists only where a mask does
        y0, y1, x0, x1 = f_record["crop"]
        f_arr, f_mask = f_arr[y0:y1, x0:x1], f_mask[y0:y1, x0:x1]
    if m_record["crop"] and m_mask is not None:
        y0, y1, x0, x1 = m_record["crop"]
        m_arr, m_mask = m_arr[y0:y1, x0:x1], m_mask[y0:y1, x0:x1]
    f_t, f_ds = _to_tensor(f_arr, cfg.max_size)
    m_t, m_ds = _to_tensor(m_arr, cfg.max_size)
    out = optimise(
        f_t, m_t, cfg, callback=callback,
        fixed_mask=_mask_tensor(f_mask, (int(f_t.shape[1]), int(f_t.shape[2]))),
        moving_mask=_mask_tensor(m_mask, (int(m_t.shape[1]), int(m_t.shape[2]))),
    )
    matrix = matrix_from_level(out.matrix, fixed_downsample=f_ds, moving_downsample=m_ds)
    matrix = matrix_from_crop(matrix, fixed_offset=offsets[0], moving_offset=offsets[1])
    field = None
    if out.field is not None:  # in pixels of the shrunk fixed tensor: to those of the array given
        ox, oy = (float(v) for v in out.field["origin"])
        sx, sy = (float(v) for v in out.field["spacing"])
        field = DisplacementField(out.field["forward"], out.field["inverse"], origin=(ox, oy),
                                  spacing=(sx, sy)).rescaled(f_ds).shifted(offsets[0])
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
        masks={"fixed": f_record, "moving": m_record},
        deformation=out.deformation or {},
        field=field,
    )
