"""Using a batch's results: stored transforms applied to points, annotations and other slides.

:func:`open_transform` reads one entry of a batch output store (``OUT.zarr/<pair_id>/transform``,
written by :func:`drmime_batch.io.write_transform`) as a :class:`StoredTransform`, which maps
points both ways (:meth:`~StoredTransform.map_points`), warps GeoJSON annotations
(:meth:`~StoredTransform.warp_geojson`) and whole slides (:meth:`~StoredTransform.warp_slide`),
and :func:`export_transform` writes it for other tools (ITK, NGFF 0.6, plain JSON).

Direction (the same everywhere here, and in ``drmime-batch apply``): by default from the
**moving** section into the **fixed** frame, which is what the registered image shows;
``inverse=True`` goes from the fixed frame to the moving section. The stored matrix maps fixed
to moving, so the default direction is its inverse.

Why a package of its own rather than more of :mod:`drmime_batch.io`: this is the *consumer* side
of the outputs, and most of it is not image IO at all. Points and annotations are numpy and JSON
(only the transform is read from the store); slides reuse the chunked warp and the OME writers of
``io`` unchanged. The transform object hides whether it is one matrix, so a displacement-field
transform can be added beside :class:`MatrixTransform` without touching the readers, the writers
or the command line.
"""

from __future__ import annotations

from drmime_batch.transforms._export import EXPORT_FORMATS, export_transform
from drmime_batch.transforms._geojson import map_geojson, read_geojson, write_geojson
from drmime_batch.transforms._points import PointsTable, read_points_csv, transform_points_csv, write_points_csv
from drmime_batch.transforms._slide import output_format, warp_slide
from drmime_batch.transforms._stored import MatrixTransform, StoredTransform, open_transform

__all__ = [
    "EXPORT_FORMATS",
    "MatrixTransform",
    "PointsTable",
    "StoredTransform",
    "export_transform",
    "map_geojson",
    "open_transform",
    "output_format",
    "read_geojson",
    "read_points_csv",
    "transform_points_csv",
    "warp_slide",
    "write_geojson",
    "write_points_csv",
]
