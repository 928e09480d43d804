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
