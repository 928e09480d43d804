"""Series plans in the queue file: a ``series`` table beside ``pairs``.

Why in the queue and not a JSON file beside the output store: the queue is the one file every
command already opens (``run``, ``status``, ``retry``), it may live on a shared file system while
the store is an object-store URL, and SQLite gives the plan the same atomic, crash-safe writes as
the pairs. The table is created in place the first time a series is submitted (``CREATE TABLE IF
NOT EXISTS``, in the write transaction), like the queue's added columns: the schema version stays
1 and an older drmime_batch, which does not know the table, still reads the file.

Rows hold JSON text only (the plan, and the last composition's summary); what the JSON means is
:mod:`drmime_batch.series`'s business. Torch- and dask-free like the rest of the queue.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any, Mapping

from drmime_batch.errors import QueueError
from drmime_batch.queue._queue import Queue

__all__ = ["delete_series", "get_series", "put_series", "series_ids", "set_composed"]

_TABLE = """CREATE TABLE IF NOT EXISTS series (
    series_id TEXT PRIMARY KEY,
    out TEXT NOT NULL,
    plan TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    composed TEXT
)"""


def _has_table(queue: Queue) -> bool:
    return bool(queue._read("SELECT 1 FROM sqlite_master WHERE type='table' AND name='series'"))


def put_series(queue: Queue, series_id: str, *, out: str, plan: Mapping[str, Any], replace: bool = False) -> None:
    """Store a series plan; :class:`QueueError` when the id is taken (unless ``replace``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with Queue.open(d / "q.sqlite", create=True) as q:
    ...     put_series(q, "s1", out="/o.zarr", plan={"slides": []})
    ...     series_ids(q), get_series(q, "s1")["out"]
    (['s1'], '/o.zarr')
    """
    now = time.time()

    def body(conn: sqlite3.Connection) -> None:
        conn.execute(_TABLE)
        taken = conn.execute("SELECT 1 FROM series WHERE lower(series_id)=lower(?)", (series_id,)).fetchone()
        if taken and not replace:
            raise QueueError(f"series {series_id!r} is already in queue {queue.path} (or one differing only by case)")
        conn.execute("INSERT OR REPLACE INTO series (series_id, out, plan, submitted_at, composed) "
                     "VALUES (?, ?, ?, ?, NULL)", (series_id, out, json.dumps(dict(plan)), now))

    queue._write(body)


def delete_series(queue: Queue, series_id: str) -> None:
    """Forget a series plan (its pairs stay in the queue)."""
    if _has_table(queue):
        queue._write(lambda conn: conn.execute("DELETE FROM series WHERE series_id=?", (series_id,)))


def series_ids(queue: Queue) -> list[str]:
    """Ids of the series of the queue, in submission order."""
    if not _has_table(queue):
        return []
    return [str(sid) for (sid,) in queue._read("SELECT series_id FROM series ORDER BY submitted_at, series_id")]


def get_series(queue: Queue, series_id: str) -> dict[str, Any]:
    """``{"series_id", "out", "plan", "submitted_at", "composed"}`` of one series.

    Raises
    ------
    QueueError
        No such series in the queue.
    """
    recs = queue._read("SELECT series_id, out, plan, submitted_at, composed FROM series WHERE series_id=?",
                       (series_id,)) if _has_table(queue) else []
    if not recs:
        known = series_ids(queue)
        raise QueueError(f"no series {series_id!r} in queue {queue.path}"
                         + (f" (series: {', '.join(known)})" if known else " (it holds no series)"))
    sid, out, plan, submitted_at, composed = recs[0]
    return {"series_id": str(sid), "out": str(out), "plan": json.loads(plan), "submitted_at": float(submitted_at),
            "composed": json.loads(composed) if composed else None}


def set_composed(queue: Queue, series_id: str, summary: Mapping[str, Any]) -> None:
    """Record the summary of the series' last composition."""
    text = json.dumps(dict(summary), default=str)
    queue._write(lambda conn: conn.execute("UPDATE series SET composed=? WHERE series_id=?", (text, series_id)))
