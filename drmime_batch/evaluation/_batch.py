"""Landmark figures of a whole batch: one dict per queue row, plus the summary.

Works on any objects with the attributes of :class:`drmime_batch.queue.PairRow` (``pair_id``,
``state``, ``fixed``, ``fixed_landmarks``, ``moving_landmarks``, ``matrix``, ``seconds``,
``result``), so this layer does not import the queue.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, cast

import numpy as np

from drmime_batch.errors import (
    CorruptImageError,
    DrmimeError,
    ImageNotFoundError,
    LandmarkError,
    UnsupportedFormatError,
)
from drmime_batch.evaluation._fit import best_fit_matrix
from drmime_batch.evaluation._landmarks import read_landmarks
from drmime_batch.evaluation._scores import evaluate_matrix, summarise
from drmime_batch.outcome import PairOutcome

__all__ = ["SUMMARY_KEYS", "evaluate_rows", "image_shape", "summarise_rows"]

logger = logging.getLogger(__name__)

#: Per-pair figures summarised over a batch (median, mean, 90th percentile).
SUMMARY_KEYS = ("rtre_median", "rtre_mean", "rtre_max", "naed", "robustness", "identity_rtre_median",
                "floor_rtre_median", "floor_ratio", "tre_median_px", "tre_median_um", "seconds")

_PIL_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".svs", ".ndpi", ".scn", ".btf"}


class _RowLike(Protocol):
    # read-only, as the queue's PairRow (a frozen dataclass) is
    @property
    def pair_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def fixed(self) -> str: ...
    @property
    def fixed_landmarks(self) -> str | None: ...
    @property
    def moving_landmarks(self) -> str | None: ...
    @property
    def matrix(self) -> list[list[float]] | None: ...
    @property
    def seconds(self) -> float | None: ...
    @property
    def result(self) -> dict[str, Any]: ...


def _shape_from_axes(shape: Sequence[int], axes: str) -> tuple[int, int]:
    axes = axes.upper()
    if "Y" in axes and "X" in axes:
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
    raise CorruptImageError(f"axes {axes!r} have no Y and X")


def image_shape(path: str | Path) -> tuple[int, int]:
    """Full-resolution ``(H, W)`` of an image file, read from its header only.

    Reads JPEG/PNG (Pillow), TIFF/OME-TIFF/SVS (tifffile, level 0) and OME-Zarr / zarr arrays
    (the first multiscale dataset). Nothing but metadata is loaded.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The format is not one of the above or has no Y/X axes.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.png"
    >>> Image.new("RGB", (40, 30)).save(p)
    >>> image_shape(p)
    (30, 40)
    """
    p = Path(path)
    if not p.exists():
        raise ImageNotFoundError(f"image {p} does not exist")
    suffix = p.suffix.lower()
    if suffix in _PIL_SUFFIXES:
        from PIL import Image

        with Image.open(p) as im:
            w, h = im.size
        return int(h), int(w)
    if suffix in _TIFF_SUFFIXES:
        import tifffile

        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            return _shape_from_axes(series.shape, series.axes)
    if p.is_dir() or suffix == ".zarr":
        import zarr

        node = zarr.open(str(p), mode="r")
        if isinstance(node, zarr.Array):
            shape = node.shape
            return (int(shape[0]), int(shape[1])) if len(shape) == 3 and shape[2] <= 4 else (
                int(shape[-2]), int(shape[-1]))
        attrs: dict[str, Any] = dict(node.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise UnsupportedFormatError(f"zarr group {p} has no 'multiscales' metadata")
        ms = multiscales[0]
        arr = cast("zarr.Array[Any]", node[ms["datasets"][0]["path"]])  # NGFF datasets name arrays
        axes = "".join(str(a["name"] if isinstance(a, Mapping) else a)[0] for a in ms.get("axes", []))
        if len(axes) == len(arr.shape):
            return _shape_from_axes(arr.shape, axes)
        return int(arr.shape[-2]), int(arr.shape[-1])
    raise UnsupportedFormatError(f"cannot read the size of {p}: unknown image format {suffix!r}")


def _fixed_shape(row: _RowLike) -> tuple[int, int]:
    shape = PairOutcome.from_row(row).fixed_shape
    if shape is not None and len(shape) >= 2:
        return int(shape[0]), int(shape[1])
    return image_shape(row.fixed)


def _pixel_size(row: _RowLike) -> tuple[float, float] | None:
    """µm per pixel of the moving image (where landmark errors are measured), when recorded."""
    moving = PairOutcome.from_row(row).moving
    return None if moving is None else moving.pixel_size


def evaluate_rows(rows: Iterable[_RowLike], *, floor: bool = True) -> list[dict[str, Any]]:
    """Score every done pair that has landmarks; one dict per row, in order.

    Reads the landmark files and the fixed images' headers; modifies nothing.

    Parameters
    ----------
    rows : iterable of PairRow-like
        Queue rows (``drmime_batch.queue.Queue.open(path).rows()``).
    floor : bool
        Also fit the least-squares affine matrix to each pair's landmarks and report its median
        rTRE (``floor_rtre_median``) and the ratio of the registration to it (``floor_ratio``).

    Returns
    -------
    list of dict
        Keys ``pair_id``, ``state``, ``seconds``, ``error``, ``matrix``, ``has_landmarks``,
        ``landmark_error`` (a message when the landmarks could not be scored, else None) and,
        when scored, every field of :class:`LandmarkScores` (``rtre_median``, ``naed``, ...)
        plus ``floor_rtre_median`` / ``floor_ratio``.
    """
    out: list[dict[str, Any]] = []
    for row in rows:
        rec: dict[str, Any] = {
            "pair_id": row.pair_id,
            "state": row.state,
            "seconds": row.seconds,
            "error": getattr(row, "error", None),
            "matrix": row.matrix,
            "has_landmarks": bool(row.fixed_landmarks and row.moving_landmarks),
            "landmark_error": None,
        }
        out.append(rec)
        if not rec["has_landmarks"] or row.state != "done" or row.matrix is None:
            continue
        try:
            fixed = read_landmarks(row.fixed_landmarks)  # type: ignore[arg-type]
            moving = read_landmarks(row.moving_landmarks)  # type: ignore[arg-type]
            shape = _fixed_shape(row)
            scores = evaluate_matrix(np.asarray(row.matrix, dtype=np.float64), fixed, moving,
                                     fixed_shape=shape, pixel_size=_pixel_size(row))
        except (DrmimeError, OSError, ValueError) as exc:
            logger.warning("pair %s: landmarks not scored: %s", row.pair_id, exc)
            rec["landmark_error"] = str(exc)
            continue
        rec.update(scores.to_dict())
        if floor:
            try:
                best = evaluate_matrix(best_fit_matrix(fixed, moving), fixed, moving, fixed_shape=shape)
            except LandmarkError as exc:
                logger.info("pair %s: no affine floor: %s", row.pair_id, exc)
            else:
                rec["floor_rtre_median"] = best.rtre_median
                rec["floor_ratio"] = scores.rtre_median / best.rtre_median if best.rtre_median > 0 else None
    return out


def summarise_rows(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median, mean and 90th percentile of each :data:`SUMMARY_KEYS` figure over the scored pairs.

    Examples
    --------
    >>> summarise_rows([{"rtre_median": 0.1}, {"rtre_median": 0.3}])["rtre_median"]["median"]
    0.2
    """
    summary: dict[str, dict[str, Any]] = {}
    for key in SUMMARY_KEYS:
        s = summarise(r.get(key) for r in records if isinstance(r.get(key), (int, float)))
        if s["n"]:
            summary[key] = s
    return summary
