"""Readers and writers on an object store: s3:// URLs served by a local moto S3 server.

The same files are read locally and through S3 and must give the same pixels; remote reads
fetch only the byte ranges / chunks they need; outputs written to s3:// reopen, and an
interrupted remote write (no rename exists there) is never reported complete.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import dask.array as da
import numpy as np
import pytest
import s3fs
from _io_support import slide, write_pyramid_tiff
from _s3_support import S3, moto_s3
from PIL import Image

from drmime_batch.errors import ImageNotFoundError, IncompleteOutputError, UnsupportedFormatError
from drmime_batch.io import (
    open_image,
    pair_is_complete,
    read_transform,
    warp,
    write_qc,
    write_registered,
    write_transform,
)
from drmime_batch.io._fs import stamp
from drmime_batch.io._omezarr import write_ome_zarr

M = np.array([[1.0, 0.02, 5.0], [-0.02, 1.0, 3.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with moto_s3() as server:
        yield server


@pytest.fixture(scope="module")
def big_rgb() -> np.ndarray:
    return slide(1024, 1536, 3, seed=3)


@pytest.fixture(scope="module")
def tiff_pair(tmp_path_factory: pytest.TempPathFactory, s3: S3, big_rgb: np.ndarray) -> tuple[Path, str]:
    """A 3-level tiled OME-TIFF, locally and in the bucket."""
    local = tmp_path_factory.mktemp("s3tiff") / "slide.ome.tif"
    write_pyramid_tiff(local, big_rgb, levels=3, tile=128)
    return local, s3.upload(local, "slides/slide.ome.tif")


@pytest.fixture(scope="module")
def small_tiff(s3: S3, ome_tiff: Path) -> tuple[Path, str]:
    """The IO tests' small 300 x 420 RGB OME-TIFF, locally and in the bucket (for the writers)."""
    return ome_tiff, s3.upload(ome_tiff, "slides/small.ome.tif")


class _Fetches:
    """Byte ranges fetched by every S3 file handle opened from now on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ranges: list[tuple[int, int]] = []
        real = s3fs.core.S3File._fetch_range

        def counting(handle: Any, start: int, end: int) -> bytes:
            self.ranges.append((start, end))
            return real(handle, start, end)

        monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting)

    @property
    def nbytes(self) -> int:
        return sum(e - s for s, e in self.ranges)


# ------------------------------------------------------------------------------------------- reading


def test_tiff_url_same_pixels_and_lazy(s3: S3, tiff_pair: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    local, url = tiff_pair
    size = local.stat().st_size
    fetches = _Fetches(monkeypatch)
    img = open_image(url)
    assert img.path == url and isinstance(img.path, str) and img.name == "slide.ome.tif"
    ref = open_image(local)
    assert img.shape == ref.shape and img.n_file_levels == ref.n_file_levels == 3
    assert img.pixel_size == ref.pixel_size and img.metadata["format"] == "ome-tiff"
    header = fetches.nbytes
    assert header < size // 4, f"opening fetched {header} of {size} bytes"

    k = img.level_for(400)  # the coarsest file level (256 x 384)
    assert k == 2
    np.testing.assert_array_equal(img.read_level(k), ref.read_level(k))
    coarse = fetches.nbytes
    assert coarse < size // 3, f"reading level 2 fetched {coarse} of {size} bytes"
    window = img.levels[0][512:640, 768:896].compute()  # one 128-pixel tile of level 0
    np.testing.assert_array_equal(window, ref.levels[0][512:640, 768:896].compute())
    assert fetches.nbytes - coarse < size // 4, "a level-0 tile fetched a large part of the file"
    np.testing.assert_array_equal(img.read_level(0), ref.read_level(0))  # and everything agrees


def test_ome_zarr_url_same_pixels_and_lazy(
    s3: S3, tmp_path: Path, big_rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zarr.storage import FsspecStore

    local = tmp_path / "slide.ome.zarr"
    write_ome_zarr(local, da.from_array(big_rgb, chunks=512), name="s", pixel_size=(0.5, 0.5), shard=256, chunk=128)
    url = s3.upload(local, "slides/slide.ome.zarr")
    keys: list[str] = []
    real = FsspecStore.get

    async def counting(self: FsspecStore, key: str, *args: Any, **kwargs: Any) -> Any:
        keys.append(key)
        return await real(self, key, *args, **kwargs)

    monkeypatch.setattr(FsspecStore, "get", counting)
    img, ref = open_image(url), open_image(local)
    assert img.metadata["format"] == "ome-zarr" and img.pixel_size == (0.5, 0.5)
    assert [lvl.shape for lvl in img.levels] == [lvl.shape for lvl in ref.levels]
    k = img.level_for(600)
    assert 0 < k < img.n_file_levels
    np.testing.assert_array_equal(img.read_level(k), ref.read_level(k))
    chunk_keys = [key for key in keys if "/c/" in key]
    assert chunk_keys, "the counter must see the chunk reads"
    assert not [key for key in chunk_keys if key.startswith("0/")], "a full-resolution chunk was read"
    np.testing.assert_array_equal(img.read_level(0), ref.read_level(0))
    assert url in repr(img.source(0).__dask_tokenize__())
    # the token carries the root metadata's stamp (not the NGFF version, "0.5")
    assert img.source(0).stamp == stamp(f"{url}/zarr.json")


def test_png_missing_and_non_image_urls(s3: S3, tmp_path: Path) -> None:
    png = tmp_path / "small.png"
    Image.fromarray(slide(90, 120, 3)).save(png)
    img = open_image(s3.upload(png, "slides/small.png"))
    np.testing.assert_array_equal(img.read_level(0), np.asarray(Image.open(png)))
    assert open_image(f"file://{png}").path == png  # file:// is a local path

    missing = s3.url("slides/nope.svs")
    with pytest.raises(ImageNotFoundError, match=r"^image not found: s3://drmime-[0-9a-f]+/slides/nope\.svs \("):
        open_image(missing)
    s3.fs.pipe_file(f"{s3.bucket}/other/readme.txt", b"hello")
    with pytest.raises(UnsupportedFormatError, match="a directory but not a zarr store"):
        open_image(s3.url("other"))

    from drmime_batch.evaluation import read_landmarks

    s3.fs.pipe_file(f"{s3.bucket}/lm/a.csv", b",X,Y\n0,10.5,20\n1,3,4\n")
    np.testing.assert_array_equal(read_landmarks(s3.url("lm/a.csv")), [[10.5, 20.0], [3.0, 4.0]])


# ------------------------------------------------------------------------------------------- writing


def test_outputs_written_to_s3_reopen(s3: S3, tmp_path: Path, small_tiff: tuple[Path, str]) -> None:
    local_tif, url_tif = small_tiff
    out = s3.url("runs/out.zarr/")  # a trailing slash is dropped, the double slash kept
    moving = open_image(url_tif)
    write_transform(out, "p1", M, attrs={"transform": "affine"}, fixed_pixel_size=(0.5, 0.5),
                    moving_pixel_size=(0.5, 0.5))
    assert pair_is_complete(out, "p1", warp=False) and not pair_is_complete(out, "p1")
    matrix, attrs = read_transform(out, "p1")
    np.testing.assert_array_equal(matrix, M)
    assert attrs["transform"] == "affine" and attrs["units"] == "pixel" and "matrix_um" in attrs

    data = warp(moving, M, like=moving, chunks=128)
    write_registered(out, "p1", data, pixel_size=(0.5, 0.5))
    qc = write_qc(out, "p1", moving, moving, M)
    assert qc == s3.url("runs/out.zarr/p1/qc.png")
    assert pair_is_complete(out, "p1")
    keys = s3.keys("runs/out.zarr/p1")
    assert "runs/out.zarr/p1/registered/zarr.json" in keys and "runs/out.zarr/p1/qc.png" in keys
    assert not [k for k in keys if "/.drmime" in k]
    with Image.open(io.BytesIO(s3.fs.cat_file(f"{s3.bucket}/runs/out.zarr/p1/qc.png"))) as im:
        assert im.mode == "RGB" and im.width > 2 * 420 * 0.9

    # the registered image reopens from the bucket and equals the same write on local disk
    local_out = tmp_path / "out.zarr"
    write_transform(local_out, "p1", M, attrs={})
    local_img = open_image(local_tif)
    write_registered(local_out, "p1", warp(local_img, M, like=local_img, chunks=128), pixel_size=(0.5, 0.5))
    base = s3.url("runs/out.zarr")
    remote_reg, local_reg = open_image(f"{base}/p1/registered"), open_image(local_out / "p1" / "registered")
    assert remote_reg.metadata["format"] == "ome-zarr" and remote_reg.pixel_size == (0.5, 0.5)
    np.testing.assert_array_equal(remote_reg.read_level(0), local_reg.read_level(0))
    marker = json.loads(s3.fs.cat_file(f"{s3.bucket}/runs/out.zarr/p1/zarr.json"))["attributes"]["drmime_batch"]
    assert marker["registered"]["path"] == "registered"

    # the OME-TIFF form replaces the OME-Zarr one; it is uploaded whole
    write_registered(out, "p1", data, pixel_size=(0.5, 0.5), format="ome-tiff")
    assert pair_is_complete(out, "p1")
    keys = s3.keys("runs/out.zarr/p1")
    assert "runs/out.zarr/p1/registered.ome.tif" in keys and not [k for k in keys if "/registered/" in k]
    assert not [k for k in keys if "/.drmime" in k]
    tif = open_image(f"{base}/p1/registered.ome.tif")
    assert tif.metadata["format"] == "ome-tiff" and tif.pixel_size == (0.5, 0.5)
    diff = np.abs(tif.read_level(0).astype(float) - local_reg.read_level(0))
    assert diff.mean() < 4.0  # RGB OME-TIFF tiles are JPEG
    s3.fs.pipe_file(f"{s3.bucket}/runs/out.zarr/p1/registered.ome.tif", b"II*\x00 replaced")
    assert not pair_is_complete(out, "p1")  # another object in its place is not the one recorded


class Boom(RuntimeError):
    pass


def _exploding(data: da.Array, at_block: tuple[int, ...]) -> da.Array:
    def fn(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info is not None and tuple(block_info[0]["chunk-location"]) == at_block:
            raise Boom("injected failure mid-write")
        return block

    return data.map_blocks(fn, dtype=data.dtype)


def test_interrupted_remote_writes_are_never_complete(
    s3: S3, small_tiff: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from drmime_batch.io import _writers

    out = s3.url("interrupted.zarr")
    moving = open_image(small_tiff[1])
    write_transform(out, "p", M, attrs={})
    data = warp(moving, M, like=moving, chunks=64)
    with pytest.raises(Boom, match="injected"):
        write_registered(out, "p", _exploding(data, (2, 3, 0)))
    assert not pair_is_complete(out, "p") and pair_is_complete(out, "p", warp=False)
    # the partial image is deleted on the way out (a chunk task still in flight may land after
    # that, but never the metadata that would make it an image)
    assert "interrupted.zarr/p/registered/zarr.json" not in s3.keys("interrupted.zarr/p")
    # a previously complete pair whose retry dies keeps no half-new image either
    write_registered(out, "p", data)
    assert pair_is_complete(out, "p")
    with pytest.raises(Boom):
        write_registered(out, "p", _exploding(data, (0, 0, 0)))
    assert not pair_is_complete(out, "p")

    # killed after the last chunk, before the marker: the image is all there but not trusted
    real = _writers._write_marker

    def dies_on_final_marker(pair_dir: Any, marker: dict) -> None:
        if "registered" in marker:
            raise KeyboardInterrupt
        real(pair_dir, marker)

    with monkeypatch.context() as m:
        m.setattr(_writers, "_write_marker", dies_on_final_marker)
        with pytest.raises(KeyboardInterrupt):
            write_registered(out, "p", data)
    assert "interrupted.zarr/p/registered/zarr.json" in s3.keys("interrupted.zarr/p")
    assert not pair_is_complete(out, "p")

    # a transform write that dies leaves no complete transform (and read_transform says so)
    def fail(*args: object, **kwargs: object) -> None:
        raise Boom("connection reset")

    with monkeypatch.context() as m:
        m.setattr(_writers, "replace_path", fail)
        with pytest.raises(Boom):
            write_transform(out, "p", np.eye(3), attrs={})
    assert not pair_is_complete(out, "p", warp=False)
    with pytest.raises(IncompleteOutputError, match="no complete transform"):
        read_transform(out, "p")


def test_remote_retry_clears_old_outputs(s3: S3, small_tiff: tuple[Path, str]) -> None:
    out = s3.url("retry.zarr")
    img = open_image(small_tiff[1])
    write_transform(out, "p", M, attrs={})
    write_registered(out, "p", warp(img, M, like=img))
    write_qc(out, "p", img, img, M)
    assert pair_is_complete(out, "p")
    write_transform(out, "p", np.eye(3), attrs={})
    assert pair_is_complete(out, "p", warp=False) and not pair_is_complete(out, "p")
    keys = s3.keys("retry.zarr/p")
    assert not [k for k in keys if "/registered" in k or k.endswith("qc.png")], keys
    np.testing.assert_array_equal(read_transform(out, "p")[0], np.eye(3))



def test_refused_access_is_one_line_naming_the_url(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drmime_batch.errors import StorageAccessError

    png = tmp_path / "small.png"
    Image.fromarray(slide(40, 50, 3)).save(png)
    url = s3.upload(png, "slides/small.png")
    # no credentials anywhere (variables, files, instance metadata): botocore refuses to sign
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StorageAccessError) as info:
        open_image(url)
    message = str(info.value)
    assert message.startswith(f"{url}: the object store refused access: ") and "\n" not in message
