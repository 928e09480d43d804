"""GeoJSON (QuPath exports) through a stored transform: positions mapped, everything else kept."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _apply_support import AFFINE, MIRROR, Store, apply_matrix

from drmime_batch.errors import LandmarkError
from drmime_batch.transforms import map_geojson, open_transform, read_geojson

OUTER = [[10.0, 10.0], [200.0, 12.0], [190.0, 150.0], [15.0, 140.0], [10.0, 10.0]]  # counter-clockwise in (x, y)
HOLE = [[50.0, 50.0], [60.0, 90.0], [100.0, 80.0], [50.0, 50.0]]


def qupath_collection() -> dict[str, Any]:
    """What QuPath's 'Export as GeoJSON' writes: annotations with holes, a cell with its nucleus."""
    classification = {"name": "Tumor", "color": [200, 0, 0]}
    return {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "id": "6b0e-annotation", "bbox": [0, 0, 1, 1],
             "geometry": {"type": "Polygon", "coordinates": [OUTER, HOLE]},
             "properties": {"objectType": "annotation", "classification": classification, "isLocked": False,
                            "measurements": {"Area µm^2": 1234.5}, "coordinates": [[1, 2]]}},
            {"type": "Feature", "id": "cell-1",
             "geometry": {"type": "Polygon", "coordinates": [[[30, 30], [40, 30], [40, 40], [30, 30]]]},
             "nucleusGeometry": {"type": "Polygon", "coordinates": [[[33, 33], [36, 33], [36, 36], [33, 33]]]},
             "properties": {"objectType": "cell"}},
            {"type": "Feature", "id": "multi",
             "geometry": {"type": "MultiPolygon", "coordinates": [[OUTER], [HOLE]]}, "properties": {}},
            {"type": "Feature", "id": "path",
             "geometry": {"type": "LineString", "coordinates": [[1, 2], [3, 4], [5.5, 6.5]]}, "properties": {"a": 1}},
            {"type": "Feature", "id": "pts",
             "geometry": {"type": "MultiPoint", "coordinates": [[7, 8, 9.5], [10, 11]]}, "properties": None},
            {"type": "Feature", "id": "pt", "geometry": {"type": "Point", "coordinates": [12, 13]}, "properties": {}},
            {"type": "Feature", "id": "nowhere", "geometry": None, "properties": {"note": "no location"}},
        ],
    }  # fmt: skip


def positions(node: Any) -> list[list[float]]:
    """Every position of a GeoJSON tree, in document order (geometry members only)."""
    if isinstance(node, list):
        if node and not isinstance(node[0], (list, dict)) and node[0] is not None:
            return [node]
        return [p for item in node for p in positions(item)]
    if isinstance(node, dict):
        out = []
        for key in ("features", "geometry", "nucleusGeometry", "geometries", "coordinates"):
            if key in node and node[key] is not None:
                out += positions(node[key])
        return out
    return []


def strip_positions(node: Any) -> Any:
    """The tree with every geometry's coordinates and bbox removed (what must be unchanged)."""
    node = copy.deepcopy(node)
    for feature in node["features"]:
        feature.pop("bbox", None)
        for key in ("geometry", "nucleusGeometry"):
            if feature.get(key):
                feature[key].pop("coordinates")
    return node


def test_every_position_mapped_ids_and_properties_unchanged(store: Store) -> None:
    doc = qupath_collection()
    before = copy.deepcopy(doc)
    t = open_transform(store.out, "affine")
    for inverse, matrix in ((False, np.linalg.inv(AFFINE)), (True, AFFINE)):
        out = t.warp_geojson(doc, inverse=inverse)
        assert doc == before, "the input was modified"
        assert strip_positions(out) == strip_positions(doc)
        old, new = positions(doc), positions(out)
        assert len(new) == len(old) == 32
        np.testing.assert_allclose(
            [p[:2] for p in new], apply_matrix(matrix, np.array([p[:2] for p in old])), atol=1e-9
        )
        assert new[old.index([7, 8, 9.5])][2] == 9.5  # z kept
    # holes stay holes: the second ring of the polygon is still the hole, mapped
    out = t.warp_geojson(doc)
    hole = np.array(out["features"][0]["geometry"]["coordinates"][1])
    np.testing.assert_allclose(hole, apply_matrix(np.linalg.inv(AFFINE), np.array(HOLE)), atol=1e-9)
    # the bbox is recomputed from the mapped positions of its feature
    outer = np.array(out["features"][0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(out["features"][0]["bbox"], [*outer.min(axis=0), *outer.max(axis=0)])


def test_a_list_of_features_and_a_bare_geometry(store: Store) -> None:
    t = open_transform(store.out, "affine")
    features = qupath_collection()["features"]
    out = t.warp_geojson(features, inverse=True)
    assert isinstance(out, list) and [f["id"] for f in out] == [f["id"] for f in features]
    point = t.warp_geojson({"type": "Point", "coordinates": [12, 13]}, inverse=True)
    np.testing.assert_allclose(point["coordinates"], apply_matrix(AFFINE, np.array([[12.0, 13.0]]))[0])


def signed_area(ring: list[list[float]]) -> float:
    xy = np.array(ring)
    return 0.5 * float(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))


def test_a_mirror_keeps_each_rings_orientation(store: Store) -> None:
    t = open_transform(store.out, "mirror")
    doc = {"type": "Polygon", "coordinates": [OUTER, HOLE]}
    out = t.warp_geojson(doc, inverse=True)
    for before, after in zip(doc["coordinates"], out["coordinates"], strict=True):
        assert np.sign(signed_area(after)) == np.sign(signed_area(before))
        assert after[0] == after[-1]  # still closed
        # the same points, in reverse order
        mapped = apply_matrix(MIRROR, np.array(before))
        np.testing.assert_allclose(np.array(after), mapped[::-1], atol=1e-12)


def test_shared_position_objects_are_mapped_once(store: Store) -> None:
    p0 = [10.0, 10.0]
    ring = [p0, [20.0, 10.0], [20.0, 20.0], p0]  # built in Python: first and last are one list
    out = open_transform(store.out, "affine").warp_geojson({"type": "Polygon", "coordinates": [ring]}, inverse=True)
    np.testing.assert_allclose(out["coordinates"][0][-1], apply_matrix(AFFINE, np.array([p0]))[0])


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"type": "Foo"}, "expected a FeatureCollection, a list of Features"),
        ([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[["a", 1]]]}}],
         "feature 0: a position must hold numbers"),
        ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {"type": "Circle"}}]},
         "feature 0: unknown geometry type 'Circle'"),
        ({"type": "FeatureCollection"}, "needs a list of features"),
        ([1, 2], "feature 0: expected a Feature"),
    ],
)  # fmt: skip
def test_not_geojson_is_one_line(store: Store, doc: Any, match: str) -> None:
    with pytest.raises(LandmarkError, match=match) as info:
        map_geojson(doc, lambda p: p, name="GeoJSON file x.geojson")
    assert str(info.value).startswith("GeoJSON file x.geojson is not valid GeoJSON")
    assert "\n" not in str(info.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(LandmarkError, match=r"GeoJSON file .*none\.geojson does not exist"):
        read_geojson(tmp_path / "none.geojson")
    (tmp_path / "bad.geojson").write_text('{"type": "Feature",')
    with pytest.raises(LandmarkError, match=r"bad\.geojson is not JSON: .* at line 1"):
        read_geojson(tmp_path / "bad.geojson")
    (tmp_path / "ok.geojson").write_text(json.dumps(qupath_collection()))
    assert read_geojson(tmp_path / "ok.geojson") == qupath_collection()
