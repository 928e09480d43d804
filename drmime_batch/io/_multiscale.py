"""The multiscale image: a pyramid of lazy dask levels over path-based sources."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import dask.array as da
import numpy as np

from drmime_batch.core._convention import level_to_full_matrix
from drmime_batch.errors import ConfigError, InputImageError
from drmime_batch.io._fs import basename, is_url
from drmime_batch.io._sources import LevelSource

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["MultiscaleImage", "downsample2"]

logger = logging.getLogger(__name__)

#: Levels are added (lazily) until the longer side is at most this many pixels.
MIN_BUILT_SIDE = 256
#: Target dask chunk side for file levels (rounded to the file's own tile shape).
CHUNK_SIDE = 1024


def _chunks_for(source: LevelSource, native: Sequence[int] | None) -> tuple[int, ...]:
    """Dask chunks: a multiple of the file's tile near ``CHUNK_SIDE``, whole channel axis."""
    out = []
    for axis in range(2):
        tile = int(native[axis]) if native is not None and native[axis] > 0 else CHUNK_SIDE
        tile = min(tile, source.shape[axis]) or 1
        out.append(max(tile, (CHUNK_SIDE // tile) * tile))
    if source.ndim == 3:
        out.append(source.shape[2])
    return tuple(out)


def downsample2(arr: da.Array, *, labels: bool = False) -> da.Array:
    """Halve a ``(y, x[, c])`` dask array: 2x2 area mean (or top-left pick for labels).

    Odd trailing rows/columns are dropped, so the level is ``floor(H/2) x floor(W/2)``. Integer
    dtypes are rounded back to their type. Nothing is computed.

    Examples
    --------
    >>> x = da.from_array(np.arange(16, dtype=np.uint8).reshape(4, 4), chunks=2)
    >>> downsample2(x).compute()
    array([[ 3,  5],
           [11, 13]], dtype=uint8)
    """
    h, w = arr.shape[0] // 2 * 2, arr.shape[1] // 2 * 2
    if labels:
        picked: da.Array = arr[0:h:2, 0:w:2]
        return picked
    axes = {0: 2, 1: 2}
    out: da.Array = da.coarsen(np.mean, arr[:h, :w], axes, trim_excess=True, dtype=np.float64)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = da.clip(da.floor(out + 0.5), info.min, info.max)
    out = out.astype(arr.dtype)
    if min(out.chunksize[:2]) < CHUNK_SIDE // 4 and max(out.numblocks[:2]) > 1:
        out = out.rechunk({0: CHUNK_SIDE, 1: CHUNK_SIDE})
    return out


class MultiscaleImage:
    """A lazily read image pyramid, level 0 at full resolution.

    Created by :func:`drmime_batch.io.open_image`; nothing is read until a level is computed.
    Levels the file lacks are appended lazily (2x2 area means of the coarsest level present).

    Attributes
    ----------
    path : pathlib.Path or str
        The file (or zarr directory) read; an fsspec URL stays a ``str`` (``s3://...``).
    name : str
        Its last component (the file or object name).
    levels : list of dask.array.Array
        ``(y, x[, c])`` arrays, level 0 first; the file's own levels, then built ones.
    downsamples : list of (sx, sy)
        Full-resolution width / level width and height / level height, per level.
    pixel_size : (px, py) or None
        Micrometres per full-resolution pixel when the file states it.
    n_file_levels : int
        How many leading levels come from the file itself.

    Examples
    --------
    >>> img = MultiscaleImage.from_array(np.zeros((600, 1000), dtype=np.uint16))
    >>> img.shape, img.channels, len(img.levels), img.downsamples[1]
    ((600, 1000), 1, 3, (2.0, 2.0))
    """

    def __init__(
        self,
        path: str | Path,
        sources: Sequence[LevelSource],
        *,
        pixel_size: tuple[float, float] | None = None,
        native_chunks: Sequence[Sequence[int] | None] | None = None,
        levels: Sequence[da.Array] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not sources and not levels:
            raise InputImageError("a multiscale image needs at least one level")
        self.path: Path | str = path if is_url(path) else Path(path)
        self.name = basename(self.path)
        self._sources: list[LevelSource | None] = list(sources)
        if levels is None:
            native = list(native_chunks) if native_chunks is not None else [None] * len(sources)
            levels = [
                da.from_array(
                    src,
                    chunks=_chunks_for(src, nat),
                    asarray=False,
                    lock=False,
                    inline_array=True,
                    meta=np.empty((0,) * src.ndim, dtype=src.dtype),
                    name=f"read-{basename(src.path)}-{da.core.tokenize(src)}",
                )
                for src, nat in zip(sources, native, strict=True)
            ]
        self._levels: list[da.Array] = list(levels)
        self._sources += [None] * (len(self._levels) - len(self._sources))
        self.n_file_levels = len(self._levels)
        self.pixel_size = pixel_size
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._extend(MIN_BUILT_SIDE)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_array(
        cls,
        array: np.ndarray | da.Array,
        *,
        pixel_size: tuple[float, float] | None = None,
        path: str | Path = "<memory>",
    ) -> MultiscaleImage:
        """Wrap an in-memory or dask ``(y, x[, c])`` array (no source file; not for :func:`warp`)."""
        arr = array if isinstance(array, da.Array) else da.from_array(np.asarray(array))
        if arr.ndim not in (2, 3):
            raise InputImageError(f"expected a (y, x[, c]) array, got shape {arr.shape}")
        return cls(path, [], pixel_size=pixel_size, levels=[arr])

    def _extend(self, max_side: int) -> None:
        while max(self._levels[-1].shape[:2]) > max_side and min(self._levels[-1].shape[:2]) >= 2:
            self._levels.append(downsample2(self._levels[-1]))
            self._sources.append(None)

    # ------------------------------------------------------------------ public view
    @property
    def levels(self) -> list[da.Array]:
        """The ``(y, x[, c])`` dask arrays, level 0 = full resolution (a new list)."""
        return list(self._levels)

    @property
    def downsamples(self) -> list[tuple[float, float]]:
        """``(sx, sy)`` = full-resolution size / level size, per level."""
        h0, w0 = self.shape[:2]
        return [(w0 / lvl.shape[1], h0 / lvl.shape[0]) for lvl in self._levels]

    @property
    def shape(self) -> tuple[int, ...]:
        """Full-resolution shape ``(y, x[, c])``."""
        return tuple(self._levels[0].shape)

    @property
    def dtype(self) -> np.dtype:
        dtype: np.dtype = self._levels[0].dtype
        return dtype

    @property
    def ndim(self) -> int:
        return int(self._levels[0].ndim)

    @property
    def channels(self) -> int:
        """Number of channels (1 for a 2-D grayscale image)."""
        return 1 if self.ndim == 2 else int(self.shape[2])

    def source(self, index: int = 0) -> LevelSource:
        """The path-based reader of a file level (used by :func:`warp` tasks)."""
        src = self._sources[index] if index < len(self._sources) else None
        if src is None:
            raise InputImageError(
                f"level {index} of {self.name} is not stored in the file (it is built lazily); "
                f"file levels are 0..{self.n_file_levels - 1}"
            )
        return src

    def level_matrix(self, index: int) -> np.ndarray:
        """Matrix taking level ``index`` pixel coordinates to full-resolution ones."""
        return level_to_full_matrix(self.downsamples[index])

    def level_for(self, max_size: int = 2048) -> int:
        """Index of the finest level whose longer side is at most ``max_size``.

        Levels the file lacks are built lazily (nothing is read). Returns the coarsest level when
        even a 1-pixel-wide level would not fit.

        Examples
        --------
        >>> img = MultiscaleImage.from_array(np.zeros((100, 300), np.uint8))
        >>> img.level_for(80), img.levels[2].shape
        (2, (25, 75))
        """
        if max_size < 1:
            raise ConfigError(f"max_size must be a positive number of pixels, got {max_size}")
        self._extend(max_size)
        for i, lvl in enumerate(self._levels):
            if max(lvl.shape[:2]) <= max_size:
                return i
        return len(self._levels) - 1

    def read_level(self, index: int, *, scheduler: str | None = None) -> np.ndarray:
        """Compute one level (and only what it needs) into a numpy array.

        ``scheduler`` is passed to dask's ``compute`` (e.g. ``"synchronous"`` inside a task of a
        distributed cluster); None uses the active one.
        """
        if not -len(self._levels) <= index < len(self._levels):
            raise IndexError(f"{self.name} has {len(self._levels)} levels, asked for {index}")
        return np.asarray(self._levels[index].compute(scheduler=scheduler))

    def to_datatree(self) -> xr.DataTree:
        """An xarray ``DataTree``: one node per level (``"0"``, ``"1"``, ...) holding ``image``.

        Coordinates ``y``/``x`` are pixel centres in micrometres when the pixel size is known,
        else in full-resolution pixels; no pixel data is read.
        """
        import xarray as xr

        px, py = self.pixel_size if self.pixel_size is not None else (1.0, 1.0)
        unit = "micrometer" if self.pixel_size is not None else "pixel"
        nodes: dict[str, xr.Dataset] = {
            "/": xr.Dataset(attrs={"path": str(self.path), "units": unit, "n_file_levels": self.n_file_levels})
        }
        for i, (lvl, (sx, sy)) in enumerate(zip(self._levels, self.downsamples, strict=True)):
            dims = ("y", "x", "c")[: lvl.ndim]
            coords: dict[str, Any] = {
                "y": ("y", (sy * (np.arange(lvl.shape[0]) + 0.5) - 0.5) * py, {"units": unit}),
                "x": ("x", (sx * (np.arange(lvl.shape[1]) + 0.5) - 0.5) * px, {"units": unit}),
            }
            if lvl.ndim == 3:
                coords["c"] = np.arange(lvl.shape[2])
            arr = xr.DataArray(lvl, dims=dims, coords=coords, attrs={"downsample": [sx, sy]})
            nodes[f"/{i}"] = xr.Dataset({"image": arr})
        return xr.DataTree.from_dict(nodes)

    def __repr__(self) -> str:
        ps = "unknown" if self.pixel_size is None else f"{self.pixel_size[0]:.4g}x{self.pixel_size[1]:.4g} um"
        return (
            f"MultiscaleImage({self.name!r}, shape={self.shape}, dtype={self.dtype}, "
            f"levels={len(self._levels)} ({self.n_file_levels} in file), pixel_size={ps})"
        )
