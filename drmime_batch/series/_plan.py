"""A series of serial sections: its slides in section order, its reference and its links.

A *link* is one registration pair of the queue: ``fixed`` is the slide nearer the reference,
``moving`` the one further away, so every link points outwards from the reference. Each slide is
linked to its neighbour towards the reference and, with ``skip >= 2``, to the slides up to
``skip`` sections further towards it: when one link fails, the slide is still reached through
another (the links are used both ways when the series is composed).

Imports nothing but the standard library and drmime_batch's torch-free modules: ``submit-series``
and ``series-status`` run without torch or dask.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from drmime_batch._pair_id import check_pair_id, pair_id_key
from drmime_batch.errors import ManifestError, OutputStoreError
from drmime_batch.queue._manifest import ManifestEntry, _resolve

__all__ = ["LINK_SEPARATOR", "SeriesLink", "SeriesPlan", "SeriesSlide", "plan_series", "read_slides"]

#: Between the series id and the two slide ids of a link's pair id: ``ID--<fixed>--<moving>``.
LINK_SEPARATOR = "--"


@dataclass(frozen=True)
class SeriesSlide:
    """One section of a series (absolute paths; ``line`` of the slide table, 0 when built in code)."""

    slide_id: str
    path: str
    landmarks: str | None = None
    mask: str | None = None
    line: int = 0


@dataclass(frozen=True)
class SeriesLink:
    """One registration of the series: ``moving`` onto ``fixed`` (``fixed`` is nearer the reference)."""

    pair_id: str
    fixed: str
    moving: str
    distance: int


@dataclass(frozen=True)
class SeriesPlan:
    """Slides in section order, the reference slide and the links (pairs) that place them.

    Examples
    --------
    >>> plan = plan_series("s1", [SeriesSlide(f"z{i}", f"/d/{i}.tif") for i in range(4)])
    >>> plan.reference, [link.pair_id for link in plan.links]
    ('z2', ['s1--z1--z0', 's1--z2--z0', 's1--z2--z1', 's1--z2--z3'])
    """

    series_id: str
    slides: tuple[SeriesSlide, ...]
    reference: str
    links: tuple[SeriesLink, ...]
    skip: int = 2
    source: str | None = field(default=None, compare=False)

    @property
    def slide_ids(self) -> list[str]:
        """Slide ids in section order."""
        return [s.slide_id for s in self.slides]

    def slide(self, slide_id: str) -> SeriesSlide:
        """The slide with this id (``KeyError`` when unknown)."""
        for s in self.slides:
            if s.slide_id == slide_id:
                return s
        raise KeyError(slide_id)

    def entries(self) -> list[ManifestEntry]:
        """The links as queue entries (paths, landmarks and masks of both slides)."""
        out = []
        for link in self.links:
            f, m = self.slide(link.fixed), self.slide(link.moving)
            both = f.landmarks is not None and m.landmarks is not None
            out.append(ManifestEntry(
                pair_id=link.pair_id, fixed=f.path, moving=m.path,
                fixed_landmarks=f.landmarks if both else None, moving_landmarks=m.landmarks if both else None,
                line=m.line, fixed_mask=f.mask, moving_mask=m.mask,
            ))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the queue stores)."""
        return {
            "series_id": self.series_id,
            "reference": self.reference,
            "skip": self.skip,
            "source": self.source,
            "slides": [{"slide_id": s.slide_id, "path": s.path, "landmarks": s.landmarks, "mask": s.mask,
                        "line": s.line} for s in self.slides],
            "links": [{"pair_id": k.pair_id, "fixed": k.fixed, "moving": k.moving, "distance": k.distance}
                      for k in self.links],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeriesPlan:
        """The plan :meth:`to_dict` wrote."""
        return cls(
            series_id=str(data["series_id"]),
            slides=tuple(SeriesSlide(**s) for s in data["slides"]),
            reference=str(data["reference"]),
            links=tuple(SeriesLink(**k) for k in data["links"]),
            skip=int(data.get("skip", 2)),
            source=data.get("source"),
        )


def link_pair_id(series_id: str, fixed: str, moving: str) -> str:
    """The pair id of one link: ``ID--<fixed>--<moving>``."""
    return LINK_SEPARATOR.join((series_id, fixed, moving))


def plan_series(
    series_id: str,
    slides: Sequence[SeriesSlide],
    *,
    reference: str | None = None,
    skip: int = 2,
    source: str | None = None,
) -> SeriesPlan:
    """Plan the links of a series: each slide onto its neighbour towards the reference, plus skip links.

    Parameters
    ----------
    series_id : str
        The series' name: its group in the output store and the first part of its pair ids.
    slides : sequence of SeriesSlide
        In section order.
    reference : str, optional
        The slide whose frame every slide is brought into; default the middle slide
        (``slides[len(slides) // 2]``).
    skip : int
        Longest link, in sections (1: the chain of neighbours only; 2: also every second section).
    source : str, optional
        Where the slides came from (for messages).

    Raises
    ------
    ManifestError
        Fewer than two slides, a slide listed twice (id, id up to case, or file), an unknown
        reference, ``skip < 1``, or a series or link id breaking the pair-id rule.

    Examples
    --------
    >>> slides = [SeriesSlide(s, f"/d/{s}.tif") for s in ("a", "b", "c")]
    >>> [(k.fixed, k.moving) for k in plan_series("S", slides, reference="a", skip=1).links]
    [('a', 'b'), ('b', 'c')]
    """
    where = source or f"series {series_id!r}"
    try:
        check_pair_id(series_id)
    except OutputStoreError as exc:
        raise ManifestError(f"{where}: series id: {exc}") from None
    if LINK_SEPARATOR in series_id:
        raise ManifestError(f"{where}: series id {series_id!r} must not contain {LINK_SEPARATOR!r}")
    if len(slides) < 2:
        raise ManifestError(f"{where}: a series needs at least two slides, got {len(slides)}")
    if skip < 1:
        raise ManifestError(f"{where}: the longest link must be at least 1 section, got {skip}")
    seen_ids: dict[str, SeriesSlide] = {}
    seen_paths: dict[str, SeriesSlide] = {}
    for s in slides:
        at = f"{where}: line {s.line}: " if s.line else f"{where}: "
        try:
            check_pair_id(s.slide_id)
        except OutputStoreError as exc:
            raise ManifestError(f"{at}slide id: {exc}") from None
        if LINK_SEPARATOR in s.slide_id:
            raise ManifestError(f"{at}slide id {s.slide_id!r} must not contain {LINK_SEPARATOR!r}")
        first = seen_ids.get(pair_id_key(s.slide_id))
        if first is not None:
            same = "listed twice" if first.slide_id == s.slide_id else f"differs from {first.slide_id!r} only by case"
            raise ManifestError(f"{at}slide {s.slide_id!r} {same}" + (f" (first on line {first.line})" if first.line else ""))
        first = seen_paths.get(s.path)
        if first is not None:
            raise ManifestError(f"{at}slide {s.slide_id!r} is the file of slide {first.slide_id!r} listed twice: {s.path}")
        seen_ids[pair_id_key(s.slide_id)] = s
        seen_paths[s.path] = s
    ids = [s.slide_id for s in slides]
    if reference is None:
        reference = ids[len(ids) // 2]
    elif reference not in ids:
        raise ManifestError(f"{where}: unknown reference slide {reference!r} (slides: {', '.join(ids)})")
    r = ids.index(reference)
    links: list[SeriesLink] = []
    for i, moving in enumerate(ids):
        if i == r:
            continue
        towards = -1 if i > r else 1
        for d in range(1, skip + 1):
            j = i + towards * d
            if (j - r) * (i - r) < 0:  # past the reference: that slide is on the other side
                break
            pair_id = link_pair_id(series_id, ids[j], moving)
            try:
                check_pair_id(pair_id)
            except OutputStoreError as exc:
                raise ManifestError(f"{where}: link of slide {moving!r}: {exc}") from None
            links.append(SeriesLink(pair_id, ids[j], moving, d))
            if j == r:
                break
    return SeriesPlan(series_id, tuple(slides), reference, tuple(links), skip, source)


def read_slides(path: str | Path) -> list[SeriesSlide]:
    """Read a slide table: ``slide_id,path`` in section order, optional ``landmarks`` and ``mask``.

    Relative paths resolve against the table's folder; URLs are kept as they are.

    Raises
    ------
    ManifestError
        Unreadable file, missing column, empty cell; the message names the file and the line.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "s.csv").write_text("slide_id,path\\nHe,he.tif\\nKi67,ki67.tif\\n")
    >>> [(s.slide_id, Path(s.path).name, s.line) for s in read_slides(d / "s.csv")]
    [('He', 'he.tif', 2), ('Ki67', 'ki67.tif', 3)]
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read slide table {path}: {exc}") from exc
    base = path.resolve().parent
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("slide_id", "path") if c not in header]
    if missing:
        raise ManifestError(f"{path}: line 1: missing column(s) {', '.join(missing)} (expected "
                            f"slide_id,path[,landmarks][,mask]; got {','.join(header) or 'nothing'})")
    slides: list[SeriesSlide] = []
    try:
        for raw in reader:
            line = reader.line_num
            if None in raw:
                raise ManifestError(f"{path}: line {line}: more cells than header columns")
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            for col in ("slide_id", "path"):
                if not row.get(col):
                    raise ManifestError(f"{path}: line {line}: empty '{col}' cell")
            lm, mask = row.get("landmarks") or None, row.get("mask") or None
            slides.append(SeriesSlide(row["slide_id"], _resolve(row["path"], base),
                                      _resolve(lm, base) if lm else None, _resolve(mask, base) if mask else None,
                                      line))
    except csv.Error as exc:
        raise ManifestError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from exc
    return slides
