"""Helpers of the apply/export tests: a small output store with known matrices, no registration run."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: fixed → moving, full-resolution pixels: a small rotation, a scale and a shift (moving at 2x)
AFFINE = np.array([[1.96, -0.12, 14.3], [0.09, 2.02, -9.6], [0.0, 0.0, 1.0]])
#: a mild homography (w stays well above 0 over the images)
HOMOGRAPHY = np.array([[1.01, 0.02, 3.0], [-0.01, 0.99, 2.0], [2e-5, -1e-5, 1.0]])
#: a mirror (x -> -x + W): reverses ring orientation
MIRROR = np.array([[-1.0, 0.0, 239.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

FIXED_SHAPE = (200, 240)  # H, W
MOVING_SHAPE = (420, 500)
FIXED_UM = (0.5, 0.5)
MOVING_UM = (0.25, 0.25)


def texture(h: int, w: int, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    """A smooth textured uint8 image (deterministic)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 30 * np.sin((xx + 2 * yy) / 29.0)
    if channels is None:
        return np.clip(base + rng.normal(0, 3, (h, w)), 0, 255).astype(np.uint8)
    planes = [np.roll(base, 7 * c, axis=1) + rng.normal(0, 3, (h, w)) for c in range(channels)]
    return np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)


def labels(h: int, w: int) -> np.ndarray:
    """A uint16 label image: blocks of a few far-apart values (averaging would invent new ones)."""
    values = np.array([0, 3, 700, 65000], dtype=np.uint16)
    yy, xx = np.mgrid[0:h, 0:w]
    return values[((yy // 37) + 2 * (xx // 53)) % 4]


def write_ome_tiff(path: Path, image: np.ndarray, pixel_size: tuple[float, float] | None) -> Path:
    """A tiled OME-TIFF of one level (tifffile), with its pixel size when given."""
    import tifffile

    rgb = image.ndim == 3
    meta: dict[str, Any] = {"axes": "YXS" if rgb else "YX"}
    if pixel_size is not None:
        meta.update(PhysicalSizeX=pixel_size[0], PhysicalSizeY=pixel_size[1])
    tifffile.imwrite(path, image, ome=True, tile=(64, 64), photometric="rgb" if rgb else "minisblack",
                     compression="zlib", metadata=meta)  # fmt: skip
    return path


@dataclass(frozen=True)
class Store:
    """A test output store and the files it names."""

    root: Path
    out: Path
    fixed: Path
    moving: Path
    fixed_image: np.ndarray
    moving_image: np.ndarray


def make_store(root: Path) -> Store:
    """``out.zarr`` with entries ``affine`` (pixel sizes and image paths recorded), ``bare`` (the
    same matrix, nothing else recorded), ``homography`` and ``mirror``; images as OME-TIFF."""
    from drmime_batch.io import write_transform

    root.mkdir(parents=True, exist_ok=True)
    fixed_image = texture(*FIXED_SHAPE, seed=1)
    moving_image = texture(*MOVING_SHAPE, seed=2)
    fixed = write_ome_tiff(root / "fixed.ome.tif", fixed_image, FIXED_UM)
    moving = write_ome_tiff(root / "moving.ome.tif", moving_image, MOVING_UM)
    out = root / "out.zarr"
    paths = {"fixed": str(fixed), "moving": str(moving)}
    write_transform(out, "affine", AFFINE, attrs=paths, fixed_pixel_size=FIXED_UM, moving_pixel_size=MOVING_UM)
    write_transform(out, "bare", AFFINE, attrs={})
    write_transform(out, "homography", HOMOGRAPHY, attrs=paths, fixed_pixel_size=FIXED_UM, moving_pixel_size=MOVING_UM)
    write_transform(out, "mirror", MIRROR, attrs={})
    return Store(root, out, fixed, moving, fixed_image, moving_image)


def apply_matrix(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Reference point map, written out here rather than imported from the code under test."""
    hom = np.c_[xy, np.ones(len(xy))] @ np.asarray(m).T
    return hom[:, :2] / hom[:, 2:3]


def cli(*args: Any, check: int | None = 0, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``python -m drmime_batch ARGS``; checks the exit status unless ``check`` is None."""
    proc = subprocess.run(
        [sys.executable, "-m", "drmime_batch", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ}, check=False,
    )  # fmt: skip
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc
