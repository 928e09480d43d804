"""QC picture of a registered pair: fixed, moving, registered and a two-colour overlay."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from drmime_batch.core._convention import level_to_full_matrix, matrix_to_level
from drmime_batch.core._field import DisplacementField, map_points
from drmime_batch.io._atomic import staging
from drmime_batch.io._fs import is_url, join, write_bytes
from drmime_batch.io._multiscale import MultiscaleImage
from drmime_batch.io._overlay import inside_moving, overlay
from drmime_batch.io._warp import resample_window
from drmime_batch.io._writers import _pair_dir

__all__ = ["qc_panels", "write_qc"]

#: longer side of each thumbnail (pixels)
THUMB_SIDE = 512


def _display(arr: np.ndarray) -> np.ndarray:
    """uint8 RGB for display: grayscale replicated, other dtypes stretched to 0.5-99.5 %."""
    if arr.ndim == 3 and arr.shape[2] >= 3:
        arr = arr[..., :3]
    elif arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        f = arr.astype(np.float64)
        lo, hi = np.percentile(f, [0.5, 99.5]) if f.size else (0.0, 1.0)
        arr = np.clip((f - lo) / max(hi - lo, 1e-12) * 255.0, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr


def qc_panels(
    fixed: MultiscaleImage, moving: MultiscaleImage, matrix: Any, *, scheduler: str | None = None,
    field: DisplacementField | None = None,
) -> dict[str, np.ndarray]:
    """The four uint8 RGB thumbnails of a pair, on the fixed thumbnail's grid for the last two.

    Reads one small level of each image (with dask's ``scheduler``, None: the active one); the
    registered thumbnail is the moving thumbnail warped with ``matrix`` expressed between the two
    levels.
    """
    fl = fixed.level_for(THUMB_SIDE)
    ml = moving.level_for(THUMB_SIDE)
    f = _display(fixed.read_level(fl, scheduler=scheduler))
    mv = moving.read_level(ml, scheduler=scheduler)
    m_level = matrix_to_level(
        np.asarray(matrix, dtype=np.float64),
        fixed_downsample=fixed.downsamples[fl],
        moving_downsample=moving.downsamples[ml],
    )
    if field is None:
        reg = _display(resample_window(mv, m_level, f.shape[:2], order=1))
    else:  # through the full-resolution map: thumbnail pixel -> full fixed -> full moving -> thumbnail
        f_to_full = level_to_full_matrix(fixed.downsamples[fl])
        full_to_m = np.linalg.inv(level_to_full_matrix(moving.downsamples[ml]))
        yy, xx = np.mgrid[: f.shape[0], : f.shape[1]]
        p_full = map_points(f_to_full, None, np.c_[xx.ravel(), yy.ravel()].astype(np.float64))
        q = map_points(full_to_m @ np.asarray(matrix, dtype=np.float64), field, p_full)
        from scipy import ndimage

        mv3 = mv.reshape(*mv.shape[:2], -1).astype(np.float64)
        warped = np.stack([ndimage.map_coordinates(mv3[..., c], [q[:, 1], q[:, 0]], order=1, mode="grid-constant")
                           for c in range(mv3.shape[2])], -1).reshape(*f.shape[:2], -1)
        reg = _display(warped.reshape(*f.shape[:2], *mv.shape[2:]).astype(mv.dtype))
    mv = _display(mv)
    # each stain normalised on its own (both visible); outside the moving image (its black fill and
    # the interpolated edge into it) is glass, not the densest stain
    inside = inside_moving(f.shape[:2], np.linalg.inv(level_to_full_matrix(fixed.downsamples[fl])), matrix, field,
                           moving.levels[0].shape[:2])
    glass = np.where(inside[..., None], reg, np.uint8(255))
    return {"fixed": f, "moving": mv, "registered": reg, "overlay (fixed magenta, registered green)": overlay(f, glass)}


def write_qc(
    out: str | Path, pair_id: str, fixed: MultiscaleImage, moving: MultiscaleImage, matrix: Any,
    *, scheduler: str | None = None, field: DisplacementField | None = None,
) -> Path | str:
    """Write ``OUT/<pair_id>/qc.png``, a 2x2 grid of labelled thumbnails, atomically.

    ``scheduler`` is passed to dask when the thumbnails are read (None: the active one).
    Returns the path written (a URL string when ``out`` is an fsspec URL: one PUT of the whole
    picture there).
    """
    from PIL import Image, ImageDraw

    panels = qc_panels(fixed, moving, matrix, scheduler=scheduler, field=field)
    pad, label_h = 6, 16
    cell_h = max(p.shape[0] for p in panels.values())
    cell_w = max(p.shape[1] for p in panels.values())
    canvas = Image.new("RGB", (2 * cell_w + 3 * pad, 2 * (cell_h + label_h) + 3 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (label, img) in enumerate(panels.items()):
        x = pad + (k % 2) * (cell_w + pad)
        y = pad + (k // 2) * (cell_h + label_h + pad)
        draw.text((x, y), label, fill="black")
        canvas.paste(Image.fromarray(img), (x, y + label_h))
    final = join(_pair_dir(out, pair_id), "qc.png")
    if is_url(final):
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG")
        write_bytes(final, buffer.getvalue())
        return str(final)
    final = Path(final)
    with staging(final) as tmp:
        canvas.save(tmp, format="PNG")
        os.replace(tmp, final)
    return final
