"""``STORE/ID/stack``: every slide of a series warped into the reference frame, one OME-Zarr 0.5 image.

Axes ``(z, c, y, x)``: z = section order, c = channels (RGB slides give 3), y/x = the reference's
full-resolution grid. Each slide is one lazy chunked warp (:func:`drmime_batch.io.warp`), stored
chunk by chunk, so memory stays bounded by a few chunks whatever the slide size; lower levels are
2x means of the level above, made from its chunks while they are in memory (all levels are stored
by one dask computation: nothing is read back). Written into a staging name and moved into
place: an interrupted write never looks finished.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np

from drmime_batch.errors import InputImageError

__all__ = ["write_stack"]

_CHUNK = 512
_MIN_SIDE = 256


def _halve_yx(level: da.Array) -> da.Array:
    h, w = level.shape[-2:]
    even = level[..., : h - h % 2, : w - w % 2]
    down = da.coarsen(np.mean, even.astype(np.float32), {2: 2, 3: 2}, trim_excess=True)
    return down.astype(level.dtype) if level.dtype.kind in "iu" else down.astype(level.dtype)


def _axes(pixel_size: tuple[float, float] | None) -> list[dict[str, Any]]:
    space: dict[str, Any] = {"type": "space", **({"unit": "micrometer"} if pixel_size else {})}
    return [{"name": "z", "type": "space"}, {"name": "c", "type": "channel"},
            {"name": "y", **space}, {"name": "x", **space}]


def write_stack(
    path: Any,
    slides: Sequence[tuple[str, str, np.ndarray | None]],
    *,
    reference_path: str,
    pixel_size: tuple[float, float] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> list[tuple[int, ...]]:
    """Write the series stack at ``path`` (a store location); returns the level shapes ``(z, c, y, x)``.

    Parameters
    ----------
    path : str or Path
        Where the multiscale group goes (``STORE/ID/stack``), replaced atomically.
    slides : sequence of (slide_id, image path, matrix or None)
        In section order; ``matrix`` is reference pixel → slide pixel, ``None`` for a slide that
        was not placed (its plane stays 0).
    reference_path : str
        The reference image (its full-resolution grid is the stack's y/x).
    pixel_size : (px, py), optional
        Micrometres per reference pixel.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from importlib.resources import files
    >>> he = str(files("drmime_batch") / "examples/cima-lung-lesion3/images/29-041-Izd2-w35-He-les3.jpg")
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "stack"
    >>> write_stack(out, [("a", he, np.eye(3)), ("b", he, None)], reference_path=he)[0]
    (2, 3, 661, 892)
    """
    import zarr

    from drmime_batch.io import open_image, warp
    from drmime_batch.io._atomic import replace_path, staging
    from drmime_batch.io._fs import location

    reference = open_image(reference_path)
    h, w = int(reference.shape[0]), int(reference.shape[1])
    planes: list[da.Array | None] = []
    channels: int | None = None
    for slide_id, image_path, matrix in slides:
        if matrix is None:
            planes.append(None)
            continue
        arr = warp(open_image(image_path), matrix, like=reference, chunks=_CHUNK)
        cyx = arr[None] if arr.ndim == 2 else da.moveaxis(arr, 2, 0)
        if channels is not None and cyx.shape[0] != channels:
            raise InputImageError(f"slide {slide_id!r} ({image_path}) has {cyx.shape[0]} channel(s), the series "
                                  f"{channels}: a stack needs one channel count")
        channels = int(cyx.shape[0])
        planes.append(cyx)
    if channels is None:
        raise InputImageError("no slide of the series was placed: nothing to stack")
    dtype = next(p.dtype for p in planes if p is not None)
    zero = da.zeros((channels, h, w), dtype=dtype, chunks=(channels, _CHUNK, _CHUNK))
    level = da.stack([(p if p is not None else zero).astype(dtype).rechunk((channels, _CHUNK, _CHUNK))
                      for p in planes])
    final = location(str(path))
    shapes: list[tuple[int, ...]] = []
    with staging(final) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        sources: list[da.Array] = []
        targets: list[Any] = []
        while True:
            chunks = (1, channels, min(_CHUNK, level.shape[2]), min(_CHUNK, level.shape[3]))
            stored = group.create_array(str(len(targets)), shape=level.shape, dtype=level.dtype, chunks=chunks,
                                        dimension_names=["z", "c", "y", "x"], fill_value=0)
            sources.append(level.rechunk(chunks))  # one task per chunk: no two tasks write one chunk
            targets.append(stored)
            shapes.append(tuple(int(v) for v in stored.shape))
            if max(stored.shape[-2:]) <= _MIN_SIDE or min(stored.shape[-2:]) < 2:
                break
            level = _halve_yx(sources[-1])  # from the chunks of the level above, in memory
        da.store(sources, targets, lock=False, compute=True)
        px, py = pixel_size if pixel_size is not None else (1.0, 1.0)
        datasets = []
        for i, shp in enumerate(shapes):
            sy, sx = h / shp[2], w / shp[3]
            cts: list[dict[str, Any]] = [{"type": "scale", "scale": [1.0, 1.0, sy * py, sx * px]}]
            if i:
                cts.append({"type": "translation", "translation": [0.0, 0.0, 0.5 * (sy - 1) * py, 0.5 * (sx - 1) * px]})
            datasets.append({"path": str(i), "coordinateTransformations": cts})
        attrs: dict[str, Any] = {"ome": {"version": "0.5", "multiscales": [
            {"name": "stack", "axes": _axes(pixel_size), "datasets": datasets}]}}
        attrs["drmime_series"] = {"slides": [s[0] for s in slides], "placed": [s[2] is not None for s in slides],
                                  **dict(attributes or {})}
        group.attrs.update(attrs)
        replace_path(tmp, final)
    return shapes
