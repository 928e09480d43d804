"""The OME-Zarr writer's integer pyramid path gives exactly the pixels of ``downsample2``."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from drmime_batch.io._multiscale import downsample2
from drmime_batch.io._omezarr import _halve, _to_cyx, write_ome_zarr


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.uint32])
@pytest.mark.parametrize(("shape", "chunks"), [((67, 91, 3), (33, 45, 3)), ((64, 80), (32, 40)), ((9, 7), (9, 7))])
def test_integer_halving_matches_downsample2(dtype: type, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(3)
    data = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    data.flat[:8] = info.max  # the extremes must not overflow
    data.flat[8:16] = info.min
    arr = da.from_array(data, chunks=chunks)
    got = _halve(_to_cyx(arr), labels=False)  # the writer halves (c, y, x) planes
    want = _to_cyx(downsample2(arr, labels=False))
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.compute(), want.compute())


def test_pyramid_levels_match_downsample2_of_the_level_above(tmp_path: Path) -> None:
    import zarr

    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (700, 1100, 3), dtype=np.uint8)
    shapes = write_ome_zarr(tmp_path / "p.zarr", da.from_array(data, chunks=256), name="p", shard=256, chunk=128,
                            min_side=200)  # fmt: skip
    assert len(shapes) == 4
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    above = data
    for i in range(1, len(shapes)):
        level = np.moveaxis(np.asarray(group[str(i)][...]), 0, 2)
        np.testing.assert_array_equal(level, downsample2(da.from_array(above), labels=False).compute())
        above = level


@pytest.mark.parametrize(("dtype", "labels"), [(np.float32, False), (np.uint16, True), (np.int8, False)])
def test_every_level_is_downsample2_of_the_level_above(tmp_path: Path, dtype: type, labels: bool) -> None:
    import zarr

    rng = np.random.default_rng(5)
    data = (rng.normal(0, 50, (301, 517)) if dtype is np.float32 else rng.integers(-100, 100, (301, 517))).astype(dtype)
    data = np.abs(data) if dtype is np.uint16 else data
    write_ome_zarr(tmp_path / "p.zarr", da.from_array(data, chunks=(70, 90)), name="p", shard=128, chunk=64,
                   min_side=40, labels=labels)  # fmt: skip
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    above = data
    for i in range(1, len(list(group.array_keys()))):
        level = np.asarray(group[str(i)][...])
        np.testing.assert_array_equal(level, downsample2(da.from_array(above), labels=labels).compute())
        above = level
    assert above.shape == (301 // 16, 517 // 16)


@pytest.mark.parametrize(("shape", "chunk"), [((2, 300, 420), 128), ((333, 290), 64)])
def test_ome_tiff_export_keeps_every_level_exactly(tmp_path: Path, shape: tuple[int, ...], chunk: int) -> None:
    import tifffile
    import zarr

    from drmime_batch.io._omezarr import write_ome_tiff

    rng = np.random.default_rng(6)
    data = rng.integers(0, 60000, shape, dtype=np.uint16)  # zlib tiles: lossless
    yxc = np.moveaxis(data, 0, 2) if data.ndim == 3 else data
    write_ome_zarr(tmp_path / "p.zarr", da.from_array(yxc, chunks=100), name="p", shard=chunk * 2, chunk=chunk,
                   min_side=60)  # fmt: skip
    write_ome_tiff(tmp_path / "p.ome.tif", tmp_path / "p.zarr", tile=48 if chunk == 64 else 64)
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    with tifffile.TiffFile(tmp_path / "p.ome.tif") as tif:
        levels = tif.series[0].levels
        assert len(levels) == len(list(group.array_keys())) >= 3
        for i, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), np.asarray(group[str(i)][...]))


def test_all_zero_shards_are_not_stored(tmp_path: Path) -> None:
    import zarr

    data = np.full((300, 400), 9, dtype=np.uint8)
    data[:128, :128] = 0  # exactly shard (0, 0) of level 0
    write_ome_zarr(tmp_path / "p.zarr", da.from_array(data, chunks=100), name="p", shard=128, chunk=64, min_side=100)
    chunk_dir = tmp_path / "p.zarr" / "0" / "c"
    assert not (chunk_dir / "0" / "0").exists() and (chunk_dir / "0" / "1").exists()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr" / "0"), mode="r")[...], data)
