"""``drmime-batch apply`` and ``export`` end to end as subprocesses; every bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _apply_support import AFFINE, FIXED_SHAPE, FIXED_UM, MOVING_UM, Store, apply_matrix, cli

from drmime_batch.cli import main
from drmime_batch.io import open_image
from drmime_batch.transforms import read_points_csv

FIXED_POINTS = np.array([[20.0, 30.0], [200.0, 150.0], [120.5, 99.25]])


def test_points_both_ways_and_in_micrometres(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "moving.csv"
    moving = apply_matrix(AFFINE, FIXED_POINTS)
    src.write_text(",X,Y,name\n" + "".join(f"{i},{x!r},{y!r},p{i}\n" for i, (x, y) in enumerate(moving.tolist())))
    proc = cli("apply", "points", store.out, "affine", src, "--out", tmp_path / "fixed.csv")
    assert "3 points" in proc.stdout and proc.stderr == ""
    table = read_points_csv(tmp_path / "fixed.csv")
    np.testing.assert_allclose(table.xy, FIXED_POINTS, atol=1e-6)
    assert [r[3] for r in table.rows] == ["p0", "p1", "p2"]
    cli("apply", "points", store.out, "affine", tmp_path / "fixed.csv", "--out", tmp_path / "back.csv", "--inverse")
    np.testing.assert_allclose(read_points_csv(tmp_path / "back.csv").xy, moving, atol=1e-6)
    um = tmp_path / "moving_um.csv"
    um.write_text(",X,Y\n" + "".join(f"{i},{x!r},{y!r}\n" for i, (x, y) in enumerate((moving * MOVING_UM).tolist())))
    cli("apply", "points", store.out, "affine", um, "--out", tmp_path / "fixed_um.csv", "--units", "um")
    np.testing.assert_allclose(read_points_csv(tmp_path / "fixed_um.csv").xy, FIXED_POINTS * FIXED_UM, atol=1e-6)


def test_geojson_slide_and_export(store: Store, tmp_path: Path) -> None:
    features = [{"type": "Feature", "id": "a1", "properties": {"classification": {"name": "Tumor"}},
                 "geometry": {"type": "Polygon", "coordinates": [FIXED_POINTS.tolist() + [FIXED_POINTS[0].tolist()]]}}]  # fmt: skip
    (tmp_path / "fixed.geojson").write_text(json.dumps(features))
    cli(
        "apply",
        "geojson",
        store.out,
        "affine",
        tmp_path / "fixed.geojson",
        "--out",
        tmp_path / "m.geojson",
        "--inverse",
    )
    out = json.loads((tmp_path / "m.geojson").read_text())
    assert out[0]["id"] == "a1" and out[0]["properties"] == features[0]["properties"]
    ring = np.array(out[0]["geometry"]["coordinates"][0])
    np.testing.assert_allclose(ring[:3], apply_matrix(AFFINE, FIXED_POINTS), atol=1e-9)

    proc = cli(
        "apply", "slide", store.out, "affine", store.moving, "--out", tmp_path / "s.ome.zarr", "--order", "nearest"
    )
    assert "s.ome.zarr" in proc.stdout
    image = open_image(tmp_path / "s.ome.zarr")
    assert image.shape == (*FIXED_SHAPE, 3) and image.pixel_size == pytest.approx(FIXED_UM)

    cli("export", store.out, "affine", "--format", "json", "--out", tmp_path / "t.json")
    np.testing.assert_array_equal(json.loads((tmp_path / "t.json").read_text())["fixed_to_moving"], AFFINE)


def test_a_failing_subprocess_prints_one_line(store: Store, tmp_path: Path) -> None:
    proc = cli("apply", "points", store.out, "nope", tmp_path / "x.csv", "--out", tmp_path / "o.csv", check=1)
    expected = (
        f"drmime-batch apply: error: output store {store.out} has no entry 'nope' "
        "(entries: affine, bare, homography, mirror)"
    )
    assert proc.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "o.csv").exists()


def bad_inputs(store: Store, d: Path) -> list[tuple[list[str], str]]:
    (d / "noxy.csv").write_text("a,b\n1,2\n")
    (d / "ok.csv").write_text(",X,Y\n0,1,2\n")
    (d / "notjson.geojson").write_text("{")
    (d / "notgeo.geojson").write_text('{"type": "Foo"}')
    (d / "junk.tif").write_bytes(b"II*\x00" + b"\x00" * 12)
    s, e = str(store.out), "affine"
    return [
        (["apply", "points", str(d / "none.zarr"), e, str(d / "ok.csv")], "none.zarr does not exist"),
        (["apply", "points", s, "nope", str(d / "ok.csv")], "has no entry 'nope'"),
        (["apply", "points", s, e, str(d / "noxy.csv")], "noxy.csv has no X and Y columns"),
        (["apply", "points", s, e, str(d / "none.csv")], "none.csv does not exist"),
        (["apply", "points", s, "bare", str(d / "ok.csv"), "--units", "um"], "pixel size of 'bare'"),
        (["apply", "geojson", s, e, str(d / "notjson.geojson")], "notjson.geojson is not JSON"),
        (["apply", "geojson", s, e, str(d / "notgeo.geojson")], "notgeo.geojson is not valid GeoJSON"),
        (["apply", "slide", s, e, str(d / "none.tif")], "none.tif"),
        (["apply", "slide", s, e, str(d / "junk.tif")], "junk.tif"),
        (["export", s, "homography", "--format", "itk"], "is a homography"),
    ]


def test_each_bad_input_is_one_line_and_writes_nothing(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv, needle in bad_inputs(store, tmp_path):
        suffix = {"points": ".csv", "geojson": ".geojson", "slide": ".ome.zarr"}.get(argv[1], ".tfm")
        out = tmp_path / f"out{suffix}"
        assert main([*argv, "--out", str(out)]) == 1, argv
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        command = argv[0]
        assert lines[0].startswith(f"drmime-batch {command}: error: ") and needle in lines[0], lines[0]
        assert not out.exists(), argv


def test_outside_points_warn_in_one_line(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.csv").write_text(",X,Y\n0,10,10\n1,-50,-50\n")
    assert (
        main(["apply", "points", str(store.out), "affine", str(tmp_path / "p.csv"), "--out", str(tmp_path / "o.csv")])
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    expected = (
        f"drmime-batch apply: warning: 1 of 2 points of {tmp_path / 'p.csv'} lie outside the moving image; "
        "they were mapped all the same"
    )
    assert err == [expected]
    assert len(read_points_csv(tmp_path / "o.csv").rows) == 2
