"""Submitting a series to a queue, and reading back where it stands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from drmime_batch._pair_id import pair_id_key
from drmime_batch.errors import QueueError
from drmime_batch.queue import Queue
from drmime_batch.queue._series_table import delete_series, get_series, put_series, series_ids
from drmime_batch.series._plan import SeriesPlan

__all__ = ["series_status", "submit_series"]


def _store_key(out: str) -> str:
    return out.rstrip("/") if "://" in out else str(Path(out).expanduser().resolve())


def submit_series(queue: Queue, plan: SeriesPlan, *, out: str | Path,
                  options: Mapping[str, Any] | None = None) -> list[str]:
    """Queue a series: its plan, then its links as pending pairs (all or nothing).

    Raises
    ------
    QueueError
        The series id is taken in this queue, names a pair of the same store (one folder), or a
        link's pair id is already queued (nothing is added).
    ConfigError
        An invalid registration option (nothing is added).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from drmime_batch.series import SeriesSlide, plan_series
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> plan = plan_series("S", [SeriesSlide(s, f"/d/{s}.tif") for s in ("a", "b", "c")])
    >>> with Queue.open(d / "q.sqlite", create=True) as q:
    ...     submit_series(q, plan, out=d / "o.zarr")
    ['S--b--a', 'S--b--c']
    """
    out_key = _store_key(str(out))
    for row in queue.rows():
        if pair_id_key(row.pair_id) == pair_id_key(plan.series_id) and row.out == out_key:
            raise QueueError(f"series id {plan.series_id!r} is the pair {row.pair_id!r} of the same store "
                             f"{out_key} (one output folder); choose another series id")
    replace = False
    if plan.series_id in series_ids(queue):
        old = SeriesPlan.from_dict(get_series(queue, plan.series_id)["plan"])
        # a plan whose pairs never reached the queue (a submission killed half-way) is replaced
        replace = not queue.rows(pair_ids=[k.pair_id for k in old.links])
    put_series(queue, plan.series_id, out=out_key, plan=plan.to_dict(), replace=replace)
    try:
        return queue.add(plan.entries(), out=out_key, options=options)
    except BaseException:
        delete_series(queue, plan.series_id)
        raise


def series_status(queue: Queue, series_id: str) -> dict[str, Any]:
    """Where a series stands: its links' states now and its last composition.

    Returns
    -------
    dict
        ``series_id``, ``reference``, ``out``, ``slides`` (ids in order), ``links`` (pair id,
        fixed, moving, distance, state, error), ``composed`` (the last composition's summary, or
        ``None``; see :func:`~drmime_batch.series.compose_series`).
    """
    record = get_series(queue, series_id)
    plan = SeriesPlan.from_dict(record["plan"])
    rows = {r.pair_id: r for r in queue.rows(pair_ids=[k.pair_id for k in plan.links])}
    links = []
    for k in plan.links:
        row = rows.get(k.pair_id)
        links.append({"pair_id": k.pair_id, "fixed": k.fixed, "moving": k.moving, "distance": k.distance,
                      "state": row.state if row else "missing", "error": row.error if row else None})
    composed = record["composed"]
    if composed is not None:
        composed = {k: v for k, v in composed.items() if k != "fingerprint"}
    return {"series_id": series_id, "reference": plan.reference, "out": record["out"], "slides": plan.slide_ids,
            "links": links, "composed": composed}
