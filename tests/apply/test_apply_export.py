"""Exports: the ITK file SimpleITK reads maps points as the matrix does; NGFF 0.6 and JSON agree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _apply_support import AFFINE, FIXED_SHAPE, FIXED_UM, MOVING_UM, Store, apply_matrix

from drmime_batch.errors import ConfigError, DrmimeWarning
from drmime_batch.transforms import export_transform, open_transform

FIXED_POINTS = np.array([[0.0, 0.0], [239.0, 199.0], [17.5, 150.25], [120.0, 3.0]])


def test_itk_file_read_by_simpleitk_maps_points_like_the_matrix(store: Store, tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    path = export_transform(open_transform(store.out, "affine"), tmp_path / "affine.tfm", "itk")
    tx = sitk.ReadTransform(str(path))
    got = np.array([tx.TransformPoint(tuple(p * FIXED_UM)) for p in FIXED_POINTS])
    np.testing.assert_allclose(got, apply_matrix(AFFINE, FIXED_POINTS) * MOVING_UM, atol=1e-9)


def test_itk_resample_agrees_with_our_warp(store: Store, tmp_path: Path) -> None:
    """``sitk.Resample(moving, fixed, transform)`` with the exported file is the registered image."""
    sitk = pytest.importorskip("SimpleITK")
    from drmime_batch.io import open_image

    t = open_transform(store.out, "affine")
    tx = sitk.ReadTransform(str(export_transform(t, tmp_path / "a.txt", "itk")))
    moving = sitk.GetImageFromArray(store.moving_image[..., 0].astype(np.float32))
    moving.SetSpacing(MOVING_UM)
    reference = sitk.Image(FIXED_SHAPE[1], FIXED_SHAPE[0], sitk.sitkFloat32)
    reference.SetSpacing(FIXED_UM)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, reference, tx, sitk.sitkLinear, 0.0))
    ours = np.asarray(open_image(t.warp_slide(store.moving, tmp_path / "ours.ome.zarr")).levels[0])[..., 0]
    # compare where the moving position is at least a pixel inside: at the very border ITK clamps
    # to the edge pixel while we blend with the background
    yy, xx = np.mgrid[0 : FIXED_SHAPE[0], 0 : FIXED_SHAPE[1]]
    at = apply_matrix(AFFINE, np.c_[xx.ravel(), yy.ravel()].astype(float))
    h, w = store.moving_image.shape[:2]
    inside = ((at[:, 0] >= 1) & (at[:, 0] <= w - 2) & (at[:, 1] >= 1) & (at[:, 1] <= h - 2)).reshape(FIXED_SHAPE)
    assert inside.mean() > 0.8
    assert np.abs(theirs[inside] - ours[inside]).max() <= 1.0


def test_itk_without_pixel_sizes_assumes_1um_and_says_so(store: Store, tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    with pytest.warns(DrmimeWarning, match="fixed and moving pixel size .* unknown: .* 1 µm per pixel"):
        path = export_transform(open_transform(store.out, "bare"), tmp_path / "bare.tfm", "itk")
    assert "unknown (1 um/px assumed)" in path.read_text()
    tx = sitk.ReadTransform(str(path))
    got = np.array([tx.TransformPoint(tuple(p)) for p in FIXED_POINTS])
    np.testing.assert_allclose(got, apply_matrix(AFFINE, FIXED_POINTS), atol=1e-9)


def yx_affine(rows: list[list[float]]) -> np.ndarray:
    """An NGFF (y, x) affine (2 x 3 rows) as a 3x3 (x, y) matrix."""
    m = np.vstack([np.asarray(rows, dtype=np.float64), [0.0, 0.0, 1.0]])
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return swap @ m @ swap


def test_ngff_bijection_forward_and_inverse(store: Store, tmp_path: Path) -> None:
    doc = json.loads(export_transform(open_transform(store.out, "affine"), tmp_path / "a.json", "ngff").read_text())
    ome = doc["ome"]
    assert ome["version"] == "0.6"
    assert [cs["name"] for cs in ome["coordinateSystems"]] == ["fixed", "moving"]
    assert all(ax["unit"] == "micrometer" for cs in ome["coordinateSystems"] for ax in cs["axes"])
    (ct,) = ome["coordinateTransformations"]
    assert (ct["type"], ct["input"], ct["output"]) == ("bijection", "moving", "fixed")
    assert ct["forward"]["type"] == ct["inverse"]["type"] == "affine"
    assert np.shape(ct["forward"]["affine"]) == (2, 3)
    to_fixed, to_moving = yx_affine(ct["forward"]["affine"]), yx_affine(ct["inverse"]["affine"])
    moving_um = apply_matrix(AFFINE, FIXED_POINTS) * MOVING_UM
    np.testing.assert_allclose(apply_matrix(to_fixed, moving_um), FIXED_POINTS * FIXED_UM, atol=1e-9)
    np.testing.assert_allclose(apply_matrix(to_moving, FIXED_POINTS * FIXED_UM), moving_um, atol=1e-9)


def test_ngff_in_pixels_when_pixel_sizes_are_unknown(store: Store, tmp_path: Path) -> None:
    doc = json.loads(export_transform(open_transform(store.out, "bare"), tmp_path / "b.json", "ngff").read_text())
    assert all("unit" not in ax for cs in doc["ome"]["coordinateSystems"] for ax in cs["axes"])
    to_moving = yx_affine(doc["ome"]["coordinateTransformations"][0]["inverse"]["affine"])
    np.testing.assert_allclose(to_moving, AFFINE, atol=1e-12)
    assert "pixel sizes unknown" in doc["drmime_batch"]["note"]


def test_plain_json(store: Store, tmp_path: Path) -> None:
    doc = json.loads(export_transform(open_transform(store.out, "affine"), tmp_path / "a.json", "json").read_text())
    np.testing.assert_array_equal(doc["fixed_to_moving"], AFFINE)
    np.testing.assert_allclose(np.array(doc["moving_to_fixed"]) @ AFFINE, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.diag(doc["fixed_to_moving_um"])[:2] / np.diag(AFFINE)[:2], [0.5, 0.5])
    assert doc["fixed_pixel_size_um"] == list(FIXED_UM) and doc["moving_pixel_size_um"] == list(MOVING_UM)
    assert doc["fixed_shape"] == [*FIXED_SHAPE, 3] and doc["entry"] == "affine"


def test_homography_exports_as_json_only(store: Store, tmp_path: Path) -> None:
    t = open_transform(store.out, "homography")
    for fmt, name in (("itk", "h.tfm"), ("ngff", "h.json")):
        with pytest.raises(ConfigError, match=r"is a homography, which an .* affine cannot express: export it as json"):
            export_transform(t, tmp_path / name, fmt)
        assert not (tmp_path / name).exists()
    doc = json.loads(export_transform(t, tmp_path / "h.json", "json").read_text())
    assert doc["kind"] == "homography"


def test_bad_export_requests(store: Store, tmp_path: Path) -> None:
    t = open_transform(store.out, "affine")
    with pytest.raises(ConfigError, match=r"a\.h5: name it \*\.tfm or \*\.txt"):
        export_transform(t, tmp_path / "a.h5", "itk")
    with pytest.raises(ConfigError, match="export format must be one of itk, ngff, json"):
        export_transform(t, tmp_path / "a.x", "yaml")
    assert list(tmp_path.iterdir()) == []
