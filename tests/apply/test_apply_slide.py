"""Slides through a stored transform: OME-TIFF and OME-Zarr read back, labels kept, atomic writes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from _apply_support import AFFINE, FIXED_SHAPE, FIXED_UM, MOVING_SHAPE, MOVING_UM, Store, labels, write_ome_tiff

from drmime_batch.errors import ConfigError, DrmimeError, ImageNotFoundError, IncompleteOutputError
from drmime_batch.io import open_image
from drmime_batch.transforms import open_transform

LABEL_VALUES = {0, 3, 700, 65000}


def reference(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """``out[i, j] = image(matrix @ (j, i, 1))`` by scipy (zeros outside), independent of the warp."""
    from scipy import ndimage

    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    xs = matrix[0, 0] * xx + matrix[0, 1] * yy + matrix[0, 2]
    ys = matrix[1, 0] * xx + matrix[1, 1] * yy + matrix[1, 2]
    if order == 0:
        xs, ys = np.floor(xs + 0.5), np.floor(ys + 0.5)
    planes = image[..., None] if image.ndim == 2 else image
    out = np.stack([ndimage.map_coordinates(planes[..., c].astype(np.float64), [ys, xs], order=order,
                                            mode="grid-constant", cval=0.0, prefilter=False)
                    for c in range(planes.shape[2])], axis=-1)  # fmt: skip
    out = np.clip(np.floor(out + 0.5), 0, np.iinfo(image.dtype).max).astype(image.dtype)
    return out[..., 0] if image.ndim == 2 else out


def ome_physical_size(tif: object) -> tuple[float, float]:
    xml = tif.ome_metadata  # type: ignore[attr-defined]
    px = float(re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', xml).group(1))  # type: ignore[union-attr]
    py = float(re.search(r'PhysicalSizeY="([0-9.eE+-]+)"', xml).group(1))  # type: ignore[union-attr]
    return px, py


def test_moving_stain_to_ome_tiff_on_the_fixed_grid(store: Store, tmp_path: Path) -> None:
    import tifffile

    t = open_transform(store.out, "affine")
    out = t.warp_slide(store.moving, tmp_path / "stain-on-fixed.ome.tif")
    assert out == tmp_path / "stain-on-fixed.ome.tif"
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        page = tif.pages[0]
        assert page.is_tiled and page.compression != tifffile.COMPRESSION.NONE
        assert ome_physical_size(tif) == pytest.approx(FIXED_UM)
        got = tif.series[0].levels[0].asarray()
    assert got.shape == (*FIXED_SHAPE, 3)
    want = reference(store.moving_image, AFFINE, FIXED_SHAPE, order=1)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 2.5 and np.percentile(diff, 99) < 12  # JPEG tiles (lossy) for RGB


def test_pyramid_levels_of_the_ome_tiff(store: Store, tmp_path: Path) -> None:
    import tifffile

    t = open_transform(store.out, "affine")
    out = t.warp_slide(store.moving, tmp_path / "big.ome.tif", like=(700, 900))
    with tifffile.TiffFile(out) as tif:
        shapes = [level.shape for level in tif.series[0].levels]
        assert ome_physical_size(tif) == pytest.approx(FIXED_UM)
    assert shapes == [(700, 900, 3), (350, 450, 3)]


def test_fixed_slide_to_ome_zarr_on_the_moving_grid_with_inverse(store: Store, tmp_path: Path) -> None:
    t = open_transform(store.out, "affine")
    out = t.warp_slide(store.fixed, tmp_path / "fixed-on-moving.ome.zarr", inverse=True)
    image = open_image(out)
    assert image.shape == (*MOVING_SHAPE, 3)
    assert image.pixel_size == pytest.approx(MOVING_UM)
    got = np.asarray(image.levels[0])
    want = reference(store.fixed_image, np.linalg.inv(AFFINE), MOVING_SHAPE, order=1)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # zstd is lossless: rounding only
    assert (got > 0).mean() > 0.3  # the fixed image covers a good part of the moving grid


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tif"])
def test_nearest_keeps_label_values(store: Store, tmp_path: Path, suffix: str) -> None:
    import tifffile

    lab = labels(*MOVING_SHAPE)
    src = write_ome_tiff(tmp_path / "labels.ome.tif", lab, MOVING_UM)
    t = open_transform(store.out, "affine")
    out = t.warp_slide(src, tmp_path / f"labels-on-fixed{suffix}", order="nearest", like=(700, 900))
    if suffix == ".ome.zarr":
        levels = [np.asarray(level) for level in open_image(out).levels[:2]]
    else:
        with tifffile.TiffFile(out) as tif:
            levels = [level.asarray() for level in tif.series[0].levels]
    assert len(levels) == 2 and levels[0].dtype == np.uint16
    for level in levels:
        assert set(np.unique(level).tolist()) <= LABEL_VALUES
    np.testing.assert_array_equal(levels[0], reference(lab, AFFINE, (700, 900), order=0))


def test_an_entry_without_recorded_images_needs_like(store: Store, tmp_path: Path) -> None:
    t = open_transform(store.out, "bare")
    with pytest.raises(IncompleteOutputError, match=r"fixed frame of 'bare' .* has no known size") as info:
        t.warp_slide(store.moving, tmp_path / "o.ome.zarr")
    assert "\n" not in str(info.value)
    out = t.warp_slide(store.moving, tmp_path / "o.ome.zarr", like=store.fixed)
    image = open_image(out)
    assert image.shape == (*FIXED_SHAPE, 3) and image.pixel_size == pytest.approx(FIXED_UM)


def test_an_interrupted_write_leaves_nothing_under_the_final_name(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import drmime_batch.io._omezarr as omezarr

    t = open_transform(store.out, "affine")
    done = t.warp_slide(store.moving, tmp_path / "keep.ome.tif")
    before = done.read_bytes()

    def dies(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(omezarr, "write_ome_tiff", dies)
    with pytest.raises(KeyboardInterrupt):
        t.warp_slide(store.moving, tmp_path / "new.ome.tif")
    with pytest.raises(KeyboardInterrupt):
        t.warp_slide(store.moving, tmp_path / "keep.ome.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.ome.tif"]  # no partial, no hidden leftover
    assert done.read_bytes() == before  # the earlier output is untouched


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda d: d / "none.tif", ImageNotFoundError, r"none\.tif"),
        (lambda d: (d / "junk.tif").write_bytes(b"II*\x00" + b"\x00" * 20) and d / "junk.tif", DrmimeError, r"junk\.tif"),
        (lambda d: (d / "text.png").write_text("not an image") and d / "text.png", DrmimeError, r"text\.png"),
    ],
)  # fmt: skip
def test_unreadable_slides_are_one_line(store: Store, tmp_path: Path, make, error, match) -> None:  # type: ignore[no-untyped-def]
    slide = make(tmp_path)
    with pytest.raises(error, match=match) as info:
        open_transform(store.out, "affine").warp_slide(slide, tmp_path / "o.ome.zarr")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o.ome.zarr").exists()


def test_bad_output_names(store: Store, tmp_path: Path) -> None:
    t = open_transform(store.out, "affine")
    with pytest.raises(ConfigError, match=r"o\.png: unknown format"):
        t.warp_slide(store.moving, tmp_path / "o.png")
    zarr_slide = t.warp_slide(store.moving, tmp_path / "a.ome.zarr")
    with pytest.raises(ConfigError, match="is the slide being warped"):
        t.warp_slide(zarr_slide, zarr_slide)
    with pytest.raises(ConfigError, match="order must be 'linear' or 'nearest'"):
        t.warp_slide(store.moving, tmp_path / "b.ome.zarr", order="cubic")
