"""The image sizes a transform was computed on: recorded, read back, checked when a slide is warped.

A slide whose full-resolution size differs from the recorded moving image (fixed, with
``--inverse``) is warped with a one-line warning, or refused with ``strict`` / ``--strict``;
stores written without the sizes (older releases) are warped as before, without a check.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from _apply_support import AFFINE, FIXED_SHAPE, FIXED_UM, MOVING_SHAPE, MOVING_UM, Store, cli, texture, write_ome_tiff

from drmime_batch.errors import ConfigError, DrmimeWarning, InputImageError
from drmime_batch.io import open_image, read_transform, write_transform
from drmime_batch.transforms import open_transform


@pytest.fixture(scope="module")
def shaped(store: Store, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An output store whose entry ``shaped`` records both images' sizes (as the engine writes it),
    and a moving slide at half the size (a lower pyramid level, pixel size doubled)."""
    root = tmp_path_factory.mktemp("shaped")
    out = root / "out.zarr"
    write_transform(out, "shaped", AFFINE, attrs={"fixed": str(store.fixed), "moving": str(store.moving)},
                    fixed_pixel_size=FIXED_UM, moving_pixel_size=MOVING_UM,
                    fixed_shape=(*FIXED_SHAPE, 3), moving_shape=(*MOVING_SHAPE, 3))
    half = write_ome_tiff(root / "moving-level1.ome.tif", texture(MOVING_SHAPE[0] // 2, MOVING_SHAPE[1] // 2, seed=2),
                          (MOVING_UM[0] * 2, MOVING_UM[1] * 2))
    return out, half


def test_the_sizes_are_recorded_and_read_back(shaped: tuple[Path, Path], tmp_path: Path) -> None:
    out, _ = shaped
    _, attrs = read_transform(out, "shaped")
    assert attrs["fixed_shape"] == [*FIXED_SHAPE, 3] and attrs["moving_shape"] == [*MOVING_SHAPE, 3]
    assert attrs["fixed_pixel_size_um"] == list(FIXED_UM) and attrs["moving_pixel_size_um"] == list(MOVING_UM)
    t = open_transform(out, "shaped")
    assert t.recorded_shape("fixed") == (*FIXED_SHAPE, 3) and t.recorded_shape("moving") == (*MOVING_SHAPE, 3)
    # one pixel size known: recorded alone, no micrometre matrix
    write_transform(tmp_path / "o.zarr", "p", np.eye(3), attrs={}, moving_pixel_size=(0.5, 0.5))
    _, one = read_transform(tmp_path / "o.zarr", "p")
    assert one["moving_pixel_size_um"] == [0.5, 0.5] and "fixed_pixel_size_um" not in one and "matrix_um" not in one
    assert one["fixed_shape"] is None and one["moving_shape"] is None
    assert open_transform(tmp_path / "o.zarr", "p").recorded_shape("moving") is None
    with pytest.raises(ConfigError, match=r"moving_shape must be \(H, W\) or \(H, W, C\).*\(0, 5\)"):
        write_transform(tmp_path / "o.zarr", "q", np.eye(3), attrs={}, moving_shape=(0, 5))


def test_the_slide_the_transform_was_computed_on_warps_without_a_warning(
    store: Store, shaped: tuple[Path, Path], tmp_path: Path
) -> None:
    out, _ = shaped
    with warnings.catch_warnings():
        warnings.simplefilter("error", DrmimeWarning)
        written = open_transform(out, "shaped").warp_slide(store.moving, tmp_path / "a.ome.zarr", strict=True)
        back = open_transform(out, "shaped").warp_slide(store.fixed, tmp_path / "b.ome.zarr", inverse=True,
                                                       strict=True)
    assert open_image(written).shape[:2] == FIXED_SHAPE and open_image(back).shape[:2] == MOVING_SHAPE


def test_a_slide_of_another_size_warns_in_one_line_and_is_still_warped(
    store: Store, shaped: tuple[Path, Path], tmp_path: Path
) -> None:
    out, half = shaped
    t = open_transform(out, "shaped")
    with pytest.warns(DrmimeWarning) as caught:
        written = t.warp_slide(half, tmp_path / "half-on-fixed.ome.zarr")
    (w,) = [w for w in caught if issubclass(w.category, DrmimeWarning)]
    msg = str(w.message)
    assert "\n" not in msg and str(half) in msg and "'shaped'" in msg
    assert f"{MOVING_SHAPE[0] // 2}x{MOVING_SHAPE[1] // 2} pixels" in msg
    assert f"the moving image {store.moving} of {MOVING_SHAPE[0]}x{MOVING_SHAPE[1]}" in msg
    assert "about 2x smaller: another pyramid level?" in msg and "0.5 µm, that image's 0.25 µm" in msg
    assert open_image(written).shape[:2] == FIXED_SHAPE  # warned, not refused
    # --inverse compares with the fixed image: the moving slide is not its size
    with pytest.warns(DrmimeWarning, match=rf"computed on the fixed image .* of {FIXED_SHAPE[0]}x{FIXED_SHAPE[1]}"):
        t.warp_slide(store.moving, tmp_path / "moving-as-fixed.ome.zarr", inverse=True)


def test_strict_refuses_a_slide_of_another_size_and_writes_nothing(shaped: tuple[Path, Path], tmp_path: Path) -> None:
    out, half = shaped
    with pytest.raises(InputImageError, match=r"is 210x250 pixels .* computed on the moving image"):
        open_transform(out, "shaped").warp_slide(half, tmp_path / "x.ome.zarr", strict=True)
    assert not (tmp_path / "x.ome.zarr").exists()


def test_the_command_line_warns_or_with_strict_refuses(shaped: tuple[Path, Path], tmp_path: Path) -> None:
    out, half = shaped
    proc = cli("apply", "slide", out, "shaped", half, "--out", tmp_path / "w.ome.zarr")
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("drmime-batch apply: warning: slide ")
    assert "another pyramid level?" in err and (tmp_path / "w.ome.zarr").exists()
    proc = cli("apply", "slide", out, "shaped", half, "--out", tmp_path / "s.ome.zarr", "--strict", check=1)
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "is 210x250 pixels" in err and "warning" not in err
    assert not (tmp_path / "s.ome.zarr").exists()


def test_a_store_without_recorded_sizes_warps_as_before(store: Store, shaped: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    """A transform written by an earlier release: no ``fixed_shape`` / ``moving_shape`` keys at all."""
    _, half = shaped
    out = tmp_path / "old.zarr"
    write_transform(out, "old", AFFINE, attrs={"fixed": str(store.fixed), "moving": str(store.moving)},
                    fixed_pixel_size=FIXED_UM, moving_pixel_size=MOVING_UM)
    meta = out / "old" / "transform" / "zarr.json"
    doc = json.loads(meta.read_text())
    for key in ("fixed_shape", "moving_shape"):
        del doc["attributes"][key]
    meta.write_text(json.dumps(doc))
    t = open_transform(out, "old")
    assert "moving_shape" not in t.attrs and t.recorded_shape("moving") is None
    assert t.image_shape("fixed")[:2] == FIXED_SHAPE  # from the recorded file, as before
    with warnings.catch_warnings():
        warnings.simplefilter("error", DrmimeWarning)
        written = t.warp_slide(half, tmp_path / "old.ome.zarr", strict=True)  # nothing to check against
    assert open_image(written).shape[:2] == FIXED_SHAPE
    proc = cli("apply", "slide", out, "old", half, "--out", tmp_path / "old-cli.ome.zarr", "--strict")
    assert proc.stderr.strip() == "" and (tmp_path / "old-cli.ome.zarr").exists()
