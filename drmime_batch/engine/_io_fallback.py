"""TEMPORARY stand-in for :mod:`drmime_batch.io` until its readers and writers land.

Single-level PNG/JPEG/TIFF reading with PIL/tifffile, zarr transform + registered writers, a PNG
QC overlay. :func:`io_api` returns the real module as soon as it provides ``open_image``; this
file is deleted then.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from drmime_batch.errors import CorruptImageError, ImageNotFoundError, UnsupportedFormatError

_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def io_api() -> Any:
    """The IO functions the engine needs: the real package when it has them, else this fallback."""
    import drmime_batch.io as real

    if hasattr(real, "open_image") and hasattr(real, "pair_is_complete"):
        return real
    return SimpleNamespace(
        open_image=open_image, warp=warp, write_transform=write_transform, write_qc=write_qc,
        write_registered=write_registered, pair_is_complete=pair_is_complete,
    )


@dataclass(frozen=True)
class _Image:
    path: str
    array: np.ndarray

    @property
    def levels(self) -> list[Any]:
        import dask.array as da

        return [da.from_array(self.array, chunks=(512, 512) + self.array.shape[2:])]

    downsamples = [(1.0, 1.0)]
    pixel_size = None

    def level_for(self, max_size: int = 2048) -> int:
        return 0

    def read_level(self, i: int) -> np.ndarray:
        return self.array


def open_image(path: str | Path) -> _Image:
    p = Path(path)
    if not p.exists():
        raise ImageNotFoundError(f"{p}: no such file")
    if p.suffix.lower() not in _SUFFIXES:
        raise UnsupportedFormatError(f"{p}: unsupported format {p.suffix!r}")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
        else:
            from PIL import Image

            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise CorruptImageError(f"{p}: cannot decode ({' '.join(str(exc).split())})") from exc
    return _Image(str(p), np.asarray(arr))


def _atomic_dir(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")
    return tmp


def _commit(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_transform(out: str | Path, pair_id: str, matrix: np.ndarray, *, attrs: dict[str, Any]) -> Path:
    import zarr

    final = Path(out) / pair_id / "transform"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_dir(final)
    arr = zarr.open_array(str(tmp), mode="w", shape=(3, 3), dtype="float64")
    arr[:] = np.asarray(matrix, dtype=np.float64)
    arr.attrs.update(json.loads(json.dumps(attrs, default=str)))
    _commit(tmp, final)
    return final


def write_qc(out: str | Path, pair_id: str, fixed_img: _Image, moving_img: _Image, matrix: np.ndarray) -> Path:
    from PIL import Image

    reg = np.asarray(warp(moving_img, matrix, like=fixed_img).compute())
    f = fixed_img.array.astype(np.float32).mean(axis=-1) if fixed_img.array.ndim == 3 else fixed_img.array
    m = reg.astype(np.float32).mean(axis=-1) if reg.ndim == 3 else reg.astype(np.float32)
    norm = lambda a: np.clip(255 * (a - a.min()) / max(float(np.ptp(a)), 1e-9), 0, 255).astype(np.uint8)  # noqa: E731
    rgb = np.dstack([norm(f), norm(m), norm(f)])
    path = Path(out) / pair_id / "qc.png"
    tmp = path.with_name(".qc.partial.png")
    Image.fromarray(rgb).save(tmp)
    os.replace(tmp, path)
    return path


def warp(moving_img: _Image, matrix: np.ndarray, *, like: _Image) -> Any:
    import dask.array as da
    from scipy.ndimage import map_coordinates

    src = moving_img.array.astype(np.float32)
    if src.ndim == 2:
        src = src[:, :, None]
    h, w = like.array.shape[:2]
    m = np.asarray(matrix, dtype=np.float64)

    def block(_x: np.ndarray, block_info: Any = None) -> np.ndarray:
        (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
        hom = m @ np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
        xs, ys = hom[0] / hom[2], hom[1] / hom[2]
        chans = [map_coordinates(src[:, :, c], [ys, xs], order=1, cval=0.0).reshape(xx.shape)
                 for c in range(src.shape[2])]
        return np.stack(chans, axis=-1).astype(np.float32)

    template = da.zeros((h, w, src.shape[2]), chunks=(256, 256, src.shape[2]), dtype=np.float32)
    return template.map_blocks(block, dtype=np.float32)


def write_registered(out: str | Path, pair_id: str, array: Any, *, pixel_size: Any = None, format: str = "ome-zarr") -> Path:
    import zarr

    final = Path(out) / pair_id / "registered"
    tmp = _atomic_dir(final)
    group = zarr.open_group(str(tmp), mode="w")
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}], "axes": ["y", "x", "c"]}]
    array.to_zarr(str(tmp / "0"), overwrite=True)
    _commit(tmp, final)
    return final


def pair_is_complete(out: str | Path, pair_id: str, warp: bool = True) -> bool:
    base = Path(out) / pair_id
    ok = (base / "transform" / "zarr.json").exists()
    return ok and (not warp or (base / "registered" / "0" / "zarr.json").exists())
