"""What the driver reads per pair goes through an index, and large submissions fit SQLite's limits."""

from __future__ import annotations

from drmime_batch.queue import ManifestEntry, Queue


def _plan(q: Queue, sql: str, args: tuple = ()) -> str:
    return " | ".join(str(r[-1]) for r in q._conn.execute("EXPLAIN QUERY PLAN " + sql, args))


def test_next_pending_and_has_pending(tmp_path):
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        q.add([ManifestEntry(f"p{i:02d}", "/f", "/m") for i in range(10)], out=tmp_path / "o.zarr")
        assert q.has_pending()
        assert [r.pair_id for r in q.next_pending(3)] == ["p00", "p01", "p02"]  # submission order
        assert q.claim("p00") and q.claim("p02") and q.cancel(["p03"]) == ["p03"]
        assert [r.pair_id for r in q.next_pending(3)] == ["p01", "p04", "p05"]
        assert [r.pair_id for r in q.next_pending(2, exclude={"p01", "p04"})] == ["p05", "p06"]
        assert q.next_pending(0) == []
        q.cancel()
        assert not q.has_pending() and q.next_pending(5) == []


def test_per_pair_reads_use_an_index_not_a_scan(tmp_path):
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        q.add([ManifestEntry(f"p{i}", "/f", "/m") for i in range(100)], out=tmp_path / "o.zarr")
        q._conn.execute("ANALYZE")
        plan = _plan(q, "SELECT * FROM pairs WHERE state='pending' ORDER BY seq LIMIT ?", (4,))
        assert "USING INDEX pairs_state (state=?)" in plan and "TEMP B-TREE" not in plan, plan
        plan = _plan(q, "SELECT EXISTS (SELECT 1 FROM pairs WHERE state='pending')")
        assert "INDEX pairs_state" in plan, plan
        plan = _plan(q, "SELECT * FROM pairs WHERE pair_id=?", ("p1",))
        assert "USING INDEX" in plan and "SCAN" not in plan, plan


def test_a_submission_larger_than_sqlites_parameter_cap(tmp_path):
    n = 40_000  # one "IN (...)" of every id would pass the 32,766-parameter cap of a default SQLite build
    entries = [ManifestEntry(f"p{i}", "/f", f"/m{i}") for i in range(n)]
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        assert len(q.add(entries, out=tmp_path / "o.zarr")) == n
        assert q.counts()["pending"] == n
        assert len(q.cancel([f"p{i}" for i in range(n)])) == n
        assert len(q.rows(pair_ids=[f"p{i}" for i in range(0, n, 2)])) == n // 2
