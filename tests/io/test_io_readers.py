"""open_image on every supported layout: shapes, levels, downsamples, pixel sizes, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import zarr
from _io_support import DATA, write_pyramid_tiff

from drmime_batch.errors import CorruptImageError, ImageNotFoundError, UnsupportedFormatError
from drmime_batch.io import MultiscaleImage, open_image
from drmime_batch.io._omezarr import ngff_multiscale_attrs

EXAMPLES = Path(__file__).resolve().parents[2] / "drmime_batch" / "examples" / "cima-lung-lesion3" / "images"


def test_ome_tiff_rgb_pyramid(ome_tiff: Path, rgb_slide: np.ndarray) -> None:
    img = open_image(ome_tiff)
    assert img.shape == (300, 420, 3) and img.channels == 3 and img.dtype == np.uint8
    assert img.n_file_levels == 3
    assert [lvl.shape[:2] for lvl in img.levels[:3]] == [(300, 420), (150, 210), (75, 105)]
    assert img.downsamples[:3] == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
    assert img.pixel_size == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(img.read_level(0), rgb_slide)
    assert img.metadata["format"] == "ome-tiff"


@pytest.mark.parametrize("bigtiff", [False, True])
def test_grayscale_tiff_and_bigtiff(tmp_path: Path, gray_slide: np.ndarray, bigtiff: bool) -> None:
    path = tmp_path / "gray.tif"
    shapes = write_pyramid_tiff(path, gray_slide, levels=2, tile=32, ome=False, bigtiff=bigtiff, pixel_size=0.25)
    img = open_image(path)
    assert img.shape == gray_slide.shape and img.channels == 1 and img.levels[0].ndim == 2
    assert img.n_file_levels == 2 and img.levels[1].shape == shapes[1]
    assert img.pixel_size == pytest.approx((0.25, 0.25))  # from the resolution tags (cm)
    np.testing.assert_array_equal(img.read_level(1), np.asarray(img.levels[1]))
    np.testing.assert_array_equal(img.levels[0][100:140, 7:99].compute(), gray_slide[100:140, 7:99])


def test_openslide_fixtures() -> None:
    boxes = open_image(DATA / "openslide-fixtures" / "boxes.tiff")
    assert boxes.n_file_levels == 4
    assert [lvl.shape for lvl in boxes.levels] == [(250, 300, 3), (125, 150, 3), (62, 75, 3), (31, 37, 3)]
    assert boxes.downsamples[1] == (2.0, 2.0)
    assert boxes.pixel_size is None
    assert boxes.read_level(3).shape == (31, 37, 3)
    svs = open_image(DATA / "openslide-fixtures" / "small.svs")
    assert svs.metadata["format"] == "svs" and svs.shape == (16, 16, 3)
    assert svs.pixel_size == pytest.approx((0.499, 0.499))  # "MPP = 0.4990" in the Aperio header
    assert svs.read_level(0).mean() > 0


def test_lung_lesion_pyramids_match_jpeg_level0() -> None:
    img = open_image(DATA / "pyramidal-derived" / "lung-lesion3_He_5pc.ome.tif")
    assert [lvl.shape[:2] for lvl in img.levels[:3]] == [(661, 892), (330, 446), (165, 223)]
    assert img.pixel_size == pytest.approx((1.0, 1.0))
    jpg = open_image(EXAMPLES / "29-041-Izd2-w35-He-les3.jpg").read_level(0).astype(float)
    assert np.abs(img.read_level(0).astype(float) - jpg).mean() < 4  # re-encoded JPEG, same pixels


def test_level_for_builds_missing_levels(ome_tiff: Path) -> None:
    img = open_image(ome_tiff)
    assert img.level_for(420) == 0
    assert img.level_for(419) == 1
    assert img.level_for(105) == 2
    k = img.level_for(30)  # beyond the file's pyramid: built lazily
    assert k >= 3 and max(img.levels[k].shape[:2]) <= 30 and k >= img.n_file_levels
    built = img.read_level(3)
    lvl2 = img.read_level(2).astype(float)
    expect = (lvl2[0:74:2, 0:104:2] + lvl2[1:74:2, 0:104:2] + lvl2[0:74:2, 1:104:2] + lvl2[1:74:2, 1:104:2]) / 4
    np.testing.assert_allclose(built, np.floor(expect + 0.5), atol=0)
    with pytest.raises(ValueError, match="max_size must be a positive"):
        img.level_for(0)
    with pytest.raises(ValueError, match="not stored in the file"):
        img.source(k)


def test_png_jpeg_and_datatree(tmp_path: Path, gray_slide: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(gray_slide).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([gray_slide] * 3 + [np.full_like(gray_slide, 255)])).save(tmp_path / "rgba.png")
    g = open_image(tmp_path / "g.png")
    np.testing.assert_array_equal(g.read_level(0), gray_slide)
    rgba = open_image(tmp_path / "rgba.png")
    assert rgba.shape == (*gray_slide.shape, 3)  # alpha dropped
    jpg = open_image(EXAMPLES / "29-041-Izd2-w35-He-les3.jpg")
    tree = jpg.to_datatree()
    assert set(tree.children) == {str(i) for i in range(len(jpg.levels))}
    da0 = tree["0"]["image"]
    assert da0.dims == ("y", "x", "c") and da0.sizes == {"y": 661, "x": 892, "c": 3}
    assert float(tree["1"]["image"].x[0]) == pytest.approx(0.5)  # level-1 pixel 0 centre at full-res 0.5


def test_physical_datatree_coords(ome_tiff: Path) -> None:
    tree = open_image(ome_tiff).to_datatree()
    assert float(tree["2"]["image"].x[1]) == pytest.approx((4 * 1.5 - 0.5) * 0.5)
    assert tree["0"]["image"].x.attrs["units"] == "micrometer"


def _write_ngff(path: Path, data: np.ndarray, version: str, *, axes_cyx: bool) -> None:
    fmt = 3 if version == "0.5" else 2
    group = zarr.open_group(store=str(path), mode="w", zarr_format=fmt)
    levels = [data, data[..., ::2, ::2] if axes_cyx else data[::2, ::2]]
    for i, lvl in enumerate(levels):
        dims = {"dimension_names": ["c", "y", "x"][-lvl.ndim :]} if fmt == 3 else {}
        group.create_array(str(i), data=lvl, chunks=lvl.shape[:-2] + (64, 64), **dims)
    shapes = [lvl.shape for lvl in levels]
    attrs = ngff_multiscale_attrs("img", shapes, pixel_size=(0.25, 0.5), channels=data.shape[0] if axes_cyx else None, version=version)
    group.attrs.update(attrs)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_round_trip(tmp_path: Path, rgb_slide: np.ndarray, version: str) -> None:
    cyx = np.moveaxis(rgb_slide, 2, 0).copy()
    path = tmp_path / f"img{version}.zarr"
    _write_ngff(path, cyx, version, axes_cyx=True)
    img = open_image(path)
    assert img.metadata["ngff_version"] == version
    assert img.source(0).stamp == ()  # a local store's stamp is taken when a token is made
    assert img.shape == rgb_slide.shape and img.n_file_levels == 2
    assert img.pixel_size == pytest.approx((0.25, 0.5))  # (x, y), written as scale (c, y, x)
    np.testing.assert_array_equal(img.read_level(0), rgb_slide)
    np.testing.assert_array_equal(img.read_level(1), rgb_slide[::2, ::2])
    models = pytest.importorskip("ome_zarr_models")
    module = models.v05 if version == "0.5" else models.v04
    module.Image.from_zarr(zarr.open_group(store=str(path), mode="r"))  # validates the metadata


def test_plain_zarr_array_and_group(tmp_path: Path, gray_slide: np.ndarray) -> None:
    zarr.create_array(store=str(tmp_path / "a.zarr"), data=gray_slide, chunks=(64, 64))
    img = open_image(tmp_path / "a.zarr")
    assert img.shape == gray_slide.shape and img.n_file_levels == 1 and img.pixel_size is None
    np.testing.assert_array_equal(img.read_level(0), gray_slide)
    group = zarr.open_group(store=str(tmp_path / "g.zarr"), mode="w")
    group.create_array("full", data=gray_slide, chunks=(64, 64))
    group.create_array("half", data=gray_slide[::2, ::2], chunks=(64, 64))
    img = open_image(tmp_path / "g.zarr")
    assert img.n_file_levels == 2 and img.levels[1].shape == (130, 150)


def test_levels_pickle_by_path(ome_tiff: Path) -> None:
    img = open_image(ome_tiff)
    src = pickle.loads(pickle.dumps(img.source(1)))
    np.testing.assert_array_equal(src[10:20, 5:9], img.read_level(1)[10:20, 5:9])
    lvl = pickle.loads(pickle.dumps(img.levels[1]))
    np.testing.assert_array_equal(lvl.compute(), img.read_level(1))


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match=r"nope\.tif"):
        open_image(tmp_path / "nope.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedFormatError, match=r"notes\.txt"):
        open_image(tmp_path / "notes.txt")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 20)
    with pytest.raises(CorruptImageError, match=r"bad\.tif"):
        open_image(tmp_path / "bad.tif")
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    with pytest.raises(CorruptImageError, match=r"fake\.png"):
        open_image(tmp_path / "fake.png")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UnsupportedFormatError, match="empty_dir"):
        open_image(tmp_path / "empty_dir")


def test_truncated_tiff_fails_at_read_with_file_name(tmp_path: Path, ome_tiff: Path) -> None:
    data = ome_tiff.read_bytes()
    cut = tmp_path / "cut.ome.tif"
    # keep the headers (written first by tifffile? not always): cut the tile data in the middle
    cut.write_bytes(data[: len(data) // 2] + b"\x00" * (len(data) - len(data) // 2))
    try:
        img = open_image(cut)
    except CorruptImageError as exc:
        assert "cut.ome.tif" in str(exc)
        return
    with pytest.raises(CorruptImageError, match=r"cut\.ome\.tif"):
        img.read_level(0)


def test_from_array_repr() -> None:
    img = MultiscaleImage.from_array(np.zeros((40, 30, 3), np.uint8), pixel_size=(0.5, 0.5))
    assert "levels=1" in repr(img) and img.channels == 3
