"""Small pictures of one registered pair for the HTML report: overlay, checkerboard, thumbnails.

The fixed image and the registered (warped moving) image are read at a pyramid level whose longer
side is at most :data:`REPORT_SIDE` pixels, on the fixed image's grid. The registered image comes
from the output store when the batch wrote it (``OUT/<pair_id>/registered``, the image users get);
otherwise (``--no-warp`` batches, or a store that is gone) the moving image's small level is
warped here with the pair's matrix (and displacement field), as the QC picture is.

Each stain is contrast-normalised on its own (:func:`stain_density`: the light a grey version
absorbs, stretched between percentiles), so a faint immunostain shows as clearly as a dark H&E.
Everything here is numpy and Pillow on thumbnails; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from drmime_batch.core._convention import level_to_full_matrix
from drmime_batch.core._field import DisplacementField
from drmime_batch.io._overlay import checkerboard, inside_moving, overlay, stain_density

__all__ = ["REPORT_SIDE", "PairViews", "checkerboard", "load_pair_views", "overlay", "stain_density"]

#: longer side of the report's pictures of a pair (pixels)
REPORT_SIDE = 512


@dataclass(frozen=True)
class PairViews:
    """The fixed and registered thumbnails of a pair, on one grid.

    Attributes
    ----------
    fixed, registered : ndarray, shape (h, w, 3), uint8
        RGB thumbnails; ``registered`` is black (0, 0, 0) where the moving image does not reach.
    to_thumbnail : ndarray, shape (3, 3)
        Full-resolution fixed pixel → thumbnail pixel.
    fixed_shape : (H, W)
        Full-resolution shape of the fixed image.
    source : str
        Where ``registered`` came from (said under the pictures).
    """

    fixed: np.ndarray
    registered: np.ndarray
    to_thumbnail: np.ndarray
    fixed_shape: tuple[int, int]
    source: str


def _rgb(arr: np.ndarray) -> np.ndarray:
    from drmime_batch.io._qc import _display

    out: np.ndarray = _display(np.asarray(arr))
    return out


def _resize(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if rgb.shape[:2] == shape:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _stored_registered(out: str, pair_id: str) -> Any:
    """The registered image the batch wrote for the pair (a MultiscaleImage), or None."""
    from drmime_batch.io import open_image, pair_is_complete
    from drmime_batch.io._fs import join, location
    from drmime_batch.io._writers import read_marker

    try:
        if not pair_is_complete(out, pair_id, warp=True):
            return None
        path = read_marker(out, pair_id).get("registered", {}).get("path")
    except (OSError, ValueError, KeyError):
        return None
    if not path:
        return None
    return open_image(join(join(location(out), pair_id), str(path)))  # type: ignore[arg-type]


def load_pair_views(
    fixed: str, moving: str, matrix: Any, *, out: str | None = None, pair_id: str | None = None,
    field: DisplacementField | None = None, side: int = REPORT_SIDE,
) -> PairViews:
    """Read the fixed and registered thumbnails of a pair (longer side at most ``side``).

    Parameters
    ----------
    fixed, moving : str
        The pair's image files (paths or URLs).
    matrix : array_like, shape (3, 3)
        Fixed → moving full-resolution pixel matrix.
    out, pair_id : str, optional
        The output store and the pair's id: its registered image is used when complete.
    field : DisplacementField, optional
        A deformable result's displacement, used when the moving image is warped here.
    side : int
        Longest side of the thumbnails.

    Returns
    -------
    PairViews

    Raises
    ------
    DrmimeError, OSError
        An image that cannot be opened or read.
    """
    from drmime_batch.io import open_image

    fixed_img = open_image(fixed)
    level = fixed_img.level_for(side)
    f = _rgb(fixed_img.read_level(level, scheduler="synchronous"))
    full = tuple(int(v) for v in fixed_img.levels[0].shape[:2])
    to_thumb = np.linalg.inv(level_to_full_matrix(fixed_img.downsamples[level]))
    stored = _stored_registered(out, pair_id) if out and pair_id else None
    if stored is not None:
        reg = _rgb(stored.read_level(stored.level_for(side), scheduler="synchronous"))
        reg = _resize(reg, f.shape[:2])
        source = "the registered image in the output store"
    else:
        from drmime_batch.io._qc import qc_panels

        panels = qc_panels(fixed_img, open_image(moving), matrix, scheduler="synchronous", field=field)
        reg = _resize(panels["registered"], f.shape[:2])
        source = "the moving image warped for this report (no registered image in the store)"
    reg = reg.copy()
    reg[~inside_moving(f.shape[:2], to_thumb, matrix, field, open_image(moving).levels[0].shape[:2])] = 255
    return PairViews(fixed=f, registered=reg, to_thumbnail=to_thumb, fixed_shape=(full[0], full[1]),
                     source=source)
