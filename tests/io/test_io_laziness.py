"""Opening a large slide and reading its registration level reads no full-resolution chunk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest

from drmime_batch.io import open_image
from drmime_batch.io._omezarr import write_ome_zarr

H, W, TILE = 4096, 6144, 256


def _tiles(h: int, w: int, value: int) -> Any:
    tile = np.full((TILE, TILE, 3), value, np.uint8)
    tile[::16] = 255 - value
    for _ in range(-(-h // TILE) * -(-w // TILE)):
        yield tile


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tifffile

    path = tmp_path_factory.mktemp("big") / "big.ome.tif"
    shapes = [(H, W), (H // 4, W // 4), (H // 16, W // 16)]
    opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "zlib", "compressionargs": {"level": 1}}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(_tiles(H, W, 40), shape=(H, W, 3), dtype=np.uint8, subifds=2, metadata={"axes": "YXS"}, **opts)
        for h, w in shapes[1:]:
            tw.write(_tiles(h, w, 80), shape=(h, w, 3), dtype=np.uint8, subfiletype=1, metadata=None, **opts)
    return path


def test_tiff_level_choice_reads_no_level0_tile(big_tiff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tifffile.zarr import ZarrTiffStore

    keys: list[str] = []
    real = ZarrTiffStore.get

    async def counting(self: ZarrTiffStore, key: str, *args: Any, **kwargs: Any) -> Any:
        keys.append(key)
        return await real(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting)
    img = open_image(big_tiff)
    k = img.level_for(2048)
    assert k == 1 and img.levels[1].shape == (H // 4, W // 4, 3)
    arr = img.read_level(k)
    assert arr.shape == (1024, 1536, 3) and arr[1, 1, 0] == 80
    small = img.level_for(100)  # built from the coarsest file level
    img.read_level(small)
    chunk_keys = [key for key in keys if not key.endswith((".zarray", ".zattrs", ".zgroup", "zarr.json"))]
    assert chunk_keys, "the counter must see the level reads"
    assert not [key for key in chunk_keys if key.startswith("0/")], "a full-resolution tile was read"
    img.levels[0][:10, :10].compute()  # sanity: the counter does see level 0 reads
    assert any(key.startswith("0/") for key in keys)


def test_ome_zarr_level_choice_reads_no_level0_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zarr.storage import LocalStore

    data = da.full((H, W, 3), 7, dtype=np.uint8, chunks=(2048, 2048, 3))
    write_ome_zarr(tmp_path / "big.zarr", data, name="big", min_side=1024)
    keys: list[str] = []
    real = LocalStore.get

    async def counting(self: LocalStore, key: str, *args: Any, **kwargs: Any) -> Any:
        keys.append(key)
        return await real(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting)
    img = open_image(tmp_path / "big.zarr")
    k = img.level_for(2048)
    assert k == 2 and img.n_file_levels == 4
    assert img.read_level(k).shape == (1024, 1536, 3)
    assert any(key.startswith(f"{k}/c") for key in keys), "the counter must see the level reads"
    level0 = [key for key in keys if key.startswith("0/c")]
    assert level0 == [], f"full-resolution chunks read: {level0[:5]}"
