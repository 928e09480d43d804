"""The stored transform of one entry of a batch output store, as an object that maps both ways.

:class:`StoredTransform` is the interface: points (:meth:`~StoredTransform.map_points`),
GeoJSON (:meth:`~StoredTransform.warp_geojson`) and slides (:meth:`~StoredTransform.warp_slide`)
in either direction, plus what the store recorded of the two images (paths, pixel sizes,
shapes). Nothing in it assumes a matrix: a subclass supplies the two point maps and the lazy
resampling of a slide. :class:`MatrixTransform` is today's only kind (affine or homography, exact
both ways through the matrix inverse); a displacement field would be a second subclass, and
``matrix`` is ``None`` for such a transform.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from drmime_batch.core._convention import apply_matrix
from drmime_batch.core._field import DisplacementField, map_points
from drmime_batch.errors import ConfigError, DrmimeError, IncompleteOutputError, OutputStoreError

if TYPE_CHECKING:
    import dask.array as da

    from drmime_batch.io._fs import Location
    from drmime_batch.io._sources import LevelSource

__all__ = ["MatrixTransform", "StoredTransform", "open_transform"]

logger = logging.getLogger(__name__)

Role = Literal["fixed", "moving"]
#: how many entry names an "entry not found" message lists
_HINT_NAMES = 5


class StoredTransform:
    """One registration read from a batch output store (use :func:`open_transform`).

    Direction: ``inverse=False`` (the default everywhere) maps from the **moving** section into
    the **fixed** frame, what the registered image shows; ``inverse=True`` maps from the fixed
    frame to the moving section. Coordinates are ``(x, y)`` = (column, row) in full-resolution
    pixels, origin at the centre of the top-left pixel (:mod:`drmime_batch.core._convention`).

    Attributes
    ----------
    store : Path or str
        The output store (a path, or an fsspec URL string).
    entry : str
        The entry read: a pair id (``SERIES/SLIDE`` for entries nested one group deeper).
    attrs : dict
        The transform's attributes as written by :func:`drmime_batch.io.write_transform`.
    """

    def __init__(self, store: Location, entry: str, attrs: dict[str, Any]) -> None:
        self.store = store
        self.entry = entry
        self.attrs = dict(attrs)
        self._images: dict[str, Any] = {}

    # ------------------------------------------------------------------ what the store recorded

    @property
    def kind(self) -> str:
        """The transform kind recorded (``"affine"``, ``"homography"``, ...)."""
        return str(self.attrs.get("transform") or "unknown")

    @property
    def matrix(self) -> np.ndarray | None:
        """The 3x3 fixed → moving matrix in full-resolution pixels; ``None`` when not one matrix."""
        return None

    def image_path(self, role: Role) -> str | None:
        """The file of the ``"fixed"`` or ``"moving"`` image as the store recorded it."""
        value = self.attrs.get(_role(role))
        return str(value) if value else None

    def pixel_size(self, role: Role) -> tuple[float, float] | None:
        """Micrometres per full-resolution pixel ``(px, py)`` of one image, ``None`` when unknown.

        Taken from the transform's attributes, else from the recorded image file (its metadata).
        """
        recorded = self.attrs.get(f"{_role(role)}_pixel_size_um")
        if recorded is not None:
            px, py = (float(v) for v in recorded)
            return px, py
        image = self._image(role)
        return None if image is None else image.pixel_size

    def recorded_shape(self, role: Role) -> tuple[int, ...] | None:
        """Full-resolution shape ``(H, W[, C])`` of one image as recorded with the transform.

        The attribute ``fixed_shape`` / ``moving_shape`` (:func:`drmime_batch.io.write_transform`):
        the size of the image the matrix was computed on. ``None`` when not recorded (stores
        written before it was, or a writer that did not know it) or unreadable.

        Examples
        --------
        >>> t = StoredTransform("out.zarr", "p1", {"fixed_shape": [600, 800, 3], "moving_shape": None})
        >>> t.recorded_shape("fixed"), t.recorded_shape("moving")
        ((600, 800, 3), None)
        """
        recorded = self.attrs.get(f"{_role(role)}_shape")
        if not isinstance(recorded, (list, tuple)) or len(recorded) not in (2, 3):
            return None
        try:
            shape = tuple(int(v) for v in recorded)
        except (TypeError, ValueError):
            return None
        return shape if min(shape) > 0 else None

    def image_shape(self, role: Role) -> tuple[int, ...] | None:
        """Full-resolution shape ``(H, W[, C])`` of one image, ``None`` when unknown.

        Taken from the attributes (``fixed_shape`` / ``moving_shape``, :meth:`recorded_shape`)
        when recorded, else from the recorded image file (metadata only).
        """
        recorded = self.recorded_shape(role)
        if recorded is not None:
            return recorded
        image = self._image(role)
        return None if image is None else tuple(image.shape)

    def _image(self, role: Role) -> Any:
        """The recorded image opened lazily (metadata only), or ``None`` when it cannot be."""
        if role not in self._images:
            path = self.image_path(role)
            image = None
            if path is not None:
                from drmime_batch.io import open_image

                try:
                    image = open_image(path)
                except (DrmimeError, OSError) as exc:  # moved or deleted since: the caller decides
                    logger.info("the %s image %s of %s cannot be opened: %s", role, path, self.entry, exc)
            self._images[role] = image
        return self._images[role]

    # ------------------------------------------------------------------ mapping

    def map_points(self, xy: Any, inverse: bool = False) -> np.ndarray:
        """Map points from the moving section into the fixed frame (``inverse=True``: back).

        Parameters
        ----------
        xy : array_like, shape (N, 2) or (2,)
            ``(x, y)`` points in full-resolution pixels of the source frame.
        inverse : bool
            ``False``: moving → fixed (where a moving-section point appears in the registered
            image); ``True``: fixed → moving (for a matrix, ``matrix @ p``).

        Returns
        -------
        ndarray, float64, the shape of ``xy``
            Points outside either image are mapped all the same.

        Examples
        --------
        >>> import tempfile
        >>> from drmime_batch.io import write_transform
        >>> out = Path(tempfile.mkdtemp()) / "out.zarr"
        >>> write_transform(out, "p1", [[1, 0, 5], [0, 1, -2], [0, 0, 1]], attrs={})
        >>> t = open_transform(out, "p1")
        >>> t.map_points([[10.0, 10.0]], inverse=True), t.map_points([[15.0, 8.0]])
        (array([[15.,  8.]]), array([[10., 10.]]))
        """
        pts = np.asarray(xy, dtype=np.float64)
        single = pts.shape == (2,)
        if single:
            pts = pts[None, :]
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ConfigError(f"points must have shape (N, 2) or (2,), got {pts.shape}")
        out = self._to_moving(pts) if inverse else self._to_fixed(pts)
        return out[0] if single else out

    def warp_geojson(self, obj: Any, inverse: bool = False) -> Any:
        """A copy of a GeoJSON object with every position mapped; everything else unchanged.

        Accepts what QuPath exports: a FeatureCollection, a list of Features, one Feature or a
        bare geometry (Point, MultiPoint, LineString, MultiLineString, Polygon with holes,
        MultiPolygon, GeometryCollection; a Feature's ``nucleusGeometry`` too). Ids and
        properties are kept as they are, a ``bbox`` is recomputed, and a ring keeps its
        orientation (a mirroring transform would otherwise reverse it).

        Examples
        --------
        >>> import tempfile
        >>> from drmime_batch.io import write_transform
        >>> out = Path(tempfile.mkdtemp()) / "out.zarr"
        >>> write_transform(out, "p1", [[1, 0, 5], [0, 1, -2], [0, 0, 1]], attrs={})
        >>> feature = {"type": "Feature", "id": "a", "properties": {"name": "tumour"},
        ...            "geometry": {"type": "Point", "coordinates": [15.0, 8.0]}}
        >>> open_transform(out, "p1").warp_geojson(feature)["geometry"]["coordinates"]
        [10.0, 10.0]
        """
        from drmime_batch.transforms._geojson import map_geojson

        return map_geojson(obj, lambda pts: self.map_points(pts, inverse=inverse))

    def warp_slide(
        self,
        path: str | Path,
        out: str | Path,
        *,
        inverse: bool = False,
        order: Literal["linear", "nearest"] | int = "linear",
        like: str | Path | Sequence[int] | None = None,
        chunks: int | None = None,
        scheduler: str | None = None,
        strict: bool = False,
    ) -> Location:
        """Warp a whole slide at full resolution into the other frame and write it, atomically.

        See :func:`drmime_batch.transforms._slide.warp_slide` for the parameters.

        Examples
        --------
        >>> import tempfile
        >>> from PIL import Image
        >>> from drmime_batch.io import open_image, write_transform
        >>> d = Path(tempfile.mkdtemp())
        >>> Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(d / "mask.png")
        >>> write_transform(d / "out.zarr", "p1", np.eye(3), attrs={"fixed": str(d / "mask.png")})
        >>> t = open_transform(d / "out.zarr", "p1")
        >>> written = t.warp_slide(d / "mask.png", d / "mask-on-fixed.ome.zarr", order="nearest")
        >>> open_image(written).shape
        (8, 8)
        """
        from drmime_batch.transforms._slide import warp_slide

        return warp_slide(self, path, out, inverse=inverse, order=order, like=like, chunks=chunks, scheduler=scheduler,
                          strict=strict)

    # ------------------------------------------------------------------ what a kind supplies

    def _to_moving(self, pts: np.ndarray) -> np.ndarray:
        """Fixed-frame ``(N, 2)`` points → moving-section points."""
        raise NotImplementedError

    def _to_fixed(self, pts: np.ndarray) -> np.ndarray:
        """Moving-section ``(N, 2)`` points → fixed-frame points."""
        raise NotImplementedError

    def _resampled(
        self, source: LevelSource, out_shape: tuple[int, int], *, into_fixed: bool, order: int, chunks: int
    ) -> da.Array:
        """The lazy full-resolution warp of ``source`` onto an ``out_shape`` grid of the other frame."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(store={str(self.store)!r}, entry={self.entry!r}, kind={self.kind!r})"


class MatrixTransform(StoredTransform):
    """A stored 3x3 matrix (affine or homography): exact in both directions.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3)
        Fixed → moving in full-resolution pixels (the stored array; a read-only copy).
    """

    def __init__(self, store: Location, entry: str, matrix: np.ndarray, attrs: dict[str, Any]) -> None:
        super().__init__(store, entry, attrs)
        m = np.array(matrix, dtype=np.float64)
        m.setflags(write=False)
        self._matrix = m
        self._inverse: np.ndarray | None = None

    @property
    def matrix(self) -> np.ndarray:
        """The 3x3 fixed → moving matrix in full-resolution pixels."""
        return self._matrix

    @property
    def inverse_matrix(self) -> np.ndarray:
        """The 3x3 moving → fixed matrix (the inverse of :attr:`matrix`)."""
        if self._inverse is None:
            try:
                inv = np.linalg.inv(self._matrix)
            except np.linalg.LinAlgError:
                inv = np.full((3, 3), np.nan)
            if not np.isfinite(inv).all():
                raise OutputStoreError(
                    f"the transform of {self.entry!r} in {self.store} is singular: it has no inverse"
                )
            inv.setflags(write=False)
            self._inverse = inv
        return self._inverse

    def _to_moving(self, pts: np.ndarray) -> np.ndarray:
        return apply_matrix(self._matrix, pts)

    def _to_fixed(self, pts: np.ndarray) -> np.ndarray:
        return apply_matrix(self.inverse_matrix, pts)

    def _resampled(
        self, source: LevelSource, out_shape: tuple[int, int], *, into_fixed: bool, order: int, chunks: int
    ) -> da.Array:
        from drmime_batch.io import warp_array

        # backward warp: each output pixel samples the source where the map *to the source* sends it
        to_source = self._matrix if into_fixed else self.inverse_matrix
        return warp_array(source, to_source, out_shape, order=order, chunks=chunks)


class FieldTransform(MatrixTransform):
    """A deformable transform: ``M (p + d(p))`` fixed → moving, its exact inverse ``r + d_inv(r)``, ``r = M^-1 q``.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3)
        The linear part (applied after the displacement).
    field : DisplacementField
        The displacement on its grid of fixed full-resolution pixels, forward and inverse.
    """

    def __init__(self, store: Location, entry: str, matrix: np.ndarray, field: DisplacementField,
                 attrs: dict[str, Any]) -> None:
        super().__init__(store, entry, matrix, attrs)
        self.field = field

    @property
    def kind(self) -> str:
        """``"deformable"``."""
        return "deformable"

    def _to_moving(self, pts: np.ndarray) -> np.ndarray:
        return map_points(self._matrix, self.field, pts)

    def _to_fixed(self, pts: np.ndarray) -> np.ndarray:
        self.inverse_matrix  # noqa: B018 - refuses a singular matrix with its one-line error
        return map_points(self._matrix, self.field, pts, inverse=True)

    def _resampled(
        self, source: LevelSource, out_shape: tuple[int, int], *, into_fixed: bool, order: int, chunks: int
    ) -> da.Array:
        from drmime_batch.io import warp_array

        if into_fixed:  # fixed pixel p samples the moving source at M (p + d(p))
            return warp_array(source, self._matrix, out_shape, order=order, chunks=chunks, field=self.field)
        # moving pixel q samples the fixed source at r + d_inv(r), r = M^-1 q: the same warp with
        # the roles of matrix and field swapped (a field after the matrix)
        return warp_array(source, self.inverse_matrix, out_shape, order=order, chunks=chunks,
                          field=self.field, inverse_field=True)


def _role(role: str) -> Role:
    if role not in ("fixed", "moving"):
        raise ConfigError(f"role must be 'fixed' or 'moving', got {role!r}")
    return role  # type: ignore[return-value]


def _entries_hint(root: Location) -> str:
    """`` (entries: a, b, ...)`` naming a few pair groups of the store, or ``""``.

    One listing, no request per entry: a store may hold thousands of pairs, on an object store.
    """
    from drmime_batch.io._fs import list_names

    names = sorted(n for n in list_names(root) if not n.startswith(".") and n != "zarr.json")
    if not names:
        return " (it holds no entry at all)"
    more = ", ..." if len(names) > _HINT_NAMES else ""
    return f" (entries: {', '.join(names[:_HINT_NAMES])}{more})"


def _series_why(root: Location, store: str | Path, parts: list[str]) -> str | None:
    """Why a series entry (``SERIES/SLIDE``, or ``SERIES`` alone) has no transform; ``None`` if not a series."""
    from drmime_batch.series._record import why_no_entry

    return why_no_entry(root, str(store), parts)


def open_transform(store: str | Path, entry: str) -> StoredTransform:
    """Open the stored transform of one entry of a batch output store.

    Parameters
    ----------
    store : str or Path
        The batch output store (``OUT.zarr``), a path or an fsspec URL.
    entry : str
        A pair id; ``SERIES/SLIDE`` reads ``STORE/SERIES`` as the store of pair ``SLIDE``.

    Returns
    -------
    StoredTransform
        A :class:`MatrixTransform` for affine and homography transforms, a :class:`FieldTransform`
        for deformable ones.

    Raises
    ------
    IncompleteOutputError
        The store or the entry does not exist, or its transform was never completed. For a series
        entry the message says why: the slide was not placed when the series was composed (its
        links, their states and errors, and what to do), the series was never composed, or the
        series or the slide is unknown.
    OutputStoreError
        ``entry`` cannot name an entry, or ``store`` is not a zarr v3 output store.

    Examples
    --------
    >>> import tempfile
    >>> from drmime_batch.io import write_transform
    >>> out = Path(tempfile.mkdtemp()) / "out.zarr"
    >>> write_transform(out, "p1", np.diag([2.0, 2.0, 1.0]), attrs={})
    >>> t = open_transform(out, "p1")
    >>> t.kind, float(t.matrix[0, 0]), t.map_points([4.0, 6.0])
    ('affine', 2.0, array([2., 3.]))
    """
    from drmime_batch._pair_id import check_pair_id
    from drmime_batch.io._fs import exists, join, location
    from drmime_batch.io._writers import read_field, read_transform

    root = location(store)
    if not isinstance(entry, str) or not entry.strip("/"):
        raise OutputStoreError(f"entry {entry!r} of {store} is empty: give a pair id")
    parts = entry.strip("/").split("/")
    for part in parts:
        try:
            check_pair_id(part)  # the rule the writer and the queue apply
        except OutputStoreError as exc:
            raise OutputStoreError(f"entry {entry!r} of {store}: {exc}") from None
    if not exists(root):
        raise IncompleteOutputError(f"output store {store} does not exist")
    if not exists(join(root, "zarr.json")):
        raise OutputStoreError(f"{store} is not a drmime_batch output store (no zarr v3 group there)")
    base = join(root, *parts[:-1])
    if not exists(join(base, parts[-1], "zarr.json")):
        raise IncompleteOutputError(
            _series_why(root, store, parts)
            or f"output store {store} has no entry {entry!r}{_entries_hint(base if exists(base) else root)}"
        )
    try:
        matrix, attrs = read_transform(base, parts[-1])
        field = read_field(base, parts[-1])
    except IncompleteOutputError:
        raise IncompleteOutputError(
            (_series_why(root, store, parts) if len(parts) == 1 else None)
            or f"the transform of {entry!r} in {store} is incomplete (never finished or interrupted): run that pair again"
        ) from None
    if field is not None:
        return FieldTransform(root, entry, matrix, field, attrs)
    return MatrixTransform(root, entry, matrix, attrs)
