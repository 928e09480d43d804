"""A whole slide warped through a stored transform at full resolution, written atomically.

The slide is any file :func:`drmime_batch.io.open_image` reads (another stain of the moving
section, a tissue mask, a label image). The chunked warp of :mod:`drmime_batch.io._warp` builds
it lazily, block by block, each task reading only the source window it needs, so peak memory is a
few blocks per thread whatever the slide's size; the OME writers of :mod:`drmime_batch.io._omezarr`
write it (2048-pixel shards; each pyramid level halved from the blocks of the level above while
they are in memory).

Output: ``*.zarr`` (e.g. ``OUT.ome.zarr``) is an OME-Zarr 0.5 multiscale group;
``*.tif``/``*.tiff`` (e.g. ``OUT.ome.tif``) a tiled, compressed, pyramidal OME-TIFF. Either is
written under a hidden temporary sibling name and renamed into place when complete, so an
interrupted run leaves no half-written output under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from drmime_batch.errors import ConfigError, DrmimeWarning, InputImageError

if TYPE_CHECKING:
    from drmime_batch.io._fs import Location
    from drmime_batch.transforms._stored import StoredTransform

__all__ = ["ORDERS", "check_slide_size", "output_format", "warp_slide"]

logger = logging.getLogger(__name__)

#: interpolation names -> the warp's order
ORDERS = {"linear": 1, "nearest": 0}
_TIFF_SUFFIXES = (".tif", ".tiff")
#: relative difference below which two pixel sizes are the same
_SAME_PIXEL_SIZE = 0.01


def output_format(out: str | Path) -> Literal["ome-zarr", "ome-tiff"]:
    """The format an output name asks for: ``*.zarr`` → OME-Zarr, ``*.tif``/``*.tiff`` → OME-TIFF.

    Examples
    --------
    >>> output_format("cd31-on-he.ome.zarr"), output_format("mask.ome.tif")
    ('ome-zarr', 'ome-tiff')
    """
    name = str(out).rstrip("/").lower()
    if name.endswith(".zarr"):
        return "ome-zarr"
    if name.endswith(_TIFF_SUFFIXES):
        return "ome-tiff"
    raise ConfigError(f"output {out}: unknown format, name it NAME.ome.zarr (OME-Zarr) or NAME.ome.tif (OME-TIFF)")


def _order(order: str | int) -> int:
    if isinstance(order, str) and order in ORDERS:
        return ORDERS[order]
    if order in (0, 1) and not isinstance(order, bool):
        return int(order)
    raise ConfigError(f"order must be 'linear' or 'nearest', got {order!r}")


def _same_file(a: str | Path, b: str | Path) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return Path(a).resolve() == Path(b).resolve()
    return False


def _target_grid(
    transform: StoredTransform, role: Literal["fixed", "moving"], like: str | Path | Sequence[int] | None
) -> tuple[tuple[int, int], tuple[float, float] | None]:
    """Full-resolution ``(H, W)`` of the output frame and its pixel size (µm), if known."""
    from drmime_batch.errors import IncompleteOutputError
    from drmime_batch.io import open_image

    pixel_size = transform.pixel_size(role)
    if like is not None and not isinstance(like, (str, os.PathLike)):
        given = tuple(int(v) for v in like)
        if len(given) < 2 or min(given[:2]) < 1:
            raise ConfigError(f"like must be an image or a (height, width) shape, got {like!r}")
        return (given[0], given[1]), pixel_size
    if like is not None:
        image = open_image(like)
        return (int(image.shape[0]), int(image.shape[1])), pixel_size or image.pixel_size
    shape = transform.image_shape(role)
    if shape is None:
        recorded = transform.image_path(role)
        raise IncompleteOutputError(
            f"the {role} frame of {transform.entry!r} in {transform.store} has no known size: "
            + (f"its image {recorded} cannot be opened" if recorded else "the store does not record its image")
            + f" (give an image of the {role} frame as like)"
        )
    return (int(shape[0]), int(shape[1])), pixel_size


def _size_mismatch(transform: StoredTransform, role: Literal["fixed", "moving"], path: str | Path,
                   slide: Any) -> str | None:
    """Why ``slide`` is not the size of the ``role`` image the transform was computed on, or ``None``."""
    recorded = transform.recorded_shape(role)
    if recorded is None:  # not recorded (an older store): nothing to compare with
        return None
    h, w = (int(v) for v in slide.shape[:2])
    rh, rw = recorded[:2]
    if (h, w) == (rh, rw):
        return None
    image = transform.image_path(role)
    what = f"the {role} image" + (f" {image}" if image else "")
    sizes = ""
    mine, theirs = slide.pixel_size, transform.attrs.get(f"{role}_pixel_size_um")
    if mine is not None and theirs:
        px = float(theirs[0])
        if abs(float(mine[0]) - px) > _SAME_PIXEL_SIZE * px:
            sizes = f"; its pixel size is {float(mine[0]):.4g} µm, that image's {px:.4g} µm"
    scale_y, scale_x = rh / h, rw / w
    hint = ""
    if abs(scale_y - scale_x) < 0.02 * max(scale_y, scale_x) and abs(scale_y - 1) > 0.05:
        hint = (f" (about {scale_y:.3g}x smaller: another pyramid level?)" if scale_y > 1
                else f" (about {1 / scale_y:.3g}x larger)")
    return (f"slide {path} is {h}x{w} pixels (H x W) at full resolution but the transform of {transform.entry!r} "
            f"in {transform.store} was computed on {what} of {rh}x{rw}{hint}{sizes}: unless the slide is on that "
            "image's pixel grid, the warped slide is misplaced")


def check_slide_size(transform: StoredTransform, path: str | Path, slide: Any, *, inverse: bool = False,
                     strict: bool = False) -> bool:
    """Compare a slide's full-resolution size with the image the transform was computed on.

    A transform applied to the wrong slide, or to another pyramid level of the right one, runs
    without error and writes a misplaced result; the recorded ``moving_shape`` (``fixed_shape``
    with ``inverse``) catches it. Only the height and width are compared (a mask of an RGB image
    has no channels). Stores that do not record the shape are not checked.

    Parameters
    ----------
    transform : StoredTransform
    path : str or Path
        The slide's file (for the message).
    slide : MultiscaleImage
        The slide opened (its ``shape`` and ``pixel_size``).
    inverse : bool
        ``False``: the slide should be the moving image's size; ``True``: the fixed image's.
    strict : bool
        Raise instead of warning.

    Returns
    -------
    bool
        ``True`` when the sizes agree or nothing is recorded; ``False`` after a warning.

    Raises
    ------
    InputImageError
        ``strict`` and the sizes differ.

    Warns
    -----
    DrmimeWarning
        The sizes differ (one line: both sizes, the recorded image, the pixel sizes when they differ).
    """
    problem = _size_mismatch(transform, "fixed" if inverse else "moving", path, slide)
    if problem is None:
        return True
    if strict:
        raise InputImageError(problem)
    warnings.warn(problem + " (warped all the same)", DrmimeWarning, stacklevel=3)
    return False


def warp_slide(
    transform: StoredTransform,
    path: str | Path,
    out: str | Path,
    *,
    inverse: bool = False,
    order: Literal["linear", "nearest"] | int = "linear",
    like: str | Path | Sequence[int] | None = None,
    chunks: int | None = None,
    scheduler: str | None = None,
    strict: bool = False,
) -> Location:
    """Warp a slide into the other frame of a stored transform and write it as OME-Zarr or OME-TIFF.

    Parameters
    ----------
    transform : StoredTransform
        From :func:`~drmime_batch.transforms.open_transform`.
    path : str or Path
        The slide to warp (any format :func:`drmime_batch.io.open_image` reads), read at full
        resolution. ``inverse=False``: a slide of the moving section, written on the fixed
        image's full-resolution grid; ``inverse=True``: a slide of the fixed frame, written on
        the moving image's grid.
    out : str or Path
        ``NAME.ome.zarr`` (OME-Zarr 0.5) or ``NAME.ome.tif`` (pyramidal OME-TIFF); replaced
        atomically when it exists.
    order : {"linear", "nearest"}
        Bilinear for intensities, nearest for masks and label images (values are kept exactly,
        and the pyramid levels pick pixels instead of averaging).
    like : image path or (H, W), optional
        The output grid; default: the target image's shape as the store records it (else read
        from the image file the store names).
    chunks : int, optional
        Warp block side in pixels (default 2048, one output shard per task).
    scheduler : str, optional
        A dask scheduler name for this call (``"threads"``, ``"synchronous"``); default: the
        active one (a distributed ``Client`` when one is current).
    strict : bool
        Refuse a slide whose full-resolution size differs from the image the transform was
        computed on (``moving_shape``, or ``fixed_shape`` with ``inverse``, as recorded);
        default: warn and warp it all the same (:func:`check_slide_size`).

    Returns
    -------
    Path or str
        ``out`` as written.

    Raises
    ------
    ImageNotFoundError, UnsupportedFormatError, CorruptImageError
        The slide cannot be read.
    InputImageError
        ``strict`` and the slide is not the size the transform was computed on.
    IncompleteOutputError
        The target frame's size is unknown (no recorded shape and its image cannot be opened).
    ConfigError
        An unknown output format or order, or ``out`` is the slide itself.

    Warns
    -----
    DrmimeWarning
        The slide is not the size the transform was computed on (and not ``strict``).
    """
    import dask

    from drmime_batch.io import open_image
    from drmime_batch.io._atomic import remove_path, replace_path, staging
    from drmime_batch.io._fs import basename, is_url, join, location
    from drmime_batch.io._omezarr import SCRATCH_ZSTD_LEVEL, SHARD_SIDE, write_ome_tiff, write_ome_zarr

    fmt = output_format(out)
    code = _order(order)
    if not is_url(str(path)) and not is_url(str(out)) and _same_file(path, out):
        raise ConfigError(f"output {out} is the slide being warped: choose another name")
    slide = open_image(path)
    check_slide_size(transform, path, slide, inverse=inverse, strict=strict)
    role: Literal["fixed", "moving"] = "moving" if inverse else "fixed"
    out_shape, pixel_size = _target_grid(transform, role, like)
    data = transform._resampled(
        slide.source(0), out_shape, into_fixed=not inverse, order=code, chunks=int(chunks or SHARD_SIDE)
    )
    record = {
        "drmime_batch": {
            "applied": {
                "store": str(transform.store), "entry": transform.entry, "slide": str(path),
                "direction": "fixed->moving" if inverse else "moving->fixed", "frame": role,
                "order": "nearest" if code == 0 else "linear",
                "transform_write_id": transform.attrs.get("write_id"),
            }
        }
    }  # fmt: skip
    final = location(out)
    name = basename(final)
    labels = code == 0
    setting = dask.config.set(scheduler=scheduler) if scheduler else contextlib.nullcontext()
    with setting:
        if fmt == "ome-zarr":
            with staging(final) as tmp:
                write_ome_zarr(tmp, data, name=name, pixel_size=pixel_size, labels=labels, attributes=record)
                replace_path(tmp, final)
        else:
            scratch_name = join(
                final.parent if isinstance(final, Path) else str(final).rsplit("/", 1)[0], f"{name}.zarr"
            )
            with staging(scratch_name, in_place=False) as scratch, staging(final) as tmp:
                try:
                    write_ome_zarr(scratch, data, name=name, pixel_size=pixel_size, labels=labels, attributes=record,
                                   zstd_level=SCRATCH_ZSTD_LEVEL)
                    write_ome_tiff(tmp, scratch, pixel_size=pixel_size)
                    replace_path(tmp, final)
                finally:
                    remove_path(scratch)
    logger.info("warped %s (%s) into the %s frame of %s: %s", path, slide.shape, role, transform.entry, final)
    return final
