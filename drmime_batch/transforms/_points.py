"""Point tables in the ANHIR CSV convention, mapped through a stored transform.

An ANHIR landmark file is a CSV with a header ``,X,Y`` (an unnamed index column, ``X`` = column,
``Y`` = row, full-resolution pixels). Here the ``X`` and ``Y`` columns are found by name (any
case) and every other column and every row is written back unchanged, in the same order: only
the two coordinates change.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from drmime_batch.errors import ConfigError, DrmimeWarning, LandmarkError

if TYPE_CHECKING:
    from drmime_batch.transforms._stored import StoredTransform

__all__ = ["PointsTable", "read_points_csv", "transform_points_csv", "write_points_csv"]


@dataclass(frozen=True)
class PointsTable:
    """A point CSV as read: its header, its rows (strings) and where ``X`` and ``Y`` are.

    Attributes
    ----------
    path : str
        The file read.
    header : list of str
    rows : list of list of str
        Every data row, blank lines left out.
    x_column, y_column : int
        Indices of the ``X`` and ``Y`` columns.
    xy : ndarray, shape (N, 2)
        The points, float64.
    """

    path: str
    header: list[str]
    rows: list[list[str]]
    x_column: int
    y_column: int
    xy: np.ndarray


def _number(text: str, path: str, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LandmarkError(f"point file {path}: line {line}, column {column} is {text!r}, expected a number") from None
    if not math.isfinite(value):
        raise LandmarkError(f"point file {path}: line {line}, column {column} is {text!r}, expected a finite number")
    return value


def read_text(path: str | Path, kind: str) -> str:
    """The text of a UTF-8 file (a BOM is dropped); missing or unreadable: a one-line LandmarkError.

    ``kind`` names the file in the message (``"point file"``, ``"GeoJSON file"``).
    """
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LandmarkError(f"{kind} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LandmarkError(f"{kind} {path} cannot be read as text: {exc}") from None


def read_points_csv(path: str | Path) -> PointsTable:
    """Read a point CSV with ``X`` and ``Y`` columns (ANHIR ``,X,Y``), keeping every column.

    Raises
    ------
    LandmarkError
        The file is missing or unreadable, has no ``X`` or ``Y`` column, a row without a
        number there, or no point at all; the message names the file (and the line).

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "lm.csv"
    >>> _ = p.write_text(",X,Y,name\\n0,10.5,20,a\\n1,3,4,b\\n")
    >>> t = read_points_csv(p)
    >>> t.header, t.xy.tolist()
    (['', 'X', 'Y', 'name'], [[10.5, 20.0], [3.0, 4.0]])
    """
    name = str(path)
    text = read_text(path, "point file")
    try:
        lines = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise LandmarkError(f"point file {name} is not a CSV: {exc}") from None
    if not lines:
        raise LandmarkError(f"point file {name} is empty (expected a header with X and Y columns, e.g. ',X,Y')")
    header = lines[0]
    upper = [h.strip().upper() for h in header]
    if "X" not in upper or "Y" not in upper:
        raise LandmarkError(
            f"point file {name} has no X and Y columns (header {','.join(header)!r}, expected e.g. ',X,Y')"
        )
    ix, iy = upper.index("X"), upper.index("Y")
    rows = lines[1:]
    if not rows:
        raise LandmarkError(f"point file {name} has a header but no point")
    xy = np.empty((len(rows), 2))
    for i, row in enumerate(rows):
        line = i + 2  # 1-based, after the header (blank lines are not counted)
        if len(row) <= max(ix, iy):
            raise LandmarkError(
                f"point file {name}: line {line} has {len(row)} columns, X and Y are columns {ix + 1} and {iy + 1}"
            )
        xy[i] = _number(row[ix], name, line, "X"), _number(row[iy], name, line, "Y")
    return PointsTable(path=name, header=header, rows=rows, x_column=ix, y_column=iy, xy=xy)


def write_points_csv(path: str | Path, table: PointsTable, xy: np.ndarray) -> Path:
    """Write ``table`` with its ``X``/``Y`` replaced by ``xy``, atomically (a temporary file renamed).

    Coordinates are written in full float precision (``repr``), the other cells as read.
    """
    pts = np.asarray(xy, dtype=np.float64)
    if pts.shape != (len(table.rows), 2):
        raise ConfigError(f"{len(table.rows)} rows but points of shape {pts.shape}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(table.header)
            for row, (x, y) in zip(table.rows, pts, strict=True):
                cells = list(row)
                cells[table.x_column], cells[table.y_column] = repr(float(x)), repr(float(y))
                writer.writerow(cells)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _outside(xy: np.ndarray, shape: tuple[int, ...] | None) -> int:
    """How many points lie outside an image of ``shape`` (pixel edges at -0.5 and W - 0.5)."""
    if not shape:
        return 0
    h, w = shape[0], shape[1]
    out = (xy[:, 0] < -0.5) | (xy[:, 0] > w - 0.5) | (xy[:, 1] < -0.5) | (xy[:, 1] > h - 0.5)
    return int(out.sum())


def transform_points_csv(
    transform: StoredTransform,
    src: str | Path,
    out: str | Path,
    *,
    inverse: bool = False,
    units: Literal["px", "um"] = "px",
) -> dict[str, int]:
    """Map the points of a CSV through a stored transform and write them as a CSV of the same form.

    Parameters
    ----------
    transform : StoredTransform
        From :func:`~drmime_batch.transforms.open_transform`.
    src, out : str or Path
        The point CSV read (``X``/``Y`` columns) and the one written (atomically).
    inverse : bool
        ``False``: ``src`` holds moving-section points, ``out`` gets fixed-frame points;
        ``True``: the other way.
    units : {"px", "um"}
        ``"um"``: both files are in micrometres, converted with the moving image's pixel size
        for moving-section points and the fixed image's for fixed-frame points.

    Returns
    -------
    dict
        ``{"points": N, "outside": n}``: ``n`` points lay outside the source image (when its
        shape is known); they are mapped and written all the same, and a
        :class:`~drmime_batch.errors.DrmimeWarning` says how many.

    Raises
    ------
    LandmarkError
        A malformed CSV (see :func:`read_points_csv`).
    ConfigError
        ``units="um"`` but a pixel size is unknown.

    Examples
    --------
    >>> import tempfile
    >>> from drmime_batch.io import write_transform
    >>> from drmime_batch.transforms import open_transform
    >>> d = Path(tempfile.mkdtemp())
    >>> write_transform(d / "out.zarr", "p1", [[1, 0, 5], [0, 1, -2], [0, 0, 1]], attrs={})
    >>> _ = (d / "moving.csv").write_text(",X,Y\\n0,15,8\\n")
    >>> transform_points_csv(open_transform(d / "out.zarr", "p1"), d / "moving.csv", d / "fixed.csv")
    {'points': 1, 'outside': 0}
    >>> (d / "fixed.csv").read_text()
    ',X,Y\\n0,10.0,10.0\\n'
    """
    if units not in ("px", "um"):
        raise ConfigError(f"units must be 'px' or 'um', got {units!r}")
    table = read_points_csv(src)
    source_role, target_role = ("fixed", "moving") if inverse else ("moving", "fixed")
    xy = table.xy
    if units == "um":
        sizes = {}
        for role in (source_role, target_role):
            size = transform.pixel_size(role)  # type: ignore[arg-type]
            if size is None:
                raise ConfigError(
                    f"the {role} image's pixel size of {transform.entry!r} in {transform.store} is unknown "
                    f"(not recorded, and {transform.image_path(role) or 'its file'} does not give it): "  # type: ignore[arg-type]
                    "points can only be mapped in pixels"
                )
            sizes[role] = np.asarray(size, dtype=np.float64)
        xy = xy / sizes[source_role]
    outside = _outside(xy, transform.image_shape(source_role))  # type: ignore[arg-type]
    if outside:
        warnings.warn(
            f"{outside} of {len(xy)} points of {src} lie outside the {source_role} image; they were mapped all the same",
            DrmimeWarning,
            stacklevel=2,
        )
    mapped = transform.map_points(xy, inverse=inverse)
    if units == "um":
        mapped = mapped * sizes[target_role]
    write_points_csv(out, table, mapped)
    return {"points": len(xy), "outside": outside}
