"""What a series' composition leaves in the output store, so that readers without the queue can say why.

``apply`` and :func:`~drmime_batch.transforms.open_transform` know the output store, not the
queue: when ``STORE ID/<slide_id>`` has no transform they need, from the store alone, whether the
series was composed at all and, if it was, why that slide was not placed. So
:func:`~drmime_batch.series.compose_series` writes a small record into the attributes of the
series group ``STORE/ID`` (key :data:`SERIES_KEY`)::

    {"layout": 1, "series_id": ..., "reference": ..., "state": "composed" | "partial",
     "queue": QUEUE file, "composed_at": unix time,
     "slides": [{"slide_id": ..., "state": "reference" | "placed" | "missing",
                 "links": [{"pair_id": ..., "state": ..., "error": ...}, ...]}, ...]}

``links`` is there for missing slides only: every link of the slide, its state in the queue
when the series was composed (``done``, ``failed``, ``cancelled``, ``not in queue``) and its
error. :func:`why_no_entry` turns the record (or its absence) into the one-line message.

Torch- and dask-free, like the rest of the series package.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from drmime_batch.io._fs import Location, exists, join, list_names, read_bytes

__all__ = ["SERIES_KEY", "read_series_record", "why_no_entry", "write_series_record"]

#: the attribute of ``STORE/ID`` holding the record
SERIES_KEY = "drmime_batch_series"
_LAYOUT = 1
#: how many names a message lists
_NAMES = 8
_COMPOSE = "'drmime-batch compose-series'"


def write_series_record(group: Location, summary: Mapping[str, Any], *, queue: str) -> None:
    """Record a composition's outcome in the attributes of the series group (which must exist).

    ``summary``: what :func:`~drmime_batch.series.compose_series` returns (its missing slides
    with their ``link_states``).
    """
    import zarr

    from drmime_batch.io._writers import _json_safe

    slides = []
    for s in summary.get("slides", []):
        entry: dict[str, Any] = {"slide_id": s["slide_id"], "state": s["state"]}
        if s["state"] == "missing":
            entry["links"] = list(s.get("link_states") or [])
        slides.append(entry)
    record = {"layout": _LAYOUT, "series_id": summary["series_id"], "reference": summary["reference"],
              "state": summary["state"], "queue": queue, "composed_at": summary.get("composed_at"),
              "slides": slides}
    zarr.open_group(store=str(group), mode="a", zarr_format=3).update_attributes({SERIES_KEY: _json_safe(record)})


def read_series_record(group: Location) -> dict[str, Any] | None:
    """The record of the series group ``group`` (``None``: not a composed series, or an older store)."""
    try:
        doc = json.loads(read_bytes(join(group, "zarr.json")))
    except (OSError, ValueError):
        return None
    record = doc.get("attributes", {}).get(SERIES_KEY) if isinstance(doc, dict) else None
    return record if isinstance(record, dict) and isinstance(record.get("slides"), list) else None


def _names(names: Sequence[str]) -> str:
    more = ", ..." if len(names) > _NAMES else ""
    return ", ".join(names[:_NAMES]) + more


def _link_text(link: Mapping[str, Any]) -> str:
    error = " ".join(str(link.get("error") or "").split())
    return f"{link.get('pair_id')} {link.get('state')}" + (f" ({error})" if error else "")


def _fix(links: Sequence[Mapping[str, Any]], queue: str | None) -> str:
    """What to do about a slide that no finished link reached."""
    in_queue = f" in queue {queue}" if queue else ""
    stuck = [str(k.get("pair_id")) for k in links if k.get("state") in ("failed", "cancelled")]
    gone = [str(k.get("pair_id")) for k in links if k.get("state") not in ("failed", "cancelled", "done")]
    if stuck:
        one = len(stuck) == 1
        return (f"retry {'that link' if one else 'those links'}{in_queue} ('drmime-batch retry' "
                f"{' '.join(stuck)}), then run the queue ('drmime-batch run' composes the series again when "
                f"{'it is' if one else 'they are'} done; or {_COMPOSE})")
    if gone:
        return f"its links are no longer{in_queue}: submit the series again ('drmime-batch submit-series')"
    return (f"its finished links reach only slides that are not placed either: place those first, then compose "
            f"the series again ({_COMPOSE})")


def _missing_slide(store: str, record: Mapping[str, Any], slide: Mapping[str, Any]) -> str:
    sid, name = record.get("series_id"), slide["slide_id"]
    links = [k for k in slide.get("links") or [] if isinstance(k, Mapping)]
    why = "; ".join(_link_text(k) for k in links) or "it has no link"
    return (f"series {sid} in {store}: slide {name} was not placed when the series was composed: no finished "
            f"link joins it to the reference {record.get('reference')}: {why}. To place it, "
            + _fix(links, record.get("queue")))


def why_no_entry(root: Location, store: str, parts: Sequence[str]) -> str | None:
    """Why entry ``parts`` of the store has no transform, said for a series; ``None`` if not one.

    ``SERIES/SLIDE`` whose group is absent: the slide is missing from the series' last
    composition (its links, their states and errors, and the fix), the slide is unknown to the
    series, the slide was placed but its transform is gone, the series was never composed (its
    links are in the store, its group is not), or there is no such series. ``SERIES`` alone: it
    is a series, not a pair. A group of an older store (no record) gets ``None``: the caller's
    plain message applies.
    """
    if len(parts) == 1:
        record = read_series_record(join(root, parts[0]))
        if record is None:
            return None
        names = [str(s.get("slide_id")) for s in record["slides"] if isinstance(s, Mapping)]
        return (f"{parts[0]!r} in {store} is a series, not a pair: name one of its slides as {parts[0]}/SLIDE "
                f"(slides: {_names(names)})")
    if len(parts) != 2:
        return None
    series_id, slide_id = parts
    group = join(root, series_id)
    if exists(join(group, "zarr.json")):
        record = read_series_record(group)
        if record is None:
            return None
        slides = {str(s.get("slide_id")): s for s in record["slides"] if isinstance(s, Mapping)}
        slide = slides.get(slide_id)
        if slide is None:
            return f"series {series_id} in {store} has no slide {slide_id!r} (slides: {_names(list(slides))})"
        if slide.get("state") == "missing":
            return _missing_slide(store, record, slide)
        return (f"series {series_id} in {store}: slide {slide_id} was placed when the series was composed, but its "
                f"transform is no longer there (deleted, or a composition was interrupted): compose the series again "
                f"({_COMPOSE})")
    links = sorted(n for n in list_names(root) if n.startswith(f"{series_id}--"))
    if links:
        return (f"series {series_id} in {store} was never composed: {len(links)} of its links are in the store "
                f"({_names(links)}), its transforms are not: compose it ({_COMPOSE}; 'drmime-batch run' does it "
                "once all its links are finished)")
    entries = sorted(n for n in list_names(root) if not n.startswith(".") and n != "zarr.json")
    return (f"output store {store} has no series {series_id!r}: neither its group nor any of its links "
            f"({series_id}--*) is there (entries: {_names(entries) or 'none'}); a series submitted with this store "
            "appears once one of its links has finished")
