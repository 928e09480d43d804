"""Whole-slide IO: lazy multiscale readers, chunked warping, OME-Zarr output with transforms.

Readers (:func:`open_image`) return a :class:`MultiscaleImage` whose levels are dask arrays that
read nothing until computed; :func:`warp` builds the registered full-resolution image as a lazy
dask array on the fixed image's grid; the writers put one pair's outputs under
``OUT.zarr/<pair_id>/`` atomically (see :mod:`drmime_batch.io._writers` for the layout and the
completion marker). Inputs and ``OUT`` may also be fsspec URLs (``s3://``, ``gs://``; see
:mod:`drmime_batch.io._fs`): read by byte range / chunk, written in place behind the marker.
"""

from __future__ import annotations

from drmime_batch.io._mask import read_mask, read_tissue
from drmime_batch.io._multiscale import MultiscaleImage, downsample2
from drmime_batch.io._open import open_image
from drmime_batch.io._qc import write_qc
from drmime_batch.io._warp import warp, warp_array
from drmime_batch.io._writers import (
    pair_is_complete,
    read_field,
    read_transform,
    write_registered,
    write_transform,
)

__all__ = [
    "MultiscaleImage",
    "downsample2",
    "open_image",
    "pair_is_complete",
    "read_field",
    "read_mask",
    "read_tissue",
    "read_transform",
    "warp",
    "warp_array",
    "write_qc",
    "write_registered",
    "write_transform",
]
