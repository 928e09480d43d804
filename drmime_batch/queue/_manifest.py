"""Reading a batch manifest: a CSV of slide pairs.

Two layouts are accepted:

* ours: ``pair_id,fixed,moving`` and optionally ``fixed_landmarks,moving_landmarks`` and
  ``fixed_mask,moving_mask``;
* the ANHIR cover table: ``Target image,Source image`` and optionally
  ``Target landmarks,Source landmarks`` (target = fixed, source = moving); pair ids are made from
  the file names (``<source stem>-to-<target stem>``), or taken from a ``pair_id`` column if present,
  and masks from ``fixed_mask`` / ``moving_mask`` columns if present.

Mask columns name tissue-mask images (any format the image reader opens; non-zero = tissue), at the
image's resolution or a lower one of the same aspect ratio. Either column may be given alone, and
an empty cell means no mask for that image (the registration's ``mask`` option then applies).

Relative paths resolve against the manifest's folder; absolute paths and URLs (``s3://...``,
``gs://...``, ``file://...``: anything with ``://``) are kept as they are. Any problem (unreadable file, missing
column, empty cell, duplicate pair id, a pair id breaking :func:`drmime_batch._pair_id.check_pair_id`
or differing from another only by case) raises :class:`~drmime_batch.errors.ManifestError` naming the
line, and nothing is returned.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from drmime_batch._pair_id import check_pair_id, pair_id_key, safe_pair_id_part
from drmime_batch.errors import ManifestError, OutputStoreError

__all__ = ["ManifestEntry", "check_pair_id", "read_manifest"]

_MASKS = ("fixed_mask", "moving_mask")
_OURS = ("pair_id", "fixed", "moving", "fixed_landmarks", "moving_landmarks", *_MASKS)
_ANHIR = {
    "Target image": "fixed",
    "Source image": "moving",
    "Target landmarks": "fixed_landmarks",
    "Source landmarks": "moving_landmarks",
}


@dataclass(frozen=True)
class ManifestEntry:
    """One slide pair of a manifest, with absolute paths.

    Attributes
    ----------
    pair_id : str
        Identifier, unique within a queue; also the pair's group name in the output store.
    fixed, moving : str
        Absolute image paths or URLs (the moving image is registered onto the fixed one).
    fixed_landmarks, moving_landmarks : str or None
        Absolute paths or URLs of ANHIR ``,X,Y`` landmark CSVs, when given.
    line : int
        Line of the manifest the pair came from (1 = header).
    fixed_mask, moving_mask : str or None
        Absolute paths or URLs of tissue-mask images (non-zero = tissue), when given; each is
        optional on its own.
    """

    pair_id: str
    fixed: str
    moving: str
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None
    line: int = 0
    fixed_mask: str | None = None
    moving_mask: str | None = None


def _resolve(value: str, base: Path) -> str:
    """An absolute path, or ``value`` itself when it is a URL (never made a Path: ``s3://b`` would lose a slash).

    Examples
    --------
    >>> _resolve("s3://bucket/slides/a.svs", Path("/data"))
    's3://bucket/slides/a.svs'
    >>> _resolve("b.tif", Path("/data"))
    '/data/b.tif'
    """
    if "://" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    return str(path.resolve())


def _anhir_pair_id(fixed: str, moving: str) -> str:
    return f"{safe_pair_id_part(Path(moving).stem)}-to-{safe_pair_id_part(Path(fixed).stem)}"


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """Read a manifest CSV into pair entries (nothing is opened but the CSV itself).

    Parameters
    ----------
    path : str or Path
        The manifest (ours or the ANHIR cover-table layout, see the module docstring).

    Returns
    -------
    list of ManifestEntry
        In file order, with absolute paths (URLs unchanged).

    Raises
    ------
    ManifestError
        Unreadable file, no usable header, missing column, empty required cell, bad or duplicate
        pair id; the message names the manifest and the line.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "m.csv").write_text("pair_id,fixed,moving\\np1,a.tif,b.tif\\n")
    >>> [(e.pair_id, Path(e.moving).name, e.line) for e in read_manifest(d / "m.csv")]
    [('p1', 'b.tif', 2)]
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    base = path.resolve().parent
    try:
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise ManifestError(f"{path}: line 1: not a CSV file: {exc}") from exc
    if not header:
        raise ManifestError(f"{path}: line 1: empty manifest, expected a header row")
    if {"fixed", "moving"} <= set(header):
        mapping = {h: h for h in header if h in _OURS}
        if "pair_id" not in mapping:
            raise ManifestError(
                f"{path}: line 1: missing column 'pair_id' (expected pair_id,fixed,moving"
                f"[,fixed_landmarks,moving_landmarks][,fixed_mask][,moving_mask]; got {','.join(header)})"
            )
    elif {"Target image", "Source image"} <= set(header):
        mapping = {h: _ANHIR[h] for h in header if h in _ANHIR}
        for col in ("pair_id", *_MASKS):
            if col in header:
                mapping[col] = col
    else:
        missing = [c for c in ("pair_id", "fixed", "moving") if c not in header]
        raise ManifestError(
            f"{path}: line 1: missing column(s) {', '.join(missing)} (expected pair_id,fixed,moving"
            "[,fixed_landmarks,moving_landmarks][,fixed_mask][,moving_mask] or the ANHIR columns "
            "'Target image,Source image[,Target landmarks,Source landmarks][,fixed_mask][,moving_mask]'; "
            f"got {','.join(header) or 'nothing'})"
        )
    entries: list[ManifestEntry] = []
    seen: dict[str, int] = {}
    folded: dict[str, str] = {}  # pair_id_key -> pair id
    try:
        for raw in reader:
            line = reader.line_num
            row = {
                mapping[k.strip()]: (v or "").strip()
                for k, v in raw.items()
                if k is not None and k.strip() in mapping
            }
            if None in raw:
                raise ManifestError(f"{path}: line {line}: more cells than header columns")
            if not any(row.values()):
                continue  # blank line
            for col in ("fixed", "moving"):
                if not row.get(col):
                    raise ManifestError(f"{path}: line {line}: empty '{col}' cell")
            pair_id = row.get("pair_id") or _anhir_pair_id(row["fixed"], row["moving"])
            try:
                check_pair_id(pair_id)
            except OutputStoreError as exc:
                raise ManifestError(f"{path}: line {line}: {exc}") from None
            if pair_id in seen:
                raise ManifestError(
                    f"{path}: line {line}: duplicate pair id {pair_id!r} (first on line {seen[pair_id]})"
                )
            other = folded.get(pair_id_key(pair_id))
            if other is not None:
                raise ManifestError(
                    f"{path}: line {line}: pair id {pair_id!r} differs from {other!r} (line {seen[other]}) only by "
                    "case; their output folders would be one on case-insensitive storage"
                )
            seen[pair_id] = line
            folded[pair_id_key(pair_id)] = pair_id
            lm_f, lm_m = row.get("fixed_landmarks") or None, row.get("moving_landmarks") or None
            if (lm_f is None) != (lm_m is None):
                raise ManifestError(
                    f"{path}: line {line}: give both landmark files or neither for pair {pair_id!r}"
                )
            entries.append(
                ManifestEntry(
                    pair_id=pair_id,
                    fixed=_resolve(row["fixed"], base),
                    moving=_resolve(row["moving"], base),
                    fixed_landmarks=_resolve(lm_f, base) if lm_f else None,
                    moving_landmarks=_resolve(lm_m, base) if lm_m else None,
                    line=line,
                    fixed_mask=_resolve(row["fixed_mask"], base) if row.get("fixed_mask") else None,
                    moving_mask=_resolve(row["moving_mask"], base) if row.get("moving_mask") else None,
                )
            )
    except csv.Error as exc:
        raise ManifestError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from exc
    if not entries:
        raise ManifestError(f"{path}: no pairs (only a header)")
    return entries
