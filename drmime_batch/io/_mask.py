"""``read_mask``: a tissue-mask file read at the resolution of the image level being registered;
``read_tissue``: the tissue of a slide read from the level its box needs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from drmime_batch.io._multiscale import MultiscaleImage
from drmime_batch.io._open import open_image

__all__ = ["mask_level_for", "read_mask", "read_tissue"]


def mask_level_for(mask: MultiscaleImage, shape: Sequence[int]) -> int:
    """Index of the coarsest level of ``mask`` at least as large as ``shape`` (H, W) on both axes.

    When every level is smaller (a mask of lower resolution than the image level), level 0, the
    largest there is. Nothing is read.

    Examples
    --------
    >>> m = MultiscaleImage.from_array(np.zeros((800, 1200), np.uint8))  # 800, 400, 200, 100 rows
    >>> mask_level_for(m, (190, 290)), mask_level_for(m, (210, 290)), mask_level_for(m, (900, 1300))
    (2, 1, 0)
    """
    h, w = int(shape[0]), int(shape[1])
    for index in range(len(mask.levels) - 1, -1, -1):
        lh, lw = mask.levels[index].shape[:2]
        if lh >= h and lw >= w:
            return index
    return 0


def read_mask(path: str | Path, shape: Sequence[int], *, scheduler: str | None = None) -> np.ndarray:
    """Open a tissue-mask image and read the level closest to, and not smaller than, ``shape``.

    The mask is opened like an image (:func:`open_image`: TIFF family, OME-Zarr / zarr, PNG,
    JPEG, or an fsspec URL of one); non-zero pixels are tissue. The array is returned as stored
    (``(y, x)`` or ``(y, x, c)``): :func:`drmime_batch.register` checks its aspect ratio against
    the image and resizes it.

    Parameters
    ----------
    path : str or Path
        The mask file.
    shape : sequence of int
        ``(H, W[, C])`` of the image level being registered.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    ImageNotFoundError, UnsupportedFormatError, CorruptImageError, StorageAccessError
        As :func:`open_image` (and whatever the reader raises while decoding).

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> with tempfile.TemporaryDirectory() as d:
    ...     m = np.zeros((300, 400), np.uint8); m[50:250, 100:300] = 255
    ...     Image.fromarray(m).save(f"{d}/mask.png")
    ...     read_mask(f"{d}/mask.png", (150, 200)).shape
    (150, 200)
    """
    img = open_image(path)
    return img.read_level(mask_level_for(img, shape), scheduler=scheduler)


def read_tissue(
    image: MultiscaleImage, level: int, overview: np.ndarray, max_size: int, *, scheduler: str | None = None
) -> tuple[np.ndarray, int, tuple[int, int], list[int] | None]:
    """The tissue of ``image`` at the finest level where its box fits ``max_size``.

    ``overview`` is level ``level`` (already read). When its automatic tissue mask covers a small
    part of the slide, the box around the tissue (with a margin) is read from a finer level, so a
    small biopsy on a large slide is registered at the resolution it needs; only the chunks under
    the box are read. Returns the array, its level, the box's top-left ``(x, y)`` in that level's
    pixels and the box ``[y0, y1, x0, x1]`` (None, with the overview unchanged, when nothing is cut).
    ``scheduler`` is passed to dask's ``compute`` (None: the active one).
    """
    from drmime_batch.core._mask import tissue_box, tissue_mask

    # the mask needs a few hundred pixels to tell tissue from glass: a smaller overview is
    # complemented by a read of the level that fits 1024 px (cheap, and only for the mask)
    mask_level = min(level, image.level_for(max_size=1024))
    mask = tissue_mask(overview if mask_level == level else image.read_level(mask_level, scheduler=scheduler))
    if mask.mean() < 0.005:
        return overview, level, (0, 0), None
    box = tissue_box(mask)
    if box is None:
        return overview, level, (0, 0), None
    sx, sy = (float(v) for v in np.broadcast_to(image.downsamples[mask_level], 2))
    y0, y1, x0, x1 = box[0] * sy, box[1] * sy, box[2] * sx, box[3] * sx  # full-resolution pixels
    full_h, full_w = (int(v) for v in image.levels[0].shape[:2])
    finer = image.level_for(max_size=max(1, int(max_size * max(full_h, full_w) / max(y1 - y0, x1 - x0))))
    if finer >= level:
        return overview, level, (0, 0), None
    fx, fy = (float(v) for v in np.broadcast_to(image.downsamples[finer], 2))
    h, w = (int(v) for v in image.levels[finer].shape[:2])
    r0, r1 = max(0, int(np.floor(y0 / fy))), min(h, int(np.ceil(y1 / fy)))
    c0, c1 = max(0, int(np.floor(x0 / fx))), min(w, int(np.ceil(x1 / fx)))
    crop = np.asarray(image.levels[finer][r0:r1, c0:c1].compute(scheduler=scheduler))
    return crop, finer, (c0, r0), [r0, r1, c0, c1]
