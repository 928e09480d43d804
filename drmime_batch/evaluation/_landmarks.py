"""Landmark files in the ANHIR / CIMA CSV format (``,X,Y``).

An ANHIR landmark file is a CSV written by pandas: a header ``,X,Y`` (an unnamed index column,
then ``X`` = column and ``Y`` = row, in pixels, origin at the top-left pixel's centre) and one
row per point. Row ``i`` of the fixed file and row ``i`` of the moving file are the same point.
"""

from __future__ import annotations

import csv
import math
from os import PathLike
from pathlib import Path
from typing import Any, Union

import numpy as np

from drmime_batch.errors import LandmarkError

__all__ = ["PathLikeStr", "pair_landmarks", "read_landmarks", "write_landmarks"]

PathLikeStr = Union[str, "PathLike[str]"]


def _parse_float(text: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LandmarkError(
            f"landmark file {path}: line {line}, column {column} is {text!r}, expected a number"
        ) from None
    if not math.isfinite(value):
        raise LandmarkError(f"landmark file {path}: line {line}, column {column} is {text!r}, expected a finite number")
    return value


def _read_url_text(url: str) -> str:
    """The text of a landmark object named by an fsspec URL (``s3://...``)."""
    from drmime_batch.io._fs import read_bytes

    try:
        return read_bytes(url).decode("utf-8-sig")
    except FileNotFoundError:
        raise LandmarkError(f"landmark file {url} does not exist (expected an ANHIR CSV with header ',X,Y')") from None
    except (OSError, ImportError, UnicodeDecodeError) as exc:
        raise LandmarkError(f"landmark file {url} cannot be read as text: {exc}") from exc


def read_landmarks(path: PathLikeStr) -> np.ndarray:
    """Read an ANHIR landmark CSV (``,X,Y``) into an ``(N, 2)`` array of ``(x, y)``.

    The columns are found by name (``X`` and ``Y``, any case), so files without the leading
    index column (``X,Y``) are read too. Reads the file eagerly; returns a new array.

    Parameters
    ----------
    path : str or path-like
        The CSV file, or an fsspec URL of one (``s3://bucket/lm/a.csv``).

    Returns
    -------
    ndarray, shape (N, 2), float64
        ``x`` (column) and ``y`` (row) of each landmark, in pixels of its image.

    Raises
    ------
    LandmarkError
        The file is missing or unreadable, has no ``X``/``Y`` header, a row with a missing or
        non-numeric value, or no landmark at all. The message names the file (and the line).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "lm.csv"
    >>> _ = p.write_text(",X,Y\\n0,10.5,20\\n1,3,4\\n")
    >>> read_landmarks(p)
    array([[10.5, 20. ],
           [ 3. ,  4. ]])
    """
    if isinstance(path, str) and "://" in path and not path.startswith("file://"):
        p: Any = path  # an fsspec URL stays a string
        text = _read_url_text(path)
    else:
        p = Path(path.removeprefix("file://") if isinstance(path, str) else path)
        if not p.exists():
            raise LandmarkError(f"landmark file {p} does not exist (expected an ANHIR CSV with header ',X,Y')")
        if not p.is_file():
            raise LandmarkError(f"landmark file {p} is not a file (expected an ANHIR CSV with header ',X,Y')")
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise LandmarkError(f"landmark file {p} cannot be read as text: {exc}") from exc
    rows = [r for r in csv.reader(text.splitlines())]
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise LandmarkError(f"landmark file {p} is empty; expected a header ',X,Y' and one row per landmark")
    header = [cell.strip().upper() for cell in rows[0]]
    if "X" not in header or "Y" not in header:
        raise LandmarkError(
            f"landmark file {p}: header {rows[0]!r} has no 'X' and 'Y' columns; expected the ANHIR form ',X,Y'"
        )
    ix, iy = header.index("X"), header.index("Y")
    points = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) <= max(ix, iy):
            raise LandmarkError(f"landmark file {p}: line {line} has {len(row)} fields, expected {len(header)}")
        points.append((_parse_float(row[ix].strip(), p, line, "X"), _parse_float(row[iy].strip(), p, line, "Y")))
    if not points:
        raise LandmarkError(f"landmark file {p} has a header but no landmark rows")
    return np.asarray(points, dtype=np.float64)


def write_landmarks(path: PathLikeStr, points: np.ndarray) -> Path:
    """Write ``(N, 2)`` points ``(x, y)`` as an ANHIR CSV (``,X,Y``); returns the path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = write_landmarks(pathlib.Path(tempfile.mkdtemp()) / "lm.csv", np.array([[1.0, 2.0]]))
    >>> read_landmarks(p)
    array([[1., 2.]])
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise LandmarkError(f"points must have shape (N, 2), got {pts.shape}")
    p = Path(path)
    lines = [",X,Y"] + [f"{i},{x!r},{y!r}" for i, (x, y) in enumerate(pts.tolist())]
    tmp = p.with_name(p.name + ".partial")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


def pair_landmarks(fixed_landmarks: np.ndarray, moving_landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pair two landmark sets as ANHIR does: the first ``min(n_fixed, n_moving)`` points.

    Parameters
    ----------
    fixed_landmarks, moving_landmarks : array_like, shape (N, 2) and (M, 2)

    Returns
    -------
    (ndarray, ndarray)
        Both of shape ``(min(N, M), 2)``, float64.

    Raises
    ------
    LandmarkError
        An input is not ``(N, 2)`` or the pairing leaves no point.

    Examples
    --------
    >>> f, m = pair_landmarks(np.zeros((3, 2)), np.ones((2, 2)))
    >>> f.shape, m.shape
    ((2, 2), (2, 2))
    """
    f = np.asarray(fixed_landmarks, dtype=np.float64)
    m = np.asarray(moving_landmarks, dtype=np.float64)
    for name, arr in (("fixed_landmarks", f), ("moving_landmarks", m)):
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise LandmarkError(f"{name} must have shape (N, 2) of (x, y), got {arr.shape}")
    n = min(len(f), len(m))
    if n == 0:
        raise LandmarkError(f"no landmark pairs: {len(f)} fixed and {len(m)} moving landmarks")
    return f[:n], m[:n]
