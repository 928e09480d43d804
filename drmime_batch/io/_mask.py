"""``read_mask``: a tissue-mask file read at the resolution of the image level being registered."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from drmime_batch.io._multiscale import MultiscaleImage
from drmime_batch.io._open import open_image

__all__ = ["mask_level_for", "read_mask"]


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


def read_mask(path: str | Path, shape: Sequence[int]) -> np.ndarray:
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
    return img.read_level(mask_level_for(img, shape))
