"""``STORE/ID/stack``: every slide of a series warped into the reference frame, one OME-Zarr 0.5 image.

Axes ``(z, c, y, x)``: z = section order, c = channels (RGB slides give 3), y/x = the reference's
full-resolution grid. Each slide is one lazy chunked warp (:func:`drmime_batch.io.warp`), stored
chunk by chunk, so memory stays bounded by a few chunks whatever the slide size; lower levels are
2x means of the level above, made from its chunks while they are in memory (nothing is read
back). The arrays of every level are created first, then filled a few planes at a time: each
dask computation stores whole planes (all their levels) and spans at most ``_CHUNKS_AT_ONCE``
level-0 chunks (one plane at least), so the driver's graph, and its memory, does not grow with
the number of slides. Written into a staging name and moved into place: an interrupted write
never looks finished.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np

from drmime_batch.errors import InputImageError

__all__ = ["write_stack"]

_CHUNK = 512
_MIN_SIDE = 256
#: Level-0 chunks stored by one dask computation (whole planes, one plane at least): enough tasks
#: to keep a few threads busy across the small planes' pyramid tails, few enough to bound the graph.
_CHUNKS_AT_ONCE = 64


def _halve_yx(level: da.Array) -> da.Array:
    h, w = level.shape[-2:]
    even = level[..., : h - h % 2, : w - w % 2]
    down = da.coarsen(np.mean, even.astype(np.float32), {2: 2, 3: 2}, trim_excess=True)
    return down.astype(level.dtype)


def _axes(pixel_size: tuple[float, float] | None) -> list[dict[str, Any]]:
    space: dict[str, Any] = {"type": "space", **({"unit": "micrometer"} if pixel_size else {})}
    return [{"name": "z", "type": "space"}, {"name": "c", "type": "channel"},
            {"name": "y", **space}, {"name": "x", **space}]


def _level_shapes(z: int, c: int, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """``(z, c, y, x)`` of every level: halved (odd row/column dropped) until the longer side is ``_MIN_SIDE``.

    Examples
    --------
    >>> _level_shapes(2, 3, 1001, 600)
    [(2, 3, 1001, 600), (2, 3, 500, 300), (2, 3, 250, 150)]
    """
    shapes = [(z, c, h, w)]
    while max(h, w) > _MIN_SIDE and min(h, w) >= 2:
        h, w = h // 2, w // 2
        shapes.append((z, c, h, w))
    return shapes


def _chunks(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """One plane, every channel, ``_CHUNK`` squares (no two dask tasks write one zarr chunk)."""
    return 1, int(shape[1]), min(_CHUNK, int(shape[2])), min(_CHUNK, int(shape[3]))


def _plane_levels(cyx: da.Array, n_levels: int) -> list[da.Array]:
    """The levels ``(1, c, y, x)`` of one warped plane, each halved from the chunks of the one above."""
    level = cyx[None]
    out: list[da.Array] = []
    while True:
        out.append(level.rechunk(_chunks(level.shape)))
        if len(out) == n_levels:
            return out
        level = _halve_yx(out[-1])


def _store(sources: list[da.Array], targets: list[Any], regions: list[tuple[slice, ...]]) -> None:
    """One dask computation: every source into its region of its target (a few planes' levels)."""
    da.store(sources, targets, regions=regions, lock=False, compute=True)


def _planes_per_compute(h: int, w: int) -> int:
    """How many planes one computation stores: ``_CHUNKS_AT_ONCE`` level-0 chunks' worth, one at least.

    Examples
    --------
    >>> _planes_per_compute(10_000, 10_000), _planes_per_compute(2000, 2000), _planes_per_compute(64, 72)
    (1, 4, 64)
    """
    per_plane = -(-h // _CHUNK) * -(-w // _CHUNK)
    return max(1, _CHUNKS_AT_ONCE // per_plane)


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
        was not placed (its plane stays 0, the arrays' fill value: nothing is written there).
    reference_path : str
        The reference image (its full-resolution grid is the stack's y/x).
    pixel_size : (px, py), optional
        Micrometres per reference pixel.

    Raises
    ------
    InputImageError
        No slide is placed, or the placed slides differ in channel count (before anything is written).

    Notes
    -----
    Planes are stored a few at a time (whole planes, at most ``_CHUNKS_AT_ONCE`` level-0 chunks
    per dask computation, one plane at least), each with all its levels: the graph held by the
    caller is that of a few planes, whatever the number of slides. With a distributed client
    active the computations run on its workers.

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
    channels: int | None = None
    dtype: np.dtype[Any] | None = None
    for slide_id, image_path, matrix in slides:  # every placed slide's channels, before anything is written
        if matrix is None:
            continue
        source = open_image(image_path).source(0)
        n = 1 if len(source.shape) == 2 else int(source.shape[2])
        if channels is not None and n != channels:
            raise InputImageError(f"slide {slide_id!r} ({image_path}) has {n} channel(s), the series "
                                  f"{channels}: a stack needs one channel count")
        channels = n
        dtype = dtype if dtype is not None else np.dtype(source.dtype)
    if channels is None or dtype is None:
        raise InputImageError("no slide of the series was placed: nothing to stack")
    shapes = _level_shapes(len(slides), channels, h, w)
    placed = [(z, image_path, matrix) for z, (_, image_path, matrix) in enumerate(slides) if matrix is not None]
    at_once = _planes_per_compute(h, w)
    final = location(str(path))
    with staging(final) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        targets = [group.create_array(str(i), shape=shp, dtype=dtype, chunks=_chunks(shp),
                                      dimension_names=["z", "c", "y", "x"], fill_value=0)
                   for i, shp in enumerate(shapes)]
        for start in range(0, len(placed), at_once):  # a few whole planes per computation
            sources: list[da.Array] = []
            into: list[Any] = []
            regions: list[tuple[slice, ...]] = []
            for z, image_path, matrix in placed[start:start + at_once]:
                arr = warp(open_image(image_path), matrix, like=reference, chunks=_CHUNK)
                cyx = arr[None] if arr.ndim == 2 else da.moveaxis(arr, 2, 0)
                sources += _plane_levels(cyx.astype(dtype), len(shapes))
                into += targets
                regions += [(slice(z, z + 1),)] * len(shapes)
            _store(sources, into, regions)
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
    return [tuple(s) for s in shapes]
