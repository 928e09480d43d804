"""Chunked backward warping of a whole slide onto the fixed image's grid.

Each output chunk is one task: it maps its own pixel box through the fixed → moving matrix ``M``
(see :mod:`drmime_batch.core._convention`), reads only the moving-image window that box needs
(plus an interpolation margin) from the file by path, and resamples it. Because every task reads
a margin that covers all its interpolation neighbours, chunks join without seams.

Sampling semantics (the same as ``scipy.ndimage.map_coordinates(..., mode="grid-constant")`` and
``torch.nn.functional.grid_sample(..., padding_mode="zeros", align_corners=False)`` on pixel
centres): bilinear (``order=1``) or nearest (``order=0``); outside the moving image is ``cval``
and a point within half a pixel of the border blends with it.

The per-pixel kernel is compiled with numba when it is installed (about 5x faster); otherwise
scipy does the work, with identical results up to float rounding.
"""

from __future__ import annotations

import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any, Sequence

import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from drmime_batch.core._field import DisplacementField, map_points
from drmime_batch.errors import ConfigError
from drmime_batch.io._sources import LevelSource

if TYPE_CHECKING:
    from drmime_batch.io._multiscale import MultiscaleImage

__all__ = ["warp", "warp_array", "resample_window"]

logger = logging.getLogger(__name__)

#: default output chunk side (pixels)
WARP_CHUNK = 1024
#: extra source pixels read around each window (interpolation neighbours + rounding)
_MARGIN = 2

_numba: ModuleType | None
try:  # pragma: no cover - exercised when numba is installed
    import numba as _numba
except ImportError:  # pragma: no cover
    _numba = None


def _kernel_py(
    src: np.ndarray,
    m: np.ndarray,
    y0: int,
    x0: int,
    out: np.ndarray,
    order: int,
    cval: float,
    is_int: bool,
    lo: float,
    hi: float,
    disp: np.ndarray,
) -> None:
    """Reference kernel, also the numba source: ``out[i, j] = src(m @ (x0 + j, y0 + i, 1))``.

    ``disp`` (bh, bw, 2), when not empty, is added to each output pixel before the matrix (a
    deformable transform's displacement, ``M (p + d(p))``).
    """
    bh, bw, nc = out.shape
    h, w = src.shape[0], src.shape[1]
    has_disp = disp.shape[0] > 0
    m00, m01, m02 = m[0, 0], m[0, 1], m[0, 2]
    m10, m11, m12 = m[1, 0], m[1, 1], m[1, 2]
    m20, m21, m22 = m[2, 0], m[2, 1], m[2, 2]
    # an affine matrix has den == 0 * x + 0 * y + 1 == 1.0 exactly: dividing by it changes no bit
    affine = m20 == 0.0 and m21 == 0.0 and m22 == 1.0
    for i in range(bh):
        for j in range(bw):
            yo = float(y0 + i)
            xo = float(x0 + j)
            if has_disp:
                xo += disp[i, j, 0]
                yo += disp[i, j, 1]
            if affine:
                xs = m00 * xo + m01 * yo + m02
                ys = m10 * xo + m11 * yo + m12
            else:
                den = m20 * xo + m21 * yo + m22
                if den <= 0.0:
                    for c in range(nc):
                        out[i, j, c] = cval
                    continue
                xs = (m00 * xo + m01 * yo + m02) / den
                ys = (m10 * xo + m11 * yo + m12) / den
            if order == 0:
                xi = int(np.floor(xs + 0.5))
                yi = int(np.floor(ys + 0.5))
                if 0 <= xi < w and 0 <= yi < h:
                    for c in range(nc):
                        out[i, j, c] = src[yi, xi, c]
                else:
                    for c in range(nc):
                        out[i, j, c] = cval
                continue
            fx = np.floor(xs)
            fy = np.floor(ys)
            xi = int(fx)
            yi = int(fy)
            ax = xs - fx
            ay = ys - fy
            bx = 1.0 - ax
            by = 1.0 - ay
            if 0 <= xi and xi + 1 < w and 0 <= yi and yi + 1 < h:
                for c in range(nc):
                    v = (bx * src[yi, xi, c] + ax * src[yi, xi + 1, c]) * by + (
                        bx * src[yi + 1, xi, c] + ax * src[yi + 1, xi + 1, c]
                    ) * ay
                    if is_int:
                        v = min(max(np.floor(v + 0.5), lo), hi)
                    out[i, j, c] = v
            elif xi < -1 or xi >= w or yi < -1 or yi >= h:
                for c in range(nc):
                    out[i, j, c] = cval
            else:
                in_x0 = xi >= 0
                in_x1 = xi + 1 < w
                in_y0 = yi >= 0
                in_y1 = yi + 1 < h
                for c in range(nc):
                    v00 = src[yi, xi, c] if (in_y0 and in_x0) else cval
                    v01 = src[yi, xi + 1, c] if (in_y0 and in_x1) else cval
                    v10 = src[yi + 1, xi, c] if (in_y1 and in_x0) else cval
                    v11 = src[yi + 1, xi + 1, c] if (in_y1 and in_x1) else cval
                    v = (bx * v00 + ax * v01) * by + (bx * v10 + ax * v11) * ay
                    if is_int:
                        v = min(max(np.floor(v + 0.5), lo), hi)
                    out[i, j, c] = v


_NO_DISP = np.zeros((0, 0, 2), dtype=np.float64)


def _int_range(dtype: np.dtype[Any]) -> tuple[bool, float, float]:
    """``(is_int, lo, hi)`` for the kernel: integer outputs are rounded and clipped to the dtype's range."""
    if not np.issubdtype(dtype, np.integer):
        return False, 0.0, 0.0
    info = np.iinfo(dtype)
    return True, float(info.min), float(info.max)

_kernel_nb = (
    _numba.njit(nogil=True, cache=True, error_model="numpy")(_kernel_py) if _numba is not None else None
)


def _grid_disp_py(rows: np.ndarray, ix: np.ndarray, fx: np.ndarray, out: np.ndarray) -> None:
    """``out[i, j, k] = rows[k, i, ix[j]] * (1 - fx[j]) + rows[k, i, ix[j] + 1] * fx[j]``.

    :meth:`DisplacementField.on_grid`'s last step, transposed to ``(h, w, 2)`` for the kernel:
    the same operations per value (so the same bits), without its full-block temporaries.
    """
    bh, bw = out.shape[0], out.shape[1]
    for i in range(bh):
        for j in range(bw):
            a = ix[j]
            f = fx[j]
            g = 1 - f
            for k in range(2):
                out[i, j, k] = rows[k, i, a] * g + rows[k, i, a + 1] * f


_grid_disp_nb = (
    _numba.njit(nogil=True, cache=True, error_model="numpy")(_grid_disp_py) if _numba is not None else None
)


def _resample_scipy(
    src: np.ndarray, m: np.ndarray, y0: int, x0: int, out: np.ndarray, order: int, cval: float
) -> None:
    from scipy import ndimage

    bh, bw = out.shape[:2]
    yy, xx = np.mgrid[y0 : y0 + bh, x0 : x0 + bw].astype(np.float64)
    den = m[2, 0] * xx + m[2, 1] * yy + m[2, 2]
    bad = den <= 0
    den = np.where(bad, 1.0, den)
    xs = (m[0, 0] * xx + m[0, 1] * yy + m[0, 2]) / den
    ys = (m[1, 0] * xx + m[1, 1] * yy + m[1, 2]) / den
    del xx, yy
    if order == 0:  # scipy rounds half-way cases its own way; use the kernel's floor(x + 0.5)
        xs = np.floor(xs + 0.5)
        ys = np.floor(ys + 0.5)
    is_int = np.issubdtype(out.dtype, np.integer)
    for c in range(out.shape[2]):
        plane = ndimage.map_coordinates(
            np.ascontiguousarray(src[..., c]), [ys, xs], order=order, mode="grid-constant", cval=cval,
            output=np.float64, prefilter=False,
        )  # fmt: skip
        plane[bad] = cval
        if is_int:
            info = np.iinfo(out.dtype)
            plane = np.clip(np.floor(plane + 0.5), info.min, info.max)
        out[..., c] = plane


def resample_window(
    src: np.ndarray,
    matrix: np.ndarray,
    out_shape: Sequence[int],
    *,
    origin: tuple[int, int] = (0, 0),
    order: int = 1,
    cval: float = 0.0,
    use_numba: bool | None = None,
    planar: bool = False,
) -> np.ndarray:
    """Backward-warp an in-memory ``(h, w[, c])`` array: ``out[i, j] = src(matrix @ (x, y, 1))``.

    ``(x, y) = (origin[1] + j, origin[0] + i)``; ``matrix`` maps those output pixel coordinates
    to ``src`` pixel coordinates (homographies are divided through). Same dtype as ``src``.
    ``planar``: the ``(h, w, c)`` result is a view of a C-ordered ``(c, h, w)`` buffer (the same
    values; ``np.moveaxis(out, 2, 0)`` is then contiguous, the planes an OME-Zarr stores).

    Examples
    --------
    >>> src = np.arange(12, dtype=np.float32).reshape(3, 4)
    >>> shift = np.array([[1.0, 0, 0.5], [0, 1, 0], [0, 0, 1]])
    >>> resample_window(src, shift, (3, 4))
    array([[ 0.5,  1.5,  2.5,  1.5],
           [ 4.5,  5.5,  6.5,  3.5],
           [ 8.5,  9.5, 10.5,  5.5]], dtype=float32)
    """
    if order not in (0, 1):
        raise ConfigError(f"order must be 0 (nearest) or 1 (linear), got {order!r}")
    m = np.ascontiguousarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ConfigError(f"matrix must be 3x3, got shape {m.shape}")
    squeeze = src.ndim == 2
    src3 = src[..., None] if squeeze else src
    out = _empty_out((int(out_shape[0]), int(out_shape[1]), src3.shape[2]), src.dtype, planar)
    if out.size:
        if use_numba is None:
            use_numba = _kernel_nb is not None
        if use_numba and _kernel_nb is not None:
            is_int, lo, hi = _int_range(src.dtype)
            _kernel_nb(src3, m, int(origin[0]), int(origin[1]), out, int(order), float(cval), is_int, lo, hi,
                       _NO_DISP)
        else:
            _resample_scipy(src3, m, int(origin[0]), int(origin[1]), out, order, cval)
    return out[..., 0] if squeeze else out


def _empty_out(shape: tuple[int, int, int], dtype: Any, planar: bool) -> np.ndarray:
    """An empty ``(h, w, c)`` output; ``planar``: a view of a C-ordered ``(c, h, w)`` buffer."""
    if planar:
        return np.empty((shape[2], shape[0], shape[1]), dtype=dtype).transpose(1, 2, 0)
    return np.empty(shape, dtype=dtype)


def _source_window(
    m: np.ndarray, y0: int, y1: int, x0: int, x1: int, shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    """Moving-image window (y0, y1, x0, x1) an output box needs; ``None`` when it misses the image."""
    # sample the box border densely enough that a homography's bounding box is right
    n = 9
    ys = np.linspace(y0 - 0.5, y1 - 0.5, n)
    xs = np.linspace(x0 - 0.5, x1 - 0.5, n)
    border = np.concatenate(
        [np.c_[xs, np.full(n, ys[0])], np.c_[xs, np.full(n, ys[-1])], np.c_[np.full(n, xs[0]), ys], np.c_[np.full(n, xs[-1]), ys]]
    )  # fmt: skip
    hom = np.c_[border, np.ones(len(border))] @ m.T
    ok = hom[:, 2] > 1e-12
    if not ok.any():
        return None
    if not ok.all():  # the horizon crosses the box: read what can be seen, clipped below
        pts = hom[ok, :2] / hom[ok, 2:3]
        lo = np.minimum(pts.min(axis=0), 0)
        hi = np.maximum(pts.max(axis=0), [shape[1], shape[0]])
    else:
        pts = hom[:, :2] / hom[:, 2:3]
        lo, hi = pts.min(axis=0), pts.max(axis=0)
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return None
    wx0 = max(int(np.floor(lo[0])) - _MARGIN, 0)
    wy0 = max(int(np.floor(lo[1])) - _MARGIN, 0)
    wx1 = min(int(np.ceil(hi[0])) + _MARGIN + 1, shape[1])
    wy1 = min(int(np.ceil(hi[1])) + _MARGIN + 1, shape[0])
    if wx1 <= wx0 or wy1 <= wy0:
        return None
    return wy0, wy1, wx0, wx1


def _warp_block_displaced(
    source: LevelSource | np.ndarray, matrix: np.ndarray, disp: np.ndarray, y0: int, y1: int, x0: int, x1: int,
    order: int, cval: float,
) -> np.ndarray:
    """One block through ``M (p + d(p))`` with ``d`` given per output pixel, by the compiled kernel."""
    assert _kernel_nb is not None
    shape = source.shape
    out_shape = (y1 - y0, x1 - x0, *shape[2:])
    reach = int(np.ceil(np.abs(disp).max())) + 1 if disp.size else 0  # the box, widened by the field
    window = _source_window(matrix, y0 - reach, y1 + reach, x0 - reach, x1 + reach, shape)
    if window is None:
        return np.full(out_shape, cval, dtype=source.dtype)
    wy0, wy1, wx0, wx1 = window
    src = np.asarray(source[wy0:wy1, wx0:wx1])
    src3 = src[..., None] if src.ndim == 2 else src
    to_window = np.array([[1.0, 0.0, -wx0], [0.0, 1.0, -wy0], [0.0, 0.0, 1.0]]) @ matrix
    out = _empty_out((y1 - y0, x1 - x0, src3.shape[2]), src.dtype, planar=True)
    is_int, lo, hi = _int_range(src.dtype)
    _kernel_nb(src3, np.ascontiguousarray(to_window), int(y0), int(x0), out, int(order), float(cval), is_int, lo, hi,
               disp)
    return out.reshape(out_shape)


def _warp_block_field(
    source: LevelSource | np.ndarray,
    matrix: np.ndarray,
    field: DisplacementField,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    order: int,
    cval: float,
    inverse_field: bool = False,
) -> np.ndarray:
    """One output block through ``M (p + d(p))`` (``inverse_field``: ``r + d_inv(r)``, ``r = M p``).

    The block computes its own coordinates and reads its own window of the source.
    """
    shape = source.shape
    out_shape = (y1 - y0, x1 - x0, *shape[2:])
    xs, ys = np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
    if not inverse_field and _kernel_nb is not None and _grid_disp_nb is not None:
        # compiled: the displacement (separable), then the matrix, with no full-block temporaries
        rows, ix, fx = field.grid_rows(xs, ys)
        disp = np.empty((y1 - y0, x1 - x0, 2), dtype=np.float64)
        _grid_disp_nb(np.ascontiguousarray(rows), ix, fx, disp)
        return _warp_block_displaced(source, matrix, disp, y0, y1, x0, x1, order, cval)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    if inverse_field:  # matrix is M^-1 here: the inverse map of a deformable transform
        p = np.c_[xx.ravel(), yy.ravel()]
        q = field.invert(map_points(matrix, None, p))
    else:  # the displacement of a whole block at once (separable), then the matrix
        d = field.on_grid(xs, ys)
        q = map_points(matrix, None, np.c_[(xx + d[0]).ravel(), (yy + d[1]).ravel()])
    ok = np.isfinite(q).all(axis=1)
    if not ok.any():
        return np.full(out_shape, cval, dtype=source.dtype)
    lo, hi = q[ok].min(axis=0), q[ok].max(axis=0)
    wx0, wy0 = max(int(np.floor(lo[0])) - _MARGIN, 0), max(int(np.floor(lo[1])) - _MARGIN, 0)
    wx1, wy1 = min(int(np.ceil(hi[0])) + _MARGIN + 1, shape[1]), min(int(np.ceil(hi[1])) + _MARGIN + 1, shape[0])
    if wx1 <= wx0 or wy1 <= wy0:
        return np.full(out_shape, cval, dtype=source.dtype)
    src = np.asarray(source[wy0:wy1, wx0:wx1])
    values = _gather(src.reshape(*src.shape[:2], -1), q[:, 0] - wx0, q[:, 1] - wy0, order, cval)
    if np.issubdtype(src.dtype, np.integer):
        info = np.iinfo(src.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(src.dtype).reshape(out_shape)


def _gather(src: np.ndarray, x: np.ndarray, y: np.ndarray, order: int, cval: float) -> np.ndarray:
    """Values of ``src`` (h, w, c) at points ``(x, y)``: nearest or bilinear, ``cval`` outside.

    The semantics of ``scipy.ndimage.map_coordinates(..., mode="grid-constant")``: a bilinear point
    within a pixel of the border blends with ``cval``. All channels at once, in float32.
    """
    h, w = src.shape[:2]

    def pick(iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        inside = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
        vals: np.ndarray = src[np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)].astype(np.float32)
        vals[~inside] = cval
        return vals

    if order == 0:
        return pick(np.floor(y + 0.5).astype(np.intp), np.floor(x + 0.5).astype(np.intp))
    fx0, fy0 = np.floor(x), np.floor(y)
    ix, iy = fx0.astype(np.intp), fy0.astype(np.intp)
    ax, ay = (x - fx0).astype(np.float32)[:, None], (y - fy0).astype(np.float32)[:, None]
    top = pick(iy, ix) * (1 - ax) + pick(iy, ix + 1) * ax
    bottom = pick(iy + 1, ix) * (1 - ax) + pick(iy + 1, ix + 1) * ax
    out: np.ndarray = top * (1 - ay) + bottom * ay
    return out


def _warp_block(
    source: LevelSource | np.ndarray,
    matrix: np.ndarray,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    order: int,
    cval: float,
    field: DisplacementField | None = None,
    inverse_field: bool = False,
) -> np.ndarray:
    if field is not None:
        return _warp_block_field(source, matrix, field, y0, y1, x0, x1, order, cval, inverse_field)
    shape = source.shape
    out_shape = (y1 - y0, x1 - x0, *shape[2:])
    window = _source_window(matrix, y0, y1, x0, x1, shape)
    if window is None:
        return np.full(out_shape, cval, dtype=source.dtype)
    wy0, wy1, wx0, wx1 = window
    src = np.asarray(source[wy0:wy1, wx0:wx1])
    to_window = np.array([[1.0, 0.0, -wx0], [0.0, 1.0, -wy0], [0.0, 0.0, 1.0]]) @ matrix
    return resample_window(src, to_window, out_shape[:2], origin=(y0, x0), order=order, cval=cval, planar=True)


def _normalise_chunks(chunks: int | Sequence[int] | None, shape: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
    if chunks is None:
        cy = cx = WARP_CHUNK
    elif isinstance(chunks, (int, np.integer)):
        cy = cx = int(chunks)
    else:
        cy, cx = (int(c) for c in tuple(chunks)[:2])
    if cy < 1 or cx < 1:
        raise ConfigError(f"chunks must be positive, got {chunks!r}")
    normalised: tuple[tuple[int, ...], ...] = da.core.normalize_chunks((cy, cx), shape)
    return normalised


def _coerce_matrix(matrix: Any) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3):
        raise ConfigError(f"matrix must be 3x3 (or 2x3 affine), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ConfigError("matrix has non-finite entries")
    return m


def warp_array(
    source: LevelSource | np.ndarray,
    matrix: Any,
    out_shape: tuple[int, int],
    *,
    order: int = 1,
    cval: float = 0.0,
    chunks: int | Sequence[int] | None = None,
    field: DisplacementField | None = None,
    inverse_field: bool = False,
) -> da.Array:
    """Lazy warp of any sliceable ``(h, w[, c])`` source onto an ``out_shape`` grid.

    The low-level form of :func:`warp`: ``source`` is a path-based level reader (or a numpy array
    for small data) and ``matrix`` maps output pixels to source pixels (after ``field``'s
    displacement, when given: ``M (p + d(p))``; with ``inverse_field`` the field's inverse
    displacement comes after the matrix, ``r + d_inv(r)`` with ``r = M p``: the inverse map of a
    deformable transform when ``matrix`` is the inverse of its matrix).
    """
    if order not in (0, 1):
        raise ConfigError(f"order must be 0 (nearest) or 1 (linear), got {order!r}")
    m = _coerce_matrix(matrix)
    chunk_y, chunk_x = _normalise_chunks(chunks, (int(out_shape[0]), int(out_shape[1])))
    extra = tuple(source.shape[2:])
    token = da.core.tokenize(source, m, tuple(out_shape), order, cval, chunk_y, chunk_x,
                             None if field is None else (field.forward, field.inverse, field.origin, field.spacing),
                             inverse_field)
    name = f"warp-{token}"
    dsk: dict[Any, Any] = {}
    ys = np.r_[0, np.cumsum(chunk_y)]
    xs = np.r_[0, np.cumsum(chunk_x)]
    tail = (0,) * len(extra)
    for i in range(len(chunk_y)):
        for j in range(len(chunk_x)):
            dsk[(name, i, j, *tail)] = (
                _warp_block, source, m, int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1]), order, float(cval),
                field, inverse_field,
            )  # fmt: skip
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
    out_chunks = (chunk_y, chunk_x, *((e,) for e in extra))
    return da.Array(graph, name, out_chunks, dtype=source.dtype, meta=np.empty((0,) * (2 + len(extra)), source.dtype))


def warp(
    moving: MultiscaleImage,
    matrix: Any,
    *,
    like: MultiscaleImage,
    order: int = 1,
    chunks: int | Sequence[int] | None = None,
    cval: float = 0.0,
    field: DisplacementField | None = None,
) -> da.Array:
    """The registered moving image on the fixed image's full-resolution grid, lazily.

    Parameters
    ----------
    moving : MultiscaleImage
        The image to resample; read at full resolution (level 0), window by window, by path.
    matrix : array_like, shape (3, 3)
        Fixed → moving map in full-resolution pixels (affine or homography), the convention of
        :mod:`drmime_batch.core._convention`.
    like : MultiscaleImage
        The fixed image: only its full-resolution shape is used.
    order : {0, 1}
        0 = nearest (labels, masks), 1 = bilinear (intensities).
    chunks : int or (cy, cx), optional
        Output chunk shape, default 1024 x 1024 (channels are never split).
    cval : float
        Value outside the moving image.
    field : DisplacementField, optional
        A deformable result's displacement (``registered(p) = moving(M (p + d(p)))``); each
        block computes its own coordinates, so memory stays bounded by the chunk.

    Returns
    -------
    dask.array.Array
        Shape ``like.shape[:2] + moving.shape[2:]``, dtype of ``moving``. Nothing is computed;
        each task reopens the moving file itself, so the graph runs on distributed workers.

    Examples
    --------
    >>> from importlib.resources import files
    >>> from drmime_batch.io import open_image
    >>> d = files("drmime_batch") / "examples/cima-lung-lesion3/images"
    >>> fixed = open_image(d / "29-041-Izd2-w35-He-les3.jpg")
    >>> moving = open_image(d / "29-041-Izd2-w35-CD31-3-les3.jpg")
    >>> out = warp(moving, np.eye(3), like=fixed, chunks=256)
    >>> out.shape, out.dtype, out.numblocks
    ((661, 892, 3), dtype('uint8'), (3, 4, 1))
    """
    source = moving.source(0)
    return warp_array(source, matrix, (like.shape[0], like.shape[1]), order=order, cval=cval, chunks=chunks,
                      field=field)
