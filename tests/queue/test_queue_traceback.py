"""Tracebacks of unexpected errors kept in the queue; a file from before the column migrates."""

from __future__ import annotations

import json
import sqlite3
import time

from drmime_batch.queue import ManifestEntry, PairRow, Queue
from drmime_batch.queue._queue import TRACEBACK_MAX_CHARS

#: the ``pairs`` table with the mask columns but before ``traceback``
_SCHEMA_BEFORE = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE pairs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, pair_id TEXT NOT NULL UNIQUE, fixed TEXT NOT NULL,
    moving TEXT NOT NULL, fixed_landmarks TEXT, moving_landmarks TEXT, out TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT, seconds REAL, worker TEXT, device TEXT, matrix TEXT,
    result TEXT NOT NULL DEFAULT '{}', options TEXT NOT NULL DEFAULT '{}', submitted_at REAL NOT NULL,
    started_at REAL, finished_at REAL, updated_at REAL NOT NULL, fixed_mask TEXT, moving_mask TEXT
);
CREATE INDEX pairs_state ON pairs (state);
"""
TB = 'Traceback (most recent call last):\n  File "task.py", line 10, in run\n    x = 1 / 0\nZeroDivisionError: division by zero\n'


def test_file_from_before_the_column_opens_and_keeps_its_rows(tmp_path):
    qpath = tmp_path / "old.sqlite"
    conn = sqlite3.connect(qpath)
    conn.executescript(_SCHEMA_BEFORE)
    now = time.time()
    conn.executemany(
        "INSERT INTO pairs (pair_id, fixed, moving, out, state, error, fixed_mask, submitted_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [("a", "/f", "/m", "/o.zarr", "failed", "ValueError: x", "/fm.png", now, now),
         ("b", "/f", "/m2", "/o.zarr", "pending", None, None, now, now)],
    )
    conn.commit()
    conn.close()
    with Queue.open(qpath) as q:
        a, b = q.rows()
        assert (a.pair_id, a.state, a.error, a.fixed_mask, a.traceback) == ("a", "failed", "ValueError: x", "/fm.png", None)
        assert (b.pair_id, b.state) == ("b", "pending")
    with sqlite3.connect(qpath) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(pairs)")]
    assert columns[-1] == "traceback" and columns.count("traceback") == 1
    with Queue.open(qpath) as q:  # the new column is usable on the migrated file
        assert q.claim("b") and q.fail("b", "boom", traceback=TB)
        assert q.get("b").traceback == TB


def test_fail_keeps_the_traceback_and_retry_clears_it(tmp_path):
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        q.add([ManifestEntry("a", "/f", "/m"), ManifestEntry("b", "/f", "/m2")], out=tmp_path / "o.zarr")
        assert q.claim("a") and q.fail("a", "ZeroDivisionError:\n division by zero", traceback=TB)
    with Queue.open(tmp_path / "q.sqlite") as q:  # reopened: stored in the file, lines kept
        row = q.get("a")
        assert row.error == "ZeroDivisionError: division by zero" and row.traceback == TB
        assert json.loads(json.dumps(row.to_dict()))["traceback"] == TB
        assert q.get("b").traceback is None

        assert q.retry() == ["a"]
        assert (q.get("a").error, q.get("a").traceback) == (None, None)

        assert q.claim("a") and q.fail("a", "again", traceback=TB)
        assert q.cancel(["a"]) == ["a"] and q.get("a").traceback == TB  # cancelling keeps the record
        assert q.retry(["a"]) == ["a"] and q.get("a").traceback is None

        assert q.claim("a") and q.fail("a", "again", traceback=TB) and q.retry(["a"])
        assert q.claim("a") and q.get("a").traceback is None
        assert q.requeue("a", "worker lost") and q.get("a").traceback is None


def test_long_traceback_keeps_its_end(tmp_path):
    long_tb = "Traceback (most recent call last):\n" + "  frame\n" * 10_000 + "MemoryError: out of memory\n"
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        q.add([ManifestEntry("a", "/f", "/m")], out=tmp_path / "o.zarr")
        assert q.claim("a") and q.fail("a", "MemoryError", traceback=long_tb)
        stored = q.get("a").traceback
    assert len(stored) <= TRACEBACK_MAX_CHARS + 60
    assert stored.endswith("MemoryError: out of memory\n") and stored.startswith("[... first ")


def test_pairrow_positional_construction_still_works():
    fields = ["p", "/f", "/m", None, None, "/o", "done", 1, None, 2.0, "w", "cpu", [[1.0]], {}, {}, 1.0, 2.0, 3.0,
              None, None]
    row = PairRow(*fields)
    assert row.traceback is None and row.moving_mask is None and row.finished_at == 3.0
