"""GeoJSON annotations (QuPath exports) mapped position by position; all else kept as it was.

QuPath writes annotations and detections as a FeatureCollection or as a bare list of Features, in
full-resolution pixels (x = column, y = row). Every position of every geometry is mapped in one
vectorised call; ids, properties, classifications and any member this module does not know are
copied unchanged. A cell's ``nucleusGeometry`` is mapped like its ``geometry``; a ``bbox`` is
recomputed from the mapped positions; a polygon ring keeps its orientation (a mirroring transform
would reverse it, and RFC 7946 readers care about the winding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from drmime_batch.errors import LandmarkError
from drmime_batch.transforms._points import read_text

__all__ = ["map_geojson", "read_geojson", "write_geojson"]

#: geometry type -> nesting depth of its ``coordinates`` above one position
_DEPTH = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}
#: Feature members holding a geometry (QuPath cells carry their nucleus beside the cell outline)
_GEOMETRY_MEMBERS = ("geometry", "nucleusGeometry")


class _Collector:
    """Gathers every position list (and every polygon ring) of a GeoJSON tree, by reference."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.positions: list[list[Any]] = []
        self.rings: list[list[list[Any]]] = []

    def fail(self, where: str, why: str) -> LandmarkError:
        return LandmarkError(f"{self.name} is not valid GeoJSON: {where}{why}")

    def position(self, value: Any, where: str) -> None:
        if not isinstance(value, list) or len(value) < 2:
            raise self.fail(where, f"a position must be [x, y], got {_short(value)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise self.fail(where, f"a position must hold numbers, got {_short(value)}")
        self.positions.append(value)

    def coordinates(self, value: Any, depth: int, where: str, ring: bool = False) -> None:
        if depth == 0:
            self.position(value, where)
            return
        if not isinstance(value, list):
            raise self.fail(where, f"coordinates must be nested lists, got {_short(value)}")
        if ring and depth == 1:
            self.rings.append(value)
        for item in value:
            self.coordinates(item, depth - 1, where, ring)

    def geometry(self, geom: Any, where: str) -> None:
        if geom is None:  # a Feature without a location is valid GeoJSON
            return
        if not isinstance(geom, dict):
            raise self.fail(where, f"a geometry must be an object, got {_short(geom)}")
        kind = geom.get("type")
        if kind == "GeometryCollection":
            parts = geom.get("geometries")
            if not isinstance(parts, list):
                raise self.fail(where, "a GeometryCollection needs a list of geometries")
            for i, part in enumerate(parts):
                self.geometry(part, f"{where}geometry {i}: ")
            return
        if kind not in _DEPTH:
            raise self.fail(where, f"unknown geometry type {kind!r}")
        if "coordinates" not in geom:
            raise self.fail(where, f"a {kind} has no coordinates")
        self.coordinates(geom["coordinates"], _DEPTH[kind], where, ring=kind in ("Polygon", "MultiPolygon"))

    def feature(self, feature: Any, where: str) -> None:
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise self.fail(where, f"expected a Feature, got {_short(feature)}")
        for member in _GEOMETRY_MEMBERS:
            if member in feature:
                self.geometry(feature[member], where)

    def document(self, obj: Any) -> None:
        if isinstance(obj, list):
            for i, feature in enumerate(obj):
                self.feature(feature, f"feature {i}: ")
            return
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "FeatureCollection":
            features = obj.get("features")
            if not isinstance(features, list):
                raise self.fail("", "a FeatureCollection needs a list of features")
            for i, feature in enumerate(features):
                self.feature(feature, f"feature {i}: ")
        elif kind == "Feature":
            self.feature(obj, "")
        elif kind in _DEPTH or kind == "GeometryCollection":
            self.geometry(obj, "")
        else:
            raise self.fail(
                "", f"expected a FeatureCollection, a list of Features, a Feature or a geometry, got {_short(obj)}"
            )


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _signed_area(ring: list[list[Any]]) -> float:
    if len(ring) < 3:
        return 0.0
    xy = np.asarray([p[:2] for p in ring], dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


#: members that hold the structure (anything else, e.g. ``properties``, is never looked into)
_STRUCTURE = ("features", "geometries", *_GEOMETRY_MEMBERS)


def _refresh_bboxes(node: Any) -> list[list[Any]]:
    """Recompute every ``bbox`` below ``node``; returns the positions of ``node``'s subtree."""
    found: list[list[Any]] = []
    if isinstance(node, list):
        for item in node:
            found.extend(_refresh_bboxes(item))
        return found
    if not isinstance(node, dict):
        return found
    if "coordinates" in node:
        found.extend(_leaves(node["coordinates"]))
    for key in _STRUCTURE:
        if key in node:
            found.extend(_refresh_bboxes(node[key]))
    if "bbox" in node and found:
        xy = np.asarray([p[:2] for p in found], dtype=np.float64)
        lo, hi = xy.min(axis=0).tolist(), xy.max(axis=0).tolist()
        box = node["bbox"]
        if isinstance(box, list) and len(box) == 6:  # keep a 3D box's z range
            node["bbox"] = [lo[0], lo[1], box[2], hi[0], hi[1], box[5]]
        else:
            node["bbox"] = [lo[0], lo[1], hi[0], hi[1]]
    return found


def _leaves(value: Any) -> list[list[Any]]:
    if isinstance(value, list) and value and not isinstance(value[0], list):
        return [value]
    out: list[list[Any]] = []
    if isinstance(value, list):
        for item in value:
            out.extend(_leaves(item))
    return out


def map_geojson(obj: Any, map_points: Callable[[np.ndarray], np.ndarray], *, name: str = "the GeoJSON object") -> Any:
    """A deep copy of a GeoJSON object with every position ``[x, y, ...]`` mapped by ``map_points``.

    Parameters
    ----------
    obj : dict or list
        A FeatureCollection, a list of Features, a Feature or a geometry.
    map_points : callable
        ``(N, 2) -> (N, 2)`` float arrays, e.g. ``lambda p: t.map_points(p, inverse=False)``.
    name : str
        What to call ``obj`` in error messages (the file name).

    Raises
    ------
    LandmarkError
        ``obj`` is not GeoJSON of a known form; the message says where.

    Examples
    --------
    >>> ring = [[0, 0], [4, 0], [4, 2], [0, 0]]
    >>> poly = {"type": "Polygon", "coordinates": [ring]}
    >>> map_geojson(poly, lambda p: p + [10, 0])["coordinates"][0][:2]
    [[10.0, 0.0], [14.0, 0.0]]
    """
    # a JSON round trip, not a deepcopy: no two positions of the copy can be one shared list
    # (a ring built as [p0, p1, p2, p0] in Python would otherwise be mapped twice), and tuples
    # become lists
    try:
        out = json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise LandmarkError(f"{name} is not JSON data: {exc}") from None
    walk = _Collector(name)
    walk.document(out)
    if walk.positions:
        areas = [_signed_area(r) for r in walk.rings]
        xy = np.asarray([p[:2] for p in walk.positions], dtype=np.float64)
        mapped = np.asarray(map_points(xy), dtype=np.float64)
        for pos, (x, y) in zip(walk.positions, mapped.tolist(), strict=True):
            pos[0], pos[1] = x, y  # z (and anything after it) is kept
        for ring, before in zip(walk.rings, areas, strict=True):
            if before * _signed_area(ring) < 0:
                ring.reverse()  # closed rings stay closed: first and last swap places
        _refresh_bboxes(out)
    return out


def read_geojson(path: str | Path) -> Any:
    """Read a GeoJSON file (UTF-8 JSON); a missing or non-JSON file is a one-line LandmarkError."""
    text = read_text(path, "GeoJSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LandmarkError(
            f"GeoJSON file {path} is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None


def write_geojson(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON, atomically (a temporary file renamed into place)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
