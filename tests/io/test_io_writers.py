"""Writers: transform record, OME-Zarr 0.5 / OME-TIFF registered image, QC, atomicity and markers."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from drmime_batch.errors import IncompleteOutputError, OutputStoreError
from drmime_batch.io import (
    open_image,
    pair_is_complete,
    read_transform,
    warp,
    write_qc,
    write_registered,
    write_transform,
)

M = np.array([[1.0, 0.02, 5.0], [-0.02, 1.0, 3.0], [0.0, 0.0, 1.0]])


def test_transform_record_and_ngff_form(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    attrs = {"transform": "affine", "parameters": np.arange(6.0), "metrics": {"final_mi": np.float32(0.4), "bad": float("nan")},
             "config": {"seed": 0}}  # fmt: skip
    write_transform(out, "pair-1", M, attrs=attrs, fixed_pixel_size=(0.5, 0.5), moving_pixel_size=(0.25, 0.25))
    matrix, got = read_transform(out, "pair-1")
    np.testing.assert_array_equal(matrix, M)
    assert got["transform"] == "affine" and got["units"] == "pixel" and "FIXED" in got["convention"]
    assert got["parameters"] == list(np.arange(6.0)) and got["metrics"]["bad"] is None
    assert {"numpy", "zarr", "python"} <= set(got["versions"])
    ct = got["coordinateTransformations"]
    assert ct[0]["affine"] == [[1.0, -0.02, 3.0], [0.02, 1.0, 5.0]]  # (y, x) order
    np.testing.assert_allclose(np.array(got["matrix_um"]), np.diag([0.25, 0.25, 1]) @ M @ np.diag([2.0, 2.0, 1]))
    assert ct[1]["input"] == "fixed_um"
    arr = zarr.open_array(store=str(out / "pair-1" / "transform"), mode="r")
    assert arr.shape == (3, 3) and arr.dtype == np.float64  # the layout contract: an ARRAY
    assert pair_is_complete(out, "pair-1", warp=False) and not pair_is_complete(out, "pair-1")


def test_registered_ome_zarr_05(tmp_path: Path, ome_tiff: Path) -> None:
    out = tmp_path / "out.zarr"
    moving = open_image(ome_tiff)
    data = warp(moving, M, like=moving, chunks=(70, 90))  # irregular w.r.t. shards: must be realigned
    write_transform(out, "p", M, attrs={})
    write_registered(out, "p", data, pixel_size=(0.5, 0.5))
    assert pair_is_complete(out, "p")
    group = zarr.open_group(store=str(out / "p" / "registered"), mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5" and [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "y", "x"]
    level0 = group["0"]
    assert level0.shards is not None and level0.metadata.zarr_format == 3
    assert "zstd" in json.dumps(level0.metadata.to_dict()["codecs"])
    models = pytest.importorskip("ome_zarr_models")
    models.v05.Image.from_zarr(group)
    back = open_image(out / "p" / "registered")
    np.testing.assert_array_equal(back.read_level(0), data.compute())
    assert back.pixel_size == pytest.approx((0.5, 0.5))


def test_shards_many_blocks_no_corruption(tmp_path: Path) -> None:
    from drmime_batch.io._omezarr import write_ome_zarr

    rng = np.random.default_rng(3)
    ref = rng.integers(0, 255, (700, 900), dtype=np.uint8)
    data = da.from_array(ref, chunks=(33, 47))  # every block crosses shard borders
    write_ome_zarr(tmp_path / "r.zarr", data, name="r", shard=256, chunk=64, min_side=100)
    group = zarr.open_group(store=str(tmp_path / "r.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][...], ref)
    assert group["0"].shards == (256, 256) and group["0"].chunks == (64, 64)
    assert [group[k].shape for k in sorted(group.array_keys())] == [(700, 900), (350, 450), (175, 225), (87, 112), (43, 56)]


def test_registered_ome_tiff(tmp_path: Path, ome_tiff: Path) -> None:
    out = tmp_path / "out.zarr"
    moving = open_image(ome_tiff)
    write_transform(out, "p", M, attrs={})
    write_registered(out, "p", warp(moving, M, like=moving), pixel_size=(0.5, 0.5), format="ome-tiff")
    assert pair_is_complete(out, "p")
    assert not (out / "p" / "registered").exists()
    tif = open_image(out / "p" / "registered.ome.tif")
    assert tif.shape == moving.shape and tif.pixel_size == pytest.approx((0.5, 0.5))
    assert tif.metadata["format"] == "ome-tiff"
    assert np.abs(tif.read_level(0).astype(float) - warp(moving, M, like=moving).compute()).mean() < 3  # JPEG tiles


def test_qc_png(tmp_path: Path, ome_tiff: Path) -> None:
    from PIL import Image

    out = tmp_path / "out.zarr"
    img = open_image(ome_tiff)
    write_transform(out, "p", M, attrs={})
    path = write_qc(out, "p", img, img, M)
    assert path == out / "p" / "qc.png"
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.width > 2 * 420 * 0.9


class Boom(RuntimeError):
    pass


def _exploding(data: da.Array, at_block: tuple[int, ...]) -> da.Array:
    def fn(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None and tuple(block_info[0]["chunk-location"]) == at_block:
            raise Boom("injected failure mid-write")
        return block

    return data.map_blocks(fn, dtype=data.dtype)


def test_interrupted_registered_write_is_never_complete(tmp_path: Path, ome_tiff: Path) -> None:
    out = tmp_path / "out.zarr"
    moving = open_image(ome_tiff)
    write_transform(out, "p", M, attrs={})
    data = warp(moving, M, like=moving, chunks=64)
    with pytest.raises(Boom, match="injected"):
        write_registered(out, "p", _exploding(data, (2, 3, 0)))
    assert not pair_is_complete(out, "p") and pair_is_complete(out, "p", warp=False)
    assert not (out / "p" / "registered").exists()
    assert [p.name for p in (out / "p").iterdir() if p.name.startswith(".drmime")] == []
    # a previously complete pair whose retry dies keeps no half-new image either
    write_registered(out, "p", data)
    assert pair_is_complete(out, "p")
    with pytest.raises(Boom):
        write_registered(out, "p", _exploding(data, (0, 0, 0)))
    assert not pair_is_complete(out, "p")


def test_crash_between_rename_and_marker(tmp_path: Path, ome_tiff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drmime_batch.io import _writers

    out = tmp_path / "out.zarr"
    moving = open_image(ome_tiff)
    write_transform(out, "p", M, attrs={})
    real = _writers._write_marker
    calls = []

    def dies_on_final_marker(pair_dir: Path, marker: dict) -> None:
        calls.append(dict(marker))
        if "registered" in marker:
            raise KeyboardInterrupt  # the process is killed right after the rename
        real(pair_dir, marker)

    monkeypatch.setattr(_writers, "_write_marker", dies_on_final_marker)
    with pytest.raises(KeyboardInterrupt):
        write_registered(out, "p", warp(moving, M, like=moving))
    assert (out / "p" / "registered").exists()  # renamed in place ...
    assert not pair_is_complete(out, "p")  # ... but not trusted without the marker


def test_retry_of_transform_clears_old_outputs(tmp_path: Path, ome_tiff: Path) -> None:
    out = tmp_path / "out.zarr"
    img = open_image(ome_tiff)
    write_transform(out, "p", M, attrs={})
    write_registered(out, "p", warp(img, M, like=img))
    write_qc(out, "p", img, img, M)
    assert pair_is_complete(out, "p")
    write_transform(out, "p", np.eye(3), attrs={})
    assert pair_is_complete(out, "p", warp=False) and not pair_is_complete(out, "p")
    assert not (out / "p" / "registered").exists() and not (out / "p" / "qc.png").exists()
    np.testing.assert_array_equal(read_transform(out, "p")[0], np.eye(3))


def test_interrupted_transform_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drmime_batch.io import _writers

    out = tmp_path / "out.zarr"
    write_transform(out, "p", M, attrs={})

    def fail(*args: object, **kwargs: object) -> None:
        raise Boom("disk full")

    monkeypatch.setattr(_writers, "replace_path", fail)
    with pytest.raises(Boom):
        write_transform(out, "p", np.eye(3), attrs={})
    assert not pair_is_complete(out, "p", warp=False)
    with pytest.raises(IncompleteOutputError, match="no complete transform"):
        read_transform(out, "p")


def test_validation(tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    with pytest.raises(OutputStoreError, match="pair id"):
        write_transform(out, "../evil", M, attrs={})
    with pytest.raises(ValueError, match="3x3"):
        write_transform(out, "p", np.eye(2), attrs={})
    with pytest.raises(IncompleteOutputError, match="write it before"):
        write_registered(out, "q", da.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError, match="format must be"):
        write_registered(out, "q", da.zeros((10, 10), dtype=np.uint8), format="png")  # type: ignore[arg-type]
    assert not pair_is_complete(out, "never-written")


def test_two_workers_creating_the_output_store_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pairs of a batch can finish together on two workers: both see no ``OUT/zarr.json``
    and both ask zarr to create it; the second must carry on with the group the first made."""
    out = tmp_path / "out.zarr"
    real_open_group = zarr.open_group
    raced: list[str] = []

    def other_worker_first(*args, **kwargs):  # the other worker creates the group just before us
        store = kwargs.get("store", args[0] if args else None)
        if not raced:
            raced.append(str(store))
            real_open_group(store=store, mode="a", zarr_format=3)
            raise zarr.errors.ContainsGroupError(f"A group exists in store {store!r} at path ''.")
        return real_open_group(*args, **kwargs)

    monkeypatch.setattr(zarr, "open_group", other_worker_first)
    write_transform(out, "pair-1", M, attrs={"transform": "affine"})
    monkeypatch.undo()
    assert raced and read_transform(out, "pair-1")[0].tolist() == M.tolist()
