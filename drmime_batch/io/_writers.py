"""Writers of one pair's outputs, atomic, with a completion marker.

Layout (a contract with the engine and the report)::

    OUT.zarr/                       zarr v3 group
      <pair_id>/                    zarr v3 group; attribute "drmime_batch" = the completion marker
        transform                   zarr array, 3x3 float64 fixed -> moving matrix (full-res pixels);
                                    attributes: the record (convention, transform kind, metrics,
                                    config, versions, NGFF coordinateTransformations) and, when the
                                    writer knew them, the images the matrix is in:
                                    fixed_shape / moving_shape   [H, W] or [H, W, C], full-resolution
                                                                 pixels (null: unknown)
                                    fixed_pixel_size_um / moving_pixel_size_um  [px, py] µm per
                                                                 full-resolution pixel (absent: unknown)
                                    matrix_um                    the matrix in µm (both sizes known)
        field                       zarr array (2, 2, gh, gw) float64, deformable results only:
                                    [forward | inverse, dx | dy] displacements in full-res pixels
                                    on a grid (attributes origin, spacing), written before transform
        registered/                 OME-Zarr 0.5 multiscale group   (format="ome-zarr")
        registered.ome.tif          pyramidal OME-TIFF               (format="ome-tiff")
        qc.png                      QC picture

Atomicity
    Every output is written under a hidden temporary sibling name (``.drmime-tmp-<name>-<id>``)
    and renamed into place only once complete; an interrupted write leaves at most a hidden
    leftover (swept by the next write of that pair), never a half-written ``transform`` or
    ``registered``.

Completion marker
    Each write gets a random ``write_id``, stored in the output's own attributes *and*, last of
    all, in the pair group's marker::

        {"layout": 1, "pair_id": ..., "transform": {"write_id": T},
         "registered": {"write_id": R, "transform_write_id": T, "format": ..., "path": ...}}

    :func:`pair_is_complete` trusts an output only when the marker names it and the ids on disk
    agree, so a crash between a rename and the marker update reads as *incomplete*. Transform and
    registered image are written at different times (``--no-warp`` never writes the second):
    ``pair_is_complete(..., warp=False)`` needs the transform only. ``write_transform`` first
    clears the marker and deletes the previous attempt's registered image and QC picture, and
    ``write_registered`` records which transform it was made for, so a retry never mixes old and
    new outputs.

Object stores
    ``OUT`` may be an fsspec URL (``s3://bucket/out.zarr``); zarr writes through its
    ``FsspecStore``. Object stores cannot rename, so there each output is written in place
    (after the marker entry that named the old one is cleared and the old objects deleted) and
    the marker alone tells a finished output from an interrupted one: an interrupted remote
    write can leave a partial ``transform`` or ``registered`` behind, which
    :func:`pair_is_complete` never reports complete and the next write of the pair deletes.
    The QC picture is one PUT (whole or absent); an OME-TIFF is written to a local temporary
    file, then uploaded in one piece.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, cast

import dask.array as da
import numpy as np

from drmime_batch._pair_id import check_pair_id
from drmime_batch.core._convention import matrix_to_physical
from drmime_batch.core._field import DisplacementField
from drmime_batch.errors import ConfigError, IncompleteOutputError, OutputStoreError
from drmime_batch.io._atomic import new_write_id, remove_path, replace_path, staging, sweep_staging
from drmime_batch.io._fs import Location, basename, exists, is_url, join, location, read_bytes, stamp
from drmime_batch.io._omezarr import SCRATCH_ZSTD_LEVEL, write_ome_tiff, write_ome_zarr

__all__ = ["pair_is_complete", "read_marker", "read_transform", "write_registered", "write_transform"]

logger = logging.getLogger(__name__)

MARKER_KEY = "drmime_batch"
LAYOUT_VERSION = 1
CONVENTION = (
    "3x3 matrix mapping a FIXED pixel (x=column, y=row, origin at the centre of the top-left pixel, "
    "full resolution) to the MOVING pixel, homogeneous with projective divide; "
    "registered(p) = moving(M p)"
)
_REGISTERED_PATHS = {"ome-zarr": "registered", "ome-tiff": "registered.ome.tif"}


# ------------------------------------------------------------------------------------ helpers


def _pair_dir(out: str | Path, pair_id: str) -> Location:
    """``OUT/<pair_id>``: a :class:`Path`, or a URL string when ``out`` is an fsspec URL."""
    check_pair_id(pair_id)  # raises OutputStoreError; the same rule 'submit' applies
    return join(location(out), pair_id)


def _ensure_groups(root: Location, pair_dir: Location) -> None:
    import zarr

    for path in (root, pair_dir):
        if exists(join(path, "zarr.json")):
            continue
        if exists(join(path, ".zgroup")) or exists(join(path, ".zarray")):
            raise OutputStoreError(f"{path} is a zarr v2 node; drmime_batch writes zarr v3 outputs (choose a new OUT)")
        try:
            zarr.open_group(store=str(path), mode="a", zarr_format=3)
        except zarr.errors.ContainsGroupError:
            # another worker created it between our check and zarr's: it exists, as wanted (the
            # first pairs of a batch finishing at once on two workers raced here)
            pass


def _json_safe(value: Any) -> Any:
    """Attributes as strict JSON: numpy to Python, non-finite floats to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def read_marker(out: str | Path, pair_id: str) -> dict[str, Any]:
    """The pair's completion marker (``{}`` when the pair group or marker is absent)."""
    meta = join(_pair_dir(out, pair_id), "zarr.json")
    try:
        doc = json.loads(read_bytes(meta))
    except (OSError, ValueError):
        return {}
    marker = doc.get("attributes", {}).get(MARKER_KEY, {})
    return marker if isinstance(marker, dict) else {}


def _write_marker(pair_dir: Location, marker: dict[str, Any]) -> None:
    import zarr

    group = zarr.open_group(store=str(pair_dir), mode="a", zarr_format=3)
    group.update_attributes({MARKER_KEY: _json_safe(marker)})


def _array_attrs(path: Location) -> dict[str, Any] | None:
    try:
        doc = json.loads(read_bytes(join(path, "zarr.json")))
    except (OSError, ValueError):
        return None
    attrs: dict[str, Any] = doc.get("attributes", {})
    return attrs


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("drmime_batch", "numpy", "dask", "zarr", "tifffile", "torch", "scipy"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            out[name] = str(mod.__version__)
    return out


def _coerce_matrix(matrix: Any) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3):
        raise ConfigError(f"matrix must be 3x3, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ConfigError(f"matrix has non-finite entries: {m.tolist()}")
    return m


def _coerce_shape(name: str, shape: Sequence[int] | None) -> list[int] | None:
    """A recorded image shape: ``[H, W]`` or ``[H, W, C]`` of positive ints (``None`` stays ``None``)."""
    if shape is None:
        return None
    try:
        values = list(shape)
        dims = [int(v) for v in values]
        whole = all(float(v) == d for v, d in zip(values, dims, strict=True))
    except (TypeError, ValueError):
        whole = False
    if not whole or len(dims) not in (2, 3) or min(dims) < 1:
        raise ConfigError(f"{name} must be (H, W) or (H, W, C) in whole pixels, got {shape!r}")
    return dims


def _is_affine(m: np.ndarray) -> bool:
    return bool(np.allclose(m[2], [0.0, 0.0, 1.0], atol=1e-12))


def ngff_affine(m: np.ndarray, *, input: str, output: str) -> dict[str, Any] | None:
    """The NGFF (RFC-5) affine form of an (x, y) matrix: rows/columns in array order (y, x).

    Examples
    --------
    >>> ngff_affine(np.array([[1.0, 0, 5], [0, 1, -2], [0, 0, 1]]), input="fixed", output="moving")["affine"]
    [[1.0, 0.0, -2.0], [0.0, 1.0, 5.0]]
    """
    if not _is_affine(m):
        return None
    p = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    yx = p @ m @ p
    return {"type": "affine", "affine": yx[:2].tolist(), "input": input, "output": output}


# ------------------------------------------------------------------------------------ transform


def write_transform(
    out: str | Path,
    pair_id: str,
    matrix: Any,
    *,
    attrs: dict[str, Any],
    fixed_pixel_size: tuple[float, float] | None = None,
    moving_pixel_size: tuple[float, float] | None = None,
    field: DisplacementField | None = None,
    fixed_shape: Sequence[int] | None = None,
    moving_shape: Sequence[int] | None = None,
) -> None:
    """Write a pair's matrix and its record to ``OUT/<pair_id>/transform``, atomically.

    Clears the pair's completion marker first and deletes a previous attempt's registered image
    and QC picture; sets the marker's ``transform`` entry last.

    Parameters
    ----------
    out : str or Path
        The output zarr store (``OUT.zarr``); created when missing.
    pair_id : str
        The pair's id (a single path component).
    matrix : array_like, shape (3, 3)
        Fixed → moving in full-resolution pixels.
    attrs : dict
        The record: ``transform`` (kind), ``parameters``, ``metrics``, ``config``, ``versions``...
        (e.g. ``RegistrationResult.to_dict()``); numpy values are converted to JSON.
    fixed_pixel_size, moving_pixel_size : (px, py) in µm, optional
        Recorded (``fixed_pixel_size_um``, ``moving_pixel_size_um``) when given; when both are,
        the matrix is also stored in micrometres (``matrix_um``).
    field : DisplacementField, optional
        A deformable result's displacement (fixed → moving ``M (p + d(p))``, and its inverse),
        written first as ``OUT/<pair_id>/field``; the transform's record points at it.
    fixed_shape, moving_shape : (H, W) or (H, W, C), optional
        The full-resolution shapes of the images the matrix is in, recorded as ``fixed_shape``
        and ``moving_shape`` (``null`` when not given and ``attrs`` does not hold them), so a
        transform applied later to a slide of another size (another pyramid level, another
        scan) can be told apart.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "out.zarr"
    >>> write_transform(out, "p1", np.eye(3), attrs={"transform": "affine"})
    >>> m, a = read_transform(out, "p1")
    >>> m.shape, a["transform"], a["units"], pair_is_complete(out, "p1", warp=False)
    ((3, 3), 'affine', 'pixel', True)
    >>> write_transform(out, "p2", np.eye(3), attrs={}, fixed_shape=(600, 800, 3), moving_shape=(610, 790))
    >>> a = read_transform(out, "p2")[1]
    >>> a["fixed_shape"], a["moving_shape"]
    ([600, 800, 3], [610, 790])
    """
    import zarr

    m = _coerce_matrix(matrix)
    shapes = {"fixed_shape": _coerce_shape("fixed_shape", fixed_shape),
              "moving_shape": _coerce_shape("moving_shape", moving_shape)}
    pair_dir = _pair_dir(out, pair_id)
    root = location(out)
    _ensure_groups(root, pair_dir)
    marker = {"layout": LAYOUT_VERSION, "pair_id": pair_id}
    _write_marker(pair_dir, marker)  # nothing of this pair is complete from here on
    sweep_staging(pair_dir, "transform")
    for stale in ("registered", "registered.ome.tif", "qc.png", "field"):
        remove_path(join(pair_dir, stale))

    write_id = new_write_id()
    field_record = None if field is None else _write_field(pair_dir, field, write_id)
    record: dict[str, Any] = {
        "convention": CONVENTION,
        "transform": "affine" if _is_affine(m) else "homography",
        "units": "pixel",
        "parameters": None,
        "metrics": None,
        "config": None,
        "fixed_shape": None,
        "moving_shape": None,
    }
    record.update(attrs)
    record.update({k: v for k, v in shapes.items() if v is not None})
    record["versions"] = {**_versions(), **(attrs.get("versions") or {})}
    cts = [ngff_affine(m, input="fixed", output="moving")]
    if fixed_pixel_size is not None:
        record["fixed_pixel_size_um"] = list(fixed_pixel_size)
    if moving_pixel_size is not None:
        record["moving_pixel_size_um"] = list(moving_pixel_size)
    if fixed_pixel_size is not None and moving_pixel_size is not None:
        m_um = matrix_to_physical(m, fixed_pixel_size=fixed_pixel_size, moving_pixel_size=moving_pixel_size)
        record["matrix_um"] = m_um
        cts.append(ngff_affine(m_um, input="fixed_um", output="moving_um"))
    if field_record is not None:
        record["field"] = field_record
        if isinstance(record.get("result"), dict):  # the values live in the field array, not twice
            record["result"] = {**record["result"], "field": field_record}
        # NGFF 0.6 (RFC 5): the map is a sequence, displacements first, then the matrix
        cts = [{"type": "sequence", "input": "fixed", "output": "moving",
                "transformations": [{"type": "displacements", "path": "field", "interpolation": "linear"},
                                    *[c for c in cts[:1] if c is not None]]}]
    record["coordinateTransformations"] = [c for c in cts if c is not None] or None
    if record["coordinateTransformations"] is None:
        record["coordinateTransformations_note"] = "a homography has no NGFF affine form"
    record["write_id"] = write_id
    record["written_at"] = datetime.now(timezone.utc).isoformat()

    final = join(pair_dir, "transform")
    with staging(final) as tmp:
        arr = zarr.create_array(
            store=str(tmp), shape=(3, 3), dtype="float64", chunks=(3, 3), compressors=None,
            attributes=_json_safe(record), zarr_format=3, dimension_names=["out", "in"],
        )  # fmt: skip
        arr[...] = m
        replace_path(tmp, final)
    marker["transform"] = {"write_id": write_id}
    _write_marker(pair_dir, marker)


def _write_field(pair_dir: Location, field: DisplacementField, write_id: str) -> dict[str, Any]:
    """``OUT/<pair_id>/field`` (atomically); returns the reference the transform's record keeps."""
    import zarr

    data = np.stack([field.forward, field.inverse])
    attrs: dict[str, Any] = {"origin": list(field.origin), "spacing": list(field.spacing), "write_id": write_id,
             "axes": ["direction (forward, inverse)", "component (dx, dy)", "y node", "x node"],
             "units": "full-resolution pixels",
             "convention": "moving = M @ (p + forward(p)); fixed = r + inverse(r) with r = M^-1 @ moving; "
                           "bilinear between nodes, constant beyond the border nodes"}
    final = join(pair_dir, "field")
    gh, gw = field.grid_shape
    with staging(final) as tmp:
        arr = zarr.create_array(store=str(tmp), shape=data.shape, dtype="float64",
                                chunks=(1, 2, min(gh, 256), min(gw, 256)), attributes=attrs, zarr_format=3,
                                dimension_names=["direction", "component", "y", "x"])
        arr[...] = data
        replace_path(tmp, final)
    return {"path": "field", "origin": list(field.origin), "spacing": list(field.spacing),
            "grid_shape": [gh, gw], "write_id": write_id}


def read_field(out: str | Path, pair_id: str) -> DisplacementField | None:
    """The pair's displacement field (None for a linear transform).

    Raises
    ------
    IncompleteOutputError
        No complete transform for this pair, or its field is missing or from another write.
    """
    import zarr

    _, attrs = read_transform(out, pair_id)
    ref = attrs.get("field")
    if not ref:
        return None
    pair_dir = _pair_dir(out, pair_id)
    try:
        arr = zarr.open_array(store=str(join(pair_dir, str(ref.get("path", "field")))), mode="r")
    except Exception as exc:  # noqa: BLE001 - any reader failure: the field is not there as written
        raise IncompleteOutputError(f"the field of pair {pair_id!r} in {out} cannot be read: {exc}") from exc
    if arr.attrs.get("write_id") != ref.get("write_id"):
        raise IncompleteOutputError(f"the field of pair {pair_id!r} in {out} is not the one its transform names")
    data = np.asarray(arr[...], dtype=np.float64)
    origin, spacing = (tuple(float(v) for v in cast(list[float], arr.attrs[k])) for k in ("origin", "spacing"))
    return DisplacementField(data[0], data[1], origin=(origin[0], origin[1]), spacing=(spacing[0], spacing[1]))


def _transform_ok(pair_dir: Location, marker: dict[str, Any]) -> str | None:
    entry = marker.get("transform")
    if not isinstance(entry, dict):
        return None
    attrs = _array_attrs(join(pair_dir, "transform"))
    if attrs is None or attrs.get("write_id") != entry.get("write_id"):
        return None
    return str(entry["write_id"])


def read_transform(out: str | Path, pair_id: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The pair's matrix and attributes, as written by :func:`write_transform`.

    Raises
    ------
    IncompleteOutputError
        No complete transform for this pair (never written, or interrupted).
    """
    import zarr

    pair_dir = _pair_dir(out, pair_id)
    if _transform_ok(pair_dir, read_marker(out, pair_id)) is None:
        raise IncompleteOutputError(f"no complete transform for pair {pair_id!r} in {out}")
    arr = zarr.open_array(store=str(join(pair_dir, "transform")), mode="r")
    return np.asarray(arr[...], dtype=np.float64), dict(arr.attrs)


# ------------------------------------------------------------------------------------ registered


def write_registered(
    out: str | Path,
    pair_id: str,
    data: da.Array,
    *,
    pixel_size: tuple[float, float] | None = None,
    format: Literal["ome-zarr", "ome-tiff"] = "ome-zarr",
    labels: bool = False,
) -> None:
    """Write the registered slide of a pair (after its transform), atomically.

    ``format="ome-zarr"``: an OME-Zarr 0.5 multiscale at ``OUT/<pair_id>/registered`` (zarr v3,
    2048-pixel shards of 512-pixel zstd chunks, each shard written by exactly one dask task,
    every pyramid level halved from the blocks of the level above in the same computation).
    ``format="ome-tiff"``: a pyramidal tiled OME-TIFF at ``OUT/<pair_id>/registered.ome.tif``
    (made from a temporary OME-Zarr, compressed with zstd level 1 since it is read only once).

    Computes ``data`` with the active dask scheduler (the current distributed ``Client`` if any).

    Parameters
    ----------
    data : dask.array.Array, shape (y, x[, c])
        Typically :func:`warp`'s output.
    pixel_size : (px, py) in µm, optional
        Written as the NGFF scale (the fixed image's pixel size).
    labels : bool
        Build pyramid levels by picking pixels instead of averaging (label images, masks).

    Raises
    ------
    IncompleteOutputError
        The pair has no complete transform yet (write it first).
    """
    if format not in _REGISTERED_PATHS:
        raise ConfigError(f"format must be 'ome-zarr' or 'ome-tiff', got {format!r}")
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data))
    pair_dir = _pair_dir(out, pair_id)
    marker = read_marker(out, pair_id)
    transform_id = _transform_ok(pair_dir, marker)
    if transform_id is None:
        raise IncompleteOutputError(f"pair {pair_id!r} in {out} has no complete transform: write it before the image")
    marker.pop("registered", None)
    _write_marker(pair_dir, marker)
    for name in _REGISTERED_PATHS.values():
        sweep_staging(pair_dir, name)

    write_id = new_write_id()
    own = {MARKER_KEY: {"write_id": write_id, "transform_write_id": transform_id}}
    final = join(pair_dir, _REGISTERED_PATHS[format])
    entry: dict[str, Any] = {"write_id": write_id, "transform_write_id": transform_id, "format": format,
                             "path": basename(final)}
    if format == "ome-zarr":
        with staging(final) as tmp:
            write_ome_zarr(tmp, data, name=pair_id, pixel_size=pixel_size, labels=labels, attributes=own)
            replace_path(tmp, final)
        remove_path(join(pair_dir, _REGISTERED_PATHS["ome-tiff"]))
    else:
        scratch_final = join(pair_dir, "registered")
        with staging(scratch_final, in_place=False) as scratch, staging(final) as tmp:
            write_ome_zarr(scratch, data, name=pair_id, pixel_size=pixel_size, labels=labels, attributes=own,
                           zstd_level=SCRATCH_ZSTD_LEVEL)
            write_ome_tiff(tmp, scratch, pixel_size=pixel_size)
            replace_path(tmp, final)
            remove_path(scratch)
        remove_path(join(pair_dir, _REGISTERED_PATHS["ome-zarr"]))
        entry["stat"] = _file_stamp(final)
    marker["registered"] = entry
    _write_marker(pair_dir, marker)


def _file_stamp(path: Location) -> list[Any]:
    """``[size, mtime_ns]`` of a local file, ``[size, etag]`` of an object (raises when absent)."""
    version, size = stamp(path)
    return [size, version]


def pair_is_complete(out: str | Path, pair_id: str, *, warp: bool = True) -> bool:
    """Whether the pair's outputs are complete (see the module docstring); never raises on absence.

    ``warp=False`` asks for the transform only (``--no-warp`` runs).
    """
    pair_dir = _pair_dir(out, pair_id)
    marker = read_marker(out, pair_id)
    transform_id = _transform_ok(pair_dir, marker)
    if transform_id is None:
        return False
    if not warp:
        return True
    entry = marker.get("registered")
    if not isinstance(entry, dict) or entry.get("transform_write_id") != transform_id:
        return False
    path = join(pair_dir, str(entry.get("path", "")))
    if entry.get("format") == "ome-zarr":
        attrs = _array_attrs(path)
        own = (attrs or {}).get(MARKER_KEY, {})
        return isinstance(own, dict) and own.get("write_id") == entry.get("write_id")
    if entry.get("format") == "ome-tiff":
        try:
            return _file_stamp(path) == entry.get("stat")
        except OSError:
            return False
    return False
