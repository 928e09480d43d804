"""Points through a stored transform: exact both ways, the direction, the ANHIR CSV, micrometres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _apply_support import AFFINE, FIXED_UM, HOMOGRAPHY, MOVING_UM, Store, apply_matrix, make_store

import drmime_batch
from drmime_batch.errors import (
    ConfigError,
    DrmimeWarning,
    IncompleteOutputError,
    LandmarkError,
    OutputStoreError,
)
from drmime_batch.transforms import open_transform, read_points_csv, transform_points_csv

RNG = np.random.default_rng(7)
FIXED_POINTS = RNG.uniform([10, 10], [229, 189], (50, 2))  # all of them map inside the moving image


@pytest.mark.parametrize(("entry", "matrix"), [("affine", AFFINE), ("homography", HOMOGRAPHY)])
def test_points_there_and_back_within_1e_6_px(store: Store, entry: str, matrix: np.ndarray) -> None:
    t = open_transform(store.out, entry)
    np.testing.assert_array_equal(t.matrix, matrix)
    on_moving = t.map_points(FIXED_POINTS, inverse=True)
    back = t.map_points(on_moving)
    assert np.abs(back - FIXED_POINTS).max() < 1e-6
    again = t.map_points(t.map_points(FIXED_POINTS), inverse=True)
    assert np.abs(again - FIXED_POINTS).max() < 1e-6


@pytest.mark.parametrize(("entry", "matrix"), [("affine", AFFINE), ("homography", HOMOGRAPHY)])
def test_inverse_is_the_stored_matrix_and_the_default_its_inverse(store: Store, entry: str, matrix: np.ndarray) -> None:
    t = drmime_batch.open_transform(store.out, entry)  # the lazy top-level name
    np.testing.assert_allclose(t.map_points(FIXED_POINTS, inverse=True), apply_matrix(matrix, FIXED_POINTS), atol=1e-9)
    moving_points = apply_matrix(matrix, FIXED_POINTS)
    np.testing.assert_allclose(t.map_points(moving_points), FIXED_POINTS, atol=1e-6)
    # one point in, one point out
    assert t.map_points(FIXED_POINTS[0], inverse=True).shape == (2,)


def test_csv_keeps_every_other_column_and_row_order(store: Store, tmp_path: Path) -> None:
    moving_points = apply_matrix(AFFINE, FIXED_POINTS[:4])
    rows = [f"{i},{x!r},{y!r},cell {i},{i * 1.5}" for i, (x, y) in enumerate(moving_points.tolist())]
    src = tmp_path / "moving.csv"
    src.write_text(",X,Y,name,area\n" + "\n".join(rows) + "\n")
    counts = transform_points_csv(open_transform(store.out, "affine"), src, tmp_path / "fixed.csv")
    assert counts == {"points": 4, "outside": 0}
    table = read_points_csv(tmp_path / "fixed.csv")
    assert table.header == ["", "X", "Y", "name", "area"]
    assert [r[0] for r in table.rows] == ["0", "1", "2", "3"]
    assert [r[3:] for r in table.rows] == [[f"cell {i}", str(i * 1.5)] for i in range(4)]
    np.testing.assert_allclose(table.xy, FIXED_POINTS[:4], atol=1e-6)


def test_csv_in_micrometres_uses_each_frames_pixel_size(store: Store, tmp_path: Path) -> None:
    moving_um = apply_matrix(AFFINE, FIXED_POINTS[:5]) * MOVING_UM
    src = tmp_path / "moving_um.csv"
    src.write_text(",X,Y\n" + "".join(f"{i},{x!r},{y!r}\n" for i, (x, y) in enumerate(moving_um.tolist())))
    t = open_transform(store.out, "affine")
    transform_points_csv(t, src, tmp_path / "fixed_um.csv", units="um")
    fixed_um = read_points_csv(tmp_path / "fixed_um.csv").xy
    np.testing.assert_allclose(fixed_um, FIXED_POINTS[:5] * FIXED_UM, atol=1e-6)
    transform_points_csv(t, tmp_path / "fixed_um.csv", tmp_path / "back_um.csv", inverse=True, units="um")
    np.testing.assert_allclose(read_points_csv(tmp_path / "back_um.csv").xy, moving_um, atol=1e-6)


def test_micrometres_without_pixel_sizes_is_refused(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    src.write_text(",X,Y\n0,1,2\n")
    with pytest.raises(ConfigError, match=r"pixel size .*unknown"):
        transform_points_csv(open_transform(store.out, "bare"), src, tmp_path / "o.csv", units="um")
    assert not (tmp_path / "o.csv").exists()


def test_points_outside_are_mapped_and_counted(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "p.csv"
    src.write_text(",X,Y\n0,10,10\n1,-40,10\n2,10,9000\n")
    t = open_transform(store.out, "affine")
    with pytest.warns(DrmimeWarning, match=r"2 of 3 points of .*p\.csv lie outside the moving image"):
        counts = transform_points_csv(t, src, tmp_path / "o.csv")
    assert counts == {"points": 3, "outside": 2}
    np.testing.assert_allclose(read_points_csv(tmp_path / "o.csv").xy, t.map_points([[10, 10], [-40, 10], [10, 9000]]))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,2\n", r"bad\.csv has no X and Y columns"),
        (",X,Y\n0,1,two\n", r"bad\.csv: line 2, column Y is 'two'"),
        (",X,Y\n0,1\n", r"bad\.csv: line 2 has 2 columns"),
        ("", r"bad\.csv is empty"),
        (",X,Y\n", r"bad\.csv has a header but no point"),
    ],
)
def test_bad_csv_is_one_line_naming_the_file(store: Store, tmp_path: Path, text: str, match: str) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(text)
    with pytest.raises(LandmarkError, match=match) as info:
        transform_points_csv(open_transform(store.out, "affine"), src, tmp_path / "o.csv")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o.csv").exists()


def test_missing_csv(store: Store, tmp_path: Path) -> None:
    with pytest.raises(LandmarkError, match=r"nothere\.csv does not exist"):
        transform_points_csv(open_transform(store.out, "affine"), tmp_path / "nothere.csv", tmp_path / "o.csv")


def test_missing_store_entry_and_bad_entry(store: Store, tmp_path: Path) -> None:
    with pytest.raises(IncompleteOutputError, match=r"output store .*none\.zarr does not exist"):
        open_transform(tmp_path / "none.zarr", "affine")
    with pytest.raises(
        IncompleteOutputError, match=r"has no entry 'nope' \(entries: affine, bare, homography, mirror\)"
    ):
        open_transform(store.out, "nope")
    with pytest.raises(OutputStoreError, match="is not usable"):
        open_transform(store.out, "../affine")
    (tmp_path / "plain").mkdir()
    with pytest.raises(OutputStoreError, match="is not a drmime_batch output store"):
        open_transform(tmp_path / "plain", "affine")


def test_interrupted_transform_reads_as_incomplete(tmp_path: Path) -> None:
    import zarr

    s = make_store(tmp_path / "s")
    group = zarr.open_group(store=str(s.out / "affine"), mode="a")
    marker = dict(group.attrs["drmime_batch"])
    marker.pop("transform")  # as if the process died between the rename and the marker update
    group.update_attributes({"drmime_batch": marker})
    with pytest.raises(IncompleteOutputError, match=r"transform of 'affine' in .* is incomplete") as info:
        open_transform(s.out, "affine")
    assert "\n" not in str(info.value)


def test_an_entry_one_group_deeper(tmp_path: Path) -> None:
    """``SERIES/SLIDE`` reads ``STORE/SERIES`` as the store of pair ``SLIDE``."""
    from drmime_batch.io import write_transform

    out = tmp_path / "out.zarr"
    write_transform(out, "pair", np.eye(3), attrs={})
    write_transform(out / "series1", "slide2", AFFINE, attrs={})
    t = open_transform(out, "series1/slide2")
    np.testing.assert_array_equal(t.matrix, AFFINE)
    assert t.entry == "series1/slide2"
    with pytest.raises(IncompleteOutputError, match=r"no entry 'series1/nope' \(entries: slide2\)"):
        open_transform(out, "series1/nope")
