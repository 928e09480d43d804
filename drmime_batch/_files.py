"""``register_files``: two slide files in, one full-resolution result out.

The one place that opens two image files (paths or URLs), picks the pyramid level each is
registered at, reads it (or, for small tissue on a large slide, the tissue's box from a finer
level), reads the tissue masks given, registers with :func:`drmime_batch.register` and expresses
the matrix at the full resolution of each file. The batch worker and ``drmime-batch register``
both call it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from drmime_batch.errors import (
    CorruptImageError,
    DrmimeError,
    ImageNotFoundError,
    InputImageError,
    RegistrationDivergedError,
)
from drmime_batch.outcome import ImageSide

__all__ = ["FileRegistration", "register_files"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class FileRegistration:
    """The result of :func:`register_files`.

    Attributes
    ----------
    result : RegistrationResult
        At the full resolution of both files: ``result.matrix`` maps a fixed full-resolution pixel
        ``(x, y)`` to the moving full-resolution pixel it shows; ``fixed_shape`` and
        ``moving_shape`` are the files' full-resolution shapes.
    fixed, moving : ImageSide
        Each file, its full-resolution shape and pixel size, and the level (and crop) registered.
    seconds : float
        Wall time of the whole call (reading included).
    """

    result: Any
    fixed: ImageSide
    moving: ImageSide
    seconds: float

    @property
    def matrix(self) -> np.ndarray:
        """Fixed → moving, full-resolution pixels (``result.matrix``)."""
        return np.asarray(self.result.matrix)


def _where(role: str, kind: str, path: Any) -> str:
    return f"{role} {kind} {path}"


def _located(exc: DrmimeError, where: str) -> DrmimeError:
    """``exc`` told as ``<where>: <cause>``, of the same class, with ``where`` and ``cause`` attached."""
    cause = " ".join(str(exc).split())
    for prefix in (f"{where}: ",):
        if cause.startswith(prefix):
            cause = cause[len(prefix):]
    out = type(exc)(f"{where}: {cause}")
    out.where = where  # type: ignore[attr-defined]
    out.cause = cause  # type: ignore[attr-defined]
    return out


def _on_file(role: str, kind: str, path: Any, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` (reading ``path``); any failure becomes a :class:`DrmimeError` naming the file.

    A reader failing in its own way (a decoder's ``ValueError``, a truncated stream) is a file
    that cannot be read: :class:`CorruptImageError`.
    """
    where = _where(role, kind, path)
    try:
        return fn()
    except ImageNotFoundError as exc:
        raise _located(ImageNotFoundError("no such file or directory"), where) from exc
    except DrmimeError as exc:
        name = os.path.basename(str(path))
        text = " ".join(str(exc).split())
        for prefix in (f"{path}: ", f"{name}: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
        raise _located(type(exc)(text), where) from exc
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - the reader's own error: the file cannot be decoded
        text = " ".join(str(exc).split())
        raise _located(CorruptImageError(f"cannot be read: {type(exc).__name__}: {text}"), where) from exc


def _check_content(role: str, path: Any, arr: np.ndarray) -> None:
    a = np.asarray(arr)
    if a.size == 0 or not np.isfinite(a).any() or float(np.nanmax(a)) == float(np.nanmin(a)):
        value = float(np.nanmax(a)) if a.size and np.isfinite(a).any() else "none"
        raise _located(InputImageError(f"the image is empty or constant (shape {a.shape}, value {value})"),
                       _where(role, "image", path))


def register_files(
    fixed: PathLike,
    moving: PathLike,
    *,
    fixed_mask: PathLike | None = None,
    moving_mask: PathLike | None = None,
    config: Any = None,
    callback: Callable[[int, float], None] | None = None,
    scheduler: str | None = None,
    **options: Any,
) -> FileRegistration:
    """Register the image file ``moving`` onto the image file ``fixed``; the matrix at full resolution.

    Both files are opened lazily (:func:`drmime_batch.io.open_image`: TIFF/OME-TIFF/SVS/NDPI,
    OME-Zarr/zarr, PNG, JPEG, or an fsspec URL of one). Each is registered at the pyramid level
    whose longer side is at most ``max_size``; with automatic masks (``mask="auto"``, the default)
    and tissue small on a large slide, the tissue's box is read from a finer level instead. Mask
    files are read at their level closest to, and not smaller than, the image level.

    Parameters
    ----------
    fixed, moving : str or path-like
        The two image files (or URLs).
    fixed_mask, moving_mask : str or path-like, optional
        Tissue-mask images (non-zero = tissue) at the image's resolution or a lower one of the same
        aspect ratio.
    config : RegistrationConfig, optional
        Settings; ``options`` override its fields by name (as :func:`drmime_batch.register`).
    callback : callable, optional
        ``callback(iteration, similarity)`` for live progress.
    scheduler : str, optional
        The dask scheduler reading the images (``"synchronous"`` inside a task of a distributed
        cluster, so the task does not wait on chunk tasks of its own cluster); None: the active one.
    **options
        :class:`RegistrationConfig` fields (``transform``, ``metric``, ``max_size``, ``device``, ...).

    Returns
    -------
    FileRegistration
        ``.result`` (a :class:`RegistrationResult` at full resolution), ``.fixed`` / ``.moving``
        (:class:`~drmime_batch.outcome.ImageSide`: shape, pixel size, level and crop registered)
        and ``.seconds``.

    Raises
    ------
    ImageNotFoundError, CorruptImageError, UnsupportedFormatError, StorageAccessError, InputImageError
        A file (image or mask) that is missing, unreadable, constant or does not fit; the message
        starts with ``"<role> image|mask <path>: "``.
    ConfigError
        An unknown option or a value of the wrong type.
    RegistrationDivergedError
        The optimisation produced no finite transform.

    Examples
    --------
    >>> from importlib.resources import files
    >>> d = files("drmime_batch") / "examples/cima-lung-lesion3/images"
    >>> reg = register_files(d / "29-041-Izd2-w35-He-les3.jpg", d / "29-041-Izd2-w35-CD31-3-les3.jpg",
    ...                      max_size=128, max_iterations=30, min_iterations=10)  # doctest: +SKIP
    >>> reg.matrix.shape, reg.fixed.level >= 0  # doctest: +SKIP
    ((3, 3), True)
    """
    from drmime_batch._api import register
    from drmime_batch.core import (
        RegistrationConfig,
        matrix_from_crop,
        matrix_from_level,
    )
    from drmime_batch.io import open_image, read_mask, read_tissue

    t0 = time.perf_counter()
    base = config if config is not None else RegistrationConfig()
    cfg = RegistrationConfig.from_dict(base.to_dict() | options)  # refuses unknown options first
    paths = {"fixed": fixed, "moving": moving}
    mask_files = {"fixed": fixed_mask, "moving": moving_mask}
    images: dict[str, Any] = {}
    for role, path in paths.items():
        img = _on_file(role, "image", path, partial(open_image, os.fspath(path)))
        level = _on_file(role, "image", path, partial(img.level_for, max_size=cfg.max_size))
        pixels = _on_file(role, "image", path, partial(img.read_level, level, scheduler=scheduler))
        _check_content(role, path, pixels)
        images[role] = [img, level, pixels, (0, 0), None]
    masks: dict[str, Any] = {}
    for role, mask_path in mask_files.items():
        if mask_path is not None:
            shape = np.shape(images[role][2])
            masks[f"{role}_mask"] = _on_file(role, "mask", mask_path,
                                             partial(read_mask, os.fspath(mask_path), shape, scheduler=scheduler))
    # Small tissue on a large slide: the tissue's box from a finer level (automatic masks only; a
    # user mask keeps the level it was read for).
    for role in ("fixed", "moving"):
        if cfg.mask != "none" and mask_files[role] is None:
            img, level, pixels, _, _ = images[role]
            pixels, level, offset, crop = _on_file(
                role, "image", paths[role], partial(read_tissue, img, level, pixels, cfg.max_size, scheduler=scheduler))
            images[role] = [img, level, pixels, offset, crop]
    (f_img, f_level, f_px, f_off, _), (m_img, m_level, m_px, m_off, _) = images["fixed"], images["moving"]

    try:
        result = register(f_px, m_px, config=cfg, callback=callback, **masks)
    except InputImageError as exc:  # "fixed mask has shape ..." / "moving image is constant": name the file
        text = " ".join(str(exc).split())
        role = "moving" if text.startswith("moving") else "fixed"
        kind = "mask" if text.startswith(f"{role} mask") and mask_files[role] is not None else "image"
        named = mask_files[role] if kind == "mask" else paths[role]
        raise _located(InputImageError(text), _where(role, kind, named)) from exc
    f_ds, m_ds = f_img.downsamples[f_level], m_img.downsamples[m_level]
    level_matrix = matrix_from_crop(result.matrix, fixed_offset=f_off, moving_offset=m_off)
    matrix = matrix_from_level(level_matrix, fixed_downsample=f_ds, moving_downsample=m_ds)
    if not np.all(np.isfinite(matrix)):
        raise RegistrationDivergedError(f"registering {moving} onto {fixed}: the transform is not finite")
    field = None if result.field is None else result.field.shifted(f_off).rescaled(f_ds)
    full = dataclasses.replace(result, matrix=matrix, field=field, fixed_shape=tuple(f_img.shape),
                               moving_shape=tuple(m_img.shape))
    sides = {
        role: ImageSide(path=str(paths[role]), shape=tuple(img.shape), pixel_size=img.pixel_size, level=level,
                        downsample=img.downsamples[level], crop=crop,
                        mask=None if mask_files[role] is None else str(mask_files[role]))
        for role, (img, level, _, _, crop) in (("fixed", images["fixed"]), ("moving", images["moving"]))
    }
    return FileRegistration(result=full, fixed=sides["fixed"], moving=sides["moving"],
                            seconds=time.perf_counter() - t0)
