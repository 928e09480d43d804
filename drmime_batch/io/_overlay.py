"""Both stains of a registered pair in one picture: contrast-normalised overlay and checkerboard.

Used by the worker's QC picture (:mod:`drmime_batch.io._qc`) and the HTML report
(:mod:`drmime_batch.evaluation._report_views`). Each stain is normalised on its own
(:func:`stain_density`), so a faint immunostain shows as clearly as a dark H&E.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from drmime_batch.core._field import DisplacementField, map_points

__all__ = ["checkerboard", "inside_moving", "overlay", "stain_density"]


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of 1-D ``values`` (256 bins): the split that best separates two classes."""
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1.0)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1.0)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def stain_density(rgb: np.ndarray, *, high: float = 99.0) -> np.ndarray:
    """Contrast-normalised stain amount in [0, 1] of an RGB thumbnail (0: empty glass, 1: dense).

    The absorbed light ``255 - grey`` (grey: the mean of the channels) is split into glass and
    tissue (Otsu's threshold), then stretched linearly so that the glass (up to its 90th
    percentile) maps to 0 and the tissue's ``high`` percentile to 1. The stretch is linear, so a
    stain that absorbs a quarter as much light (a faint immunostain beside a dark H&E) comes out
    the same as a dark one, and a tinted or uneven glass does not read as tissue. Pure black
    pixels (fill outside a warped image) count as glass.

    Examples
    --------
    >>> rgb = np.full((4, 4, 3), 250, np.uint8); rgb[1:3, 1:3] = 200   # a faint patch
    >>> d = stain_density(rgb)
    >>> float(d[0, 0]), float(d[1, 1])
    (0.0, 1.0)
    """
    arr = np.asarray(rgb, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    empty = np.all(arr[..., :3] == 0, axis=-1)
    absorbed = 255.0 - arr[..., :3].mean(axis=-1)
    valid = absorbed[~empty]
    if valid.size == 0 or float(valid.max() - valid.min()) < 1e-6:
        return np.zeros(absorbed.shape, dtype=np.float64)
    split = _otsu(valid)
    glass, tissue = valid[valid <= split], valid[valid > split]
    lo = float(np.percentile(glass, 90.0)) if glass.size else float(valid.min())
    hi = float(np.percentile(tissue, high)) if tissue.size else float(valid.max())
    out: np.ndarray = np.clip((absorbed - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    out[empty] = 0.0
    return out


def overlay(fixed: np.ndarray, registered: np.ndarray) -> np.ndarray:
    """Both stains on white: fixed in magenta, registered in green, black where both have tissue.

    Each image is contrast-normalised on its own (:func:`stain_density`).

    Examples
    --------
    >>> f = np.full((2, 2, 3), 255, np.uint8); f[0, 0] = 100
    >>> r = np.full((2, 2, 3), 255, np.uint8); r[0, 1] = 100
    >>> o = overlay(f, r)
    >>> o[0, 0].tolist(), o[0, 1].tolist(), o[1, 1].tolist()
    ([255, 0, 255], [0, 255, 0], [255, 255, 255])
    """
    f, r = stain_density(fixed), stain_density(registered)
    rgb = np.stack([1.0 - r, 1.0 - f, 1.0 - r], axis=-1)
    return np.round(rgb * 255.0).astype(np.uint8)


def checkerboard(fixed: np.ndarray, registered: np.ndarray, *, tiles: int = 8) -> np.ndarray:
    """Alternating squares of the fixed (magenta) and registered (green) image, ``tiles`` along the longer side.

    Structures should run on across the squares' edges when the registration is right.

    Examples
    --------
    >>> f = np.full((4, 4, 3), 90, np.uint8); f[3, 3] = 250
    >>> c = checkerboard(f, f, tiles=2)
    >>> c[0, 0].tolist(), c[0, 3].tolist()
    ([255, 0, 255], [0, 255, 0])
    """
    f, r = stain_density(fixed), stain_density(registered)
    h, w = f.shape
    size = max(1, int(np.ceil(max(h, w) / max(1, tiles))))
    yy, xx = np.mgrid[:h, :w]
    use_fixed = ((yy // size) + (xx // size)) % 2 == 0
    magenta = np.stack([np.ones_like(f), 1.0 - f, np.ones_like(f)], axis=-1)
    green = np.stack([1.0 - r, np.ones_like(r), 1.0 - r], axis=-1)
    rgb = np.where(use_fixed[..., None], magenta, green)
    return np.round(rgb * 255.0).astype(np.uint8)


def inside_moving(shape: tuple[int, ...], to_thumb: np.ndarray, matrix: Any, field: DisplacementField | None,
                   moving_shape: tuple[int, ...]) -> np.ndarray:
    """Thumbnail pixels whose tissue comes from inside the moving image (2 pixels in from its edge).

    Outside, the registered image is black fill, and its interpolated edge would read as the
    densest stain of all: those pixels count as empty glass.
    """
    from scipy import ndimage

    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[:h, :w]
    thumb = np.c_[xx.ravel(), yy.ravel()].astype(np.float64)
    full = map_points(np.linalg.inv(to_thumb), None, thumb)
    q = map_points(np.asarray(matrix, dtype=np.float64), field, full)
    mh, mw = int(moving_shape[0]), int(moving_shape[1])
    inside = ((q[:, 0] >= -0.5) & (q[:, 0] <= mw - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= mh - 0.5)).reshape(h, w)
    out: np.ndarray = ndimage.binary_erosion(inside, iterations=2, border_value=1)
    return out
