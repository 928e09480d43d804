"""Helpers of the IO tests: small generated slides in every supported layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"


def slide(h: int, w: int, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    """A smooth, textured synthetic slide (uint8), deterministic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 30 * np.sin((xx + 2 * yy) / 23.0)
    if channels is None:
        return np.clip(base + rng.normal(0, 4, (h, w)), 0, 255).astype(np.uint8)
    planes = [np.roll(base, 5 * c, axis=1) + rng.normal(0, 4, (h, w)) for c in range(channels)]
    return np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)


def write_pyramid_tiff(
    path: Path, image: np.ndarray, *, levels: int = 3, tile: int = 64, ome: bool = True, bigtiff: bool = False,
    pixel_size: float | None = 0.5,
) -> list[tuple[int, ...]]:
    """A tiled pyramidal (Sub)IFD TIFF / OME-TIFF written with tifffile; returns level shapes."""
    import tifffile

    pyramid = [image]
    for _ in range(levels - 1):
        prev = pyramid[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        p = prev[:h, :w].astype(np.float64)
        pyramid.append(((p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4).astype(prev.dtype))
    rgb = image.ndim == 3
    kwargs = {"tile": (tile, tile), "photometric": "rgb" if rgb else "minisblack", "compression": "zlib"}
    meta = {"axes": "YXS" if rgb else "YX"}
    if pixel_size is not None and ome:
        meta.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size)
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=ome) as tw:
        res = {}
        if pixel_size is not None and not ome:
            res = {"resolution": (1e4 / pixel_size, 1e4 / pixel_size), "resolutionunit": "CENTIMETER"}
        tw.write(pyramid[0], subifds=levels - 1, metadata=meta if ome else None, **kwargs, **res)
        for lvl in pyramid[1:]:
            tw.write(lvl, subfiletype=1, metadata=None, **kwargs)
    return [p.shape for p in pyramid]


