"""Picklable, path-based readers of one image level.

A *level source* is a tiny array-like object (``shape``, ``dtype``, ``ndim``, ``__getitem__``)
that holds only a path and a few integers. It opens its file on first use **in the process that
reads** (a dask worker, a thread of the local scheduler) and keeps the handle in a small
per-process cache. That is what lets dask graphs of TIFF levels travel to distributed workers:
tifffile's zarr stores hold open file handles and do not pickle, a path does.

The path may be an fsspec URL (``s3://...``): it stays a string, TIFF tiles are then read by byte
range through an fsspec file handle, zarr chunks through zarr's ``FsspecStore``. A remote source
also carries the object's version stamp taken when the image was opened (an ETag and a size): it
keys the per-process cache and the dask token instead of a ``stat`` per read.

Every source returns pixels in the library's axis order ``(y, x[, c])`` whatever the file's own
order is (``CYX``, ``TCZYX``, ``YXS``, ...): other axes are read at index 0.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from drmime_batch.errors import ConfigError, CorruptImageError
from drmime_batch.io._fs import basename, is_url, open_input, read_bytes

__all__ = ["AxisMap", "LevelSource", "PILSource", "TiffSource", "ZarrSource"]

logger = logging.getLogger(__name__)

_CHANNEL_AXES = ("c", "s")


@dataclass(frozen=True)
class AxisMap:
    """How a file's axes become ``(y, x[, c])``.

    Parameters
    ----------
    axes : tuple of str
        The file's axis names, lower case (``"t", "c", "z", "y", "x"``; tifffile's ``"s"`` is the
        sample/colour axis).
    shape : tuple of int
        The file array's shape.

    Examples
    --------
    >>> m = AxisMap.from_axes(("c", "y", "x"), (3, 10, 20))
    >>> m.out_shape, m.channel_axis
    ((10, 20, 3), 0)
    """

    axes: tuple[str, ...]
    shape: tuple[int, ...]
    y_axis: int
    x_axis: int
    channel_axis: int | None

    @classmethod
    def from_axes(cls, axes: Sequence[str], shape: Sequence[int]) -> AxisMap:
        names = tuple(str(a).lower() for a in axes)
        shape = tuple(int(s) for s in shape)
        if len(names) != len(shape):
            raise CorruptImageError(f"axes {names} do not match shape {shape}")
        if "y" not in names or "x" not in names:
            raise CorruptImageError(f"an image needs a 'y' and an 'x' axis, got axes {names}")
        channel = None
        for i, name in enumerate(names):
            if name in _CHANNEL_AXES and shape[i] > 1:
                if channel is None:
                    channel = i
                else:
                    logger.warning("several channel axes in %s; reading index 0 of %r", names, name)
        for i, name in enumerate(names):
            if name not in ("y", "x") and i != channel and shape[i] > 1:
                logger.warning("axis %r of size %d is read at index 0 only", name, shape[i])
        return cls(names, shape, names.index("y"), names.index("x"), channel)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The shape seen by the library, ``(y, x[, c])``."""
        base = (self.shape[self.y_axis], self.shape[self.x_axis])
        return base if self.channel_axis is None else (*base, self.shape[self.channel_axis])

    def selection(self, key: tuple[slice, ...]) -> tuple[tuple[Any, ...], list[int]]:
        """File-space selection for an output-space key, and the transpose to apply after."""
        ys, xs = key[0], key[1]
        cs = key[2] if len(key) > 2 else slice(None)
        sel: list[Any] = []
        kept: list[tuple[int, int]] = []  # (output position, position among kept axes)
        for i in range(len(self.axes)):
            if i == self.y_axis:
                kept.append((0, len(kept)))
                sel.append(ys)
            elif i == self.x_axis:
                kept.append((1, len(kept)))
                sel.append(xs)
            elif i == self.channel_axis:
                kept.append((2, len(kept)))
                sel.append(cs)
            else:
                sel.append(0)
        order = [pos for _, pos in sorted(kept)]
        return tuple(sel), order


def _normalise_key(key: Any, ndim: int) -> tuple[slice, ...]:
    if not isinstance(key, tuple):
        key = (key,)
    key = tuple(key) + (slice(None),) * (ndim - len(key))
    for k in key:
        if not isinstance(k, slice) or (k.step not in (None, 1)):
            raise ConfigError(f"level sources take unit-step slices only, got {key!r}")
    slices: tuple[slice, ...] = key  # each checked above
    return slices


class LevelSource:
    """Base of the path-based level readers (see the module docstring)."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stamp: tuple[Any, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _normalise_key(key, self.ndim)
        try:
            out = self._read(key)
        except CorruptImageError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CorruptImageError(f"cannot read pixels of {self.path}: {exc}") from exc
        return np.asarray(out, dtype=self.dtype)

    def _version(self) -> tuple[Any, ...]:
        """The file's stamp now (local), or the object's stamp when it was opened (URL)."""
        return self.stamp if is_url(self.path) else _stamp(self.path)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        try:
            stamp: tuple[Any, ...] = self._version()
        except OSError:
            stamp = ()
        return (type(self).__name__, self.path, *stamp, *self._token_extra())

    def _token_extra(self) -> tuple[Any, ...]:
        return ()


# --------------------------------------------------------------------------------------------- TIFF


@functools.lru_cache(maxsize=16)
def _open_tiff_levels(path: str, stamp: tuple[Any, ...], series: int) -> Any:
    import tifffile
    import zarr

    tif = tifffile.TiffFile(open_input(path) if is_url(path) else path)
    store = tif.series[series].aszarr(multiscales=True)
    group = zarr.open_group(store=store, mode="r", zarr_format=2)
    return tif, group  # the TiffFile stays alive (and open) as long as the cache entry


def _stamp(path: str) -> tuple[Any, ...]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


@dataclass(frozen=True, eq=False, repr=False)
class TiffSource(LevelSource):
    """One level of one series of a TIFF file, read through tifffile's zarr view."""

    path: str
    series: int
    level: int
    axis_map: AxisMap
    dtype: np.dtype
    stamp: tuple[Any, ...] = ()
    shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", self.axis_map.out_shape)

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        _, group = _open_tiff_levels(self.path, self._version(), self.series)
        sel, order = self.axis_map.selection(key)
        data = group[str(self.level)][sel]
        return np.transpose(data, order)

    def _token_extra(self) -> tuple[Any, ...]:
        return (self.series, self.level)

    def __repr__(self) -> str:
        return f"TiffSource({basename(self.path)!r}, series={self.series}, level={self.level}, shape={self.shape})"


# --------------------------------------------------------------------------------------------- zarr


@functools.lru_cache(maxsize=32)
def _open_zarr_array(path: str, component: str) -> Any:
    import zarr

    return zarr.open_array(store=path, path=component, mode="r")


@dataclass(frozen=True, eq=False, repr=False)
class ZarrSource(LevelSource):
    """One array of a zarr store (v2 or v3), by path and component."""

    path: str
    component: str
    axis_map: AxisMap
    dtype: np.dtype
    stamp: tuple[Any, ...] = ()
    shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", self.axis_map.out_shape)

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        arr = _open_zarr_array(self.path, self.component)
        sel, order = self.axis_map.selection(key)
        return np.transpose(arr[sel], order)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        if is_url(self.path):  # the root metadata's stamp when the store was opened
            return ("ZarrSource", self.path, self.component, *self.stamp)
        # a zarr store is a directory: its mtime says little, so identity comes from the metadata
        meta = Path(self.path, self.component, "zarr.json")
        if not meta.exists():
            meta = Path(self.path, self.component, ".zarray")
        try:
            stamp: tuple[Any, ...] = _stamp(str(meta))
        except OSError:
            stamp = ()
        return ("ZarrSource", self.path, self.component, *stamp)

    def __repr__(self) -> str:
        return f"ZarrSource({basename(self.path)!r}, component={self.component!r}, shape={self.shape})"


# ---------------------------------------------------------------------------------------- PNG/JPEG

_PIL_LOCK = threading.Lock()


def pil_mode_plan(mode: str) -> tuple[str | None, int, np.dtype]:
    """The conversion applied to a PIL mode, the channel count and dtype that result."""
    if mode in ("L", "1", "P;L"):
        return ("L" if mode != "L" else None), 1, np.dtype(np.uint8)
    if mode in ("I;16", "I;16B", "I;16L"):
        return None, 1, np.dtype(np.uint16)
    if mode == "I":
        return None, 1, np.dtype(np.int32)
    if mode == "F":
        return None, 1, np.dtype(np.float32)
    if mode == "LA":
        return "L", 1, np.dtype(np.uint8)
    if mode == "RGB":
        return None, 3, np.dtype(np.uint8)
    return "RGB", 3, np.dtype(np.uint8)  # RGBA, P, CMYK, YCbCr, ...: viewers see RGB


@functools.lru_cache(maxsize=4)
def _load_pil(path: str, stamp: tuple[Any, ...]) -> np.ndarray:
    from PIL import Image

    with _PIL_LOCK, Image.open(io.BytesIO(read_bytes(path)) if is_url(path) else path) as im:
        convert, _, dtype = pil_mode_plan(im.mode)
        arr = np.asarray(im if convert is None else im.convert(convert))
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False, repr=False)
class PILSource(LevelSource):
    """A small PNG/JPEG image, decoded whole on first access (per process) and sliced."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stamp: tuple[Any, ...] = ()

    def _read(self, key: tuple[slice, ...]) -> np.ndarray:
        return _load_pil(self.path, self._version())[key]

    def __repr__(self) -> str:
        return f"PILSource({basename(self.path)!r}, shape={self.shape})"
