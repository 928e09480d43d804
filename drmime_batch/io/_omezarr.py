"""OME-Zarr 0.5 multiscale writer (zarr v3, sharded, zstd) and a pyramidal OME-TIFF export.

Alignment rule: every dask block written covers exactly one shard (edge blocks: the edge shard),
so no two tasks ever touch the same shard object - concurrent partial shard writes would corrupt
data silently. All levels are stored by one dask computation: level ``k + 1``'s blocks are the
2x2 means of level ``k``'s blocks while those are in memory (a shard of level ``k + 1`` joins the
halves of four shards of level ``k``), so the source graph (e.g. a warp) is computed once, no
level is read back from disk, and memory stays at a few blocks per worker.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import dask.array as da
import numpy as np

from drmime_batch.errors import ConfigError, InputImageError
from drmime_batch.io._fs import Location, basename, is_url, url_fs
from drmime_batch.io._multiscale import downsample2

__all__ = ["write_ome_zarr", "write_ome_tiff", "ngff_multiscale_attrs"]

logger = logging.getLogger(__name__)

#: shard side (pixels) = dask block side when writing
SHARD_SIDE = 2048
#: inner chunk side (pixels) inside a shard: what a viewer fetches
CHUNK_SIDE = 512
#: pyramid levels are written until the longer side is at most this
MIN_LEVEL_SIDE = 512
#: zstd level of an OME-Zarr kept as output
ZSTD_LEVEL = 3
#: zstd level of a scratch OME-Zarr read once by the OME-TIFF export, then deleted (about 3x faster)
SCRATCH_ZSTD_LEVEL = 1


def ngff_multiscale_attrs(
    name: str,
    shapes: list[tuple[int, ...]],
    *,
    pixel_size: tuple[float, float] | None,
    channels: int | None,
    version: str = "0.5",
) -> dict[str, Any]:
    """NGFF multiscales metadata for ``(c, y, x)`` (or ``(y, x)``) levels.

    Level ``l`` has ``scale = pixel * downsample`` and the translation ``(s - 1) / 2 * pixel`` that
    keeps level pixel centres where :mod:`drmime_batch.core._convention` puts them.
    """
    px, py = pixel_size if pixel_size is not None else (1.0, 1.0)
    space: dict[str, Any] = {"type": "space"}
    if pixel_size is not None:
        space["unit"] = "micrometer"
    axes: list[dict[str, Any]] = [{"name": "y", **space}, {"name": "x", **space}]
    if channels is not None:
        axes.insert(0, {"name": "c", "type": "channel"})
    h0, w0 = shapes[0][-2:]
    datasets = []
    for i, shp in enumerate(shapes):
        sy, sx = h0 / shp[-2], w0 / shp[-1]
        scale = [sy * py, sx * px]
        trans = [0.5 * (sy - 1) * py, 0.5 * (sx - 1) * px]
        if channels is not None:
            scale.insert(0, 1.0)
            trans.insert(0, 0.0)
        cts: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
        if any(trans):
            cts.append({"type": "translation", "translation": trans})
        datasets.append({"path": str(i), "coordinateTransformations": cts})
    ms: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets}
    if version == "0.4":
        ms["version"] = "0.4"
        return {"multiscales": [ms]}
    return {"ome": {"version": "0.5", "multiscales": [ms]}}


def _omero(channels: int | None, dtype: np.dtype) -> dict[str, Any] | None:
    if channels != 3 or dtype != np.uint8:
        return None
    colours = ("FF0000", "00FF00", "0000FF")
    return {
        "channels": [
            {"label": lab, "color": col, "active": True, "window": {"min": 0, "max": 255, "start": 0, "end": 255}}
            for lab, col in zip("RGB", colours, strict=True)
        ],
        "rdefs": {"model": "color"},
    }


#: accumulator dtype of a 2x2 sum per integer item size: four values of the type always fit
_WIDER = {1: 2, 2: 4, 4: 8}


def _halve_block(block: np.ndarray) -> np.ndarray:
    """2x2 mean over the last two axes of an integer block of even sides, rounded half up, exactly.

    Row pairs are summed first (contiguous rows), then column pairs, in the narrowest integer type
    that holds four values (``uint8`` sums in ``uint16``); ``(sum + 2) >> 2`` is
    ``floor(mean + 1/2)`` (an arithmetic shift floors negative sums too).

    Examples
    --------
    >>> _halve_block(np.array([[0, 1, 9, 9], [1, 1, 9, 8]], dtype=np.uint8))
    array([[1, 9]], dtype=uint8)
    """
    wide = np.dtype(f"{block.dtype.kind}{_WIDER[block.dtype.itemsize]}")
    rows = block[..., 0::2, :].astype(wide)
    rows += block[..., 1::2, :]
    total = rows[..., 0::2] + rows[..., 1::2]
    total += 2
    total >>= 2
    out: np.ndarray = total.astype(block.dtype)
    return out


def _halve(cyx: da.Array, *, labels: bool, side: int = SHARD_SIDE) -> da.Array:
    """The next pyramid level of a ``(c, y, x)`` or ``(y, x)`` array: :func:`downsample2`'s pixels.

    For integer images ``floor(mean + 1/2)`` of 2x2 sums is exact in integer arithmetic (several
    times faster than the float64 ``coarsen`` path, identical pixels), computed block by block
    on the planes (contiguous rows); labels and float images go through :func:`downsample2`
    itself. Each output block comes from one input block: a level built from the blocks of the
    level above as they are made, never read back from disk.
    """
    if labels or not np.issubdtype(cyx.dtype, np.integer) or cyx.dtype.itemsize not in _WIDER:
        return _to_cyx(downsample2(_to_yx(cyx), labels=labels))  # 64-bit: sums could overflow
    h, w = cyx.shape[-2] // 2 * 2, cyx.shape[-1] // 2 * 2
    even = cyx[..., :h, :w]
    if any(c % 2 for axis in even.chunks[-2:] for c in axis):
        even = even.rechunk({even.ndim - 2: side + side % 2, even.ndim - 1: side + side % 2})
    chunks = even.chunks[:-2] + tuple(tuple(c // 2 for c in axis) for axis in even.chunks[-2:])
    halved: da.Array = even.map_blocks(_halve_block, chunks=chunks, dtype=cyx.dtype)
    return halved


def _to_cyx(data: da.Array) -> da.Array:
    return data if data.ndim == 2 else da.moveaxis(data, 2, 0)


def _to_yx(cyx: da.Array) -> da.Array:
    return cyx if cyx.ndim == 2 else da.moveaxis(cyx, 0, 2)


def _level_shapes(shape: tuple[int, ...], min_side: int) -> list[tuple[int, ...]]:
    """Shapes ``(c, y, x)`` / ``(y, x)`` of every level: halved (odd sides floored) until small."""
    shapes = [tuple(int(v) for v in shape)]
    while max(shapes[-1][-2:]) > min_side and min(shapes[-1][-2:]) >= 2:
        last = shapes[-1]
        shapes.append((*last[:-2], last[-2] // 2, last[-1] // 2))
    return shapes


def _create_level(
    group: Any, index: int, shape: tuple[int, ...], dtype: Any, *, shard: int, chunk: int, zstd_level: int
) -> Any:
    """An empty level array: zarr v3, shards of ``shard`` pixels made of ``chunk``-pixel zstd chunks."""
    import zarr
    from zarr.codecs import ZstdCodec

    spatial = shape[-2:]
    shard_shape = tuple(max(1, min(shard, s)) for s in spatial)
    inner = tuple(max(1, min(chunk, s)) for s in shard_shape)
    # inner chunks must tile the shard exactly
    shard_shape = tuple(-(-s // c) * c for s, c in zip(shard_shape, inner, strict=True))
    lead = tuple(shape[:-2])
    return zarr.create_array(
        store=group.store,
        name=f"{group.path}/{index}" if group.path else str(index),
        shape=shape,
        dtype=dtype,
        chunks=lead + inner,
        shards=lead + shard_shape,
        compressors=ZstdCodec(level=zstd_level),
        fill_value=0,
        dimension_names=(["c"] if lead else []) + ["y", "x"],
        zarr_format=3,
        # zarr's own test of every chunk against the fill value (np.array_equal with NaN handling)
        # costs about 15 % of a shard write; _SkipEmpty tests whole shards in one cheap pass instead
        config={"write_empty_chunks": True},
    )


class _SkipEmpty:
    """A store target that drops all-zero blocks (the fill value: a fresh array reads them as 0).

    Whole empty shards (the background around a warped slide) stay unwritten, as zarr's default
    ``write_empty_chunks=False`` would leave them; pickles with its array to distributed workers.
    """

    def __init__(self, array: Any) -> None:
        self.array = array

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        if value.any():
            self.array[key] = value


def _contiguous(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block)


def write_ome_zarr(
    path: Location,
    data: da.Array,
    *,
    name: str,
    pixel_size: tuple[float, float] | None = None,
    labels: bool = False,
    attributes: dict[str, Any] | None = None,
    shard: int = SHARD_SIDE,
    chunk: int = CHUNK_SIDE,
    min_side: int = MIN_LEVEL_SIDE,
    zstd_level: int = ZSTD_LEVEL,
) -> list[tuple[int, ...]]:
    """Write ``data`` ``(y, x[, c])`` as an OME-Zarr 0.5 multiscale group at ``path`` (not atomic).

    All levels are written by one dask computation: each base block, once made, is stored and
    halved in memory, and each lower level's shard is assembled from the halves of the level
    above, so ``data`` (e.g. a warp) is computed once, nothing is read back, and memory stays at
    a few blocks per worker. ``path`` may be an fsspec URL (zarr's ``FsspecStore``; the arrays
    pickle to the workers with their store, which reopens the file system from its URL options
    there). Computes with the active dask scheduler (a distributed ``Client`` when one is
    current). ``zstd_level``: the chunks' compression (:data:`SCRATCH_ZSTD_LEVEL` for a scratch
    copy that :func:`write_ome_tiff` reads once). Returns the level shapes written (``(c, y, x)``
    or ``(y, x)``).
    """
    import zarr

    if data.ndim not in (2, 3):
        raise InputImageError(f"expected a (y, x[, c]) array, got shape {data.shape}")
    if shard % chunk:
        raise ConfigError(f"shard side {shard} must be a multiple of the chunk side {chunk}")
    group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    channels = int(data.shape[2]) if data.ndim == 3 else None
    shapes = _level_shapes(_to_cyx(data).shape, min_side)
    arrays = [_create_level(group, i, shp, data.dtype, shard=shard, chunk=chunk, zstd_level=zstd_level)
              for i, shp in enumerate(shapes)]  # fmt: skip
    sources: list[da.Array] = []
    level = _to_cyx(data)
    for i, arr in enumerate(arrays):
        if i:
            level = _halve(sources[-1], labels=labels, side=shard)
        # one task per shard (no two tasks write one shard), contiguous planes for the codec and the halving
        aligned = level.rechunk(arr.shards).map_blocks(_contiguous, dtype=level.dtype)
        sources.append(aligned)
    targets = [_SkipEmpty(arr) for arr in arrays]
    da.store(sources, targets, lock=False, compute=True)  # type: ignore[arg-type]  # dask types targets as arrays
    attrs = ngff_multiscale_attrs(name, shapes, pixel_size=pixel_size, channels=channels)
    omero = _omero(channels, data.dtype)
    if omero is not None:
        attrs["ome"]["omero"] = omero
    attrs.update(attributes or {})
    group.attrs.update(attrs)
    return shapes


def write_ome_tiff(
    path: Location,
    zarr_path: Location,
    *,
    pixel_size: tuple[float, float] | None = None,
    tile: int = 256,
) -> None:
    """Export an OME-Zarr written by :func:`write_ome_zarr` as a pyramidal, tiled OME-TIFF.

    Streams one band at a time from each zarr level (never the whole image): a band is whole
    zarr chunk rows (each chunk decompressed once) cut into tile rows; level 0 is the main IFD,
    the others SubIFDs, as QuPath and Bio-Formats expect. A URL ``path`` is
    written to a local temporary file first (a TIFF writer seeks back), then uploaded in one
    piece.
    """
    import tifffile
    import zarr

    if is_url(path):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="drmime-tiff-") as scratch:
            local = Path(scratch) / basename(path)
            write_ome_tiff(local, zarr_path, pixel_size=pixel_size, tile=tile)
            fs, remote = url_fs(str(path))
            fs.put_file(str(local), remote)
            fs.invalidate_cache(remote)
        return

    group = zarr.open_group(store=str(zarr_path), mode="r")
    # the levels are arrays "0", "1", ... (written by write_ome_zarr)
    levels = [cast("zarr.Array[Any]", group[str(i)]) for i in range(len(list(group.array_keys())))]
    rgb = levels[0].ndim == 3 and levels[0].shape[0] == 3 and levels[0].dtype == np.uint8

    def tiles(arr: Any) -> Any:
        h, w = arr.shape[-2:]
        rows = -(-max(tile, arr.chunks[-2]) // tile) * tile  # whole tile rows covering a chunk row
        planes = [None] if (rgb or arr.ndim == 2) else range(arr.shape[0])
        for c in planes:  # planar images: every tile of plane 0, then plane 1, ...
            for y0 in range(0, h, rows):
                if rgb:
                    band = np.moveaxis(np.asarray(arr[:, y0 : y0 + rows, :]), 0, 2)
                elif c is None:
                    band = np.asarray(arr[y0 : y0 + rows, :])
                else:
                    band = np.asarray(arr[c, y0 : y0 + rows, :])
                for y in range(0, band.shape[0], tile):
                    for x in range(0, w, tile):
                        yield band[y : y + tile, x : x + tile]

    def shape_of(arr: Any) -> tuple[int, ...]:
        return (*arr.shape[1:], arr.shape[0]) if rgb else tuple(arr.shape)

    metadata: dict[str, Any] = {"axes": "YXS" if rgb else ("CYX" if levels[0].ndim == 3 else "YX")}
    if pixel_size is not None:
        metadata.update(PhysicalSizeX=pixel_size[0], PhysicalSizeXUnit="µm", PhysicalSizeY=pixel_size[1], PhysicalSizeYUnit="µm")
    options: dict[str, Any] = {
        "tile": (tile, tile),
        "compression": "zlib" if not rgb else "jpeg",
        "photometric": "rgb" if rgb else "minisblack",
    }
    if rgb:
        options["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        first = levels[0]
        tw.write(
            tiles(first), shape=shape_of(first), dtype=first.dtype, subifds=len(levels) - 1, metadata=metadata, **options
        )
        for arr in levels[1:]:
            tw.write(tiles(arr), shape=shape_of(arr), dtype=arr.dtype, subfiletype=1, metadata=None, **options)
