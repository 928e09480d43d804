"""The queue commands end to end, through subprocesses, on real files, SQLite and a LocalCluster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from _batch_data import FAST, SHIFT, cli, make_pairs, status


@pytest.mark.slow
def test_manifest_refusals_queue_nothing(tmp_path):
    (tmp_path / "dup.csv").write_text("pair_id,fixed,moving\na,f.png,m.png\na,f.png,m2.png\n")
    proc = cli("submit", tmp_path / "dup.csv", "--queue", tmp_path / "q.sqlite", "--out", tmp_path / "o.zarr",
               check=1)
    assert "line 3: duplicate pair id 'a' (first on line 2)" in proc.stderr
    (tmp_path / "cols.csv").write_text("pair_id,fixed\na,f.png\n")
    proc = cli("submit", tmp_path / "cols.csv", "--queue", tmp_path / "q.sqlite", "--out", tmp_path / "o.zarr",
               check=1)
    assert "line 1: missing column(s) moving" in proc.stderr
    proc = cli("submit", tmp_path / "nope.csv", "--queue", tmp_path / "q.sqlite", "--out", tmp_path / "o.zarr",
               check=1)
    assert "cannot read manifest" in proc.stderr
    (tmp_path / "ok.csv").write_text("pair_id,fixed,moving\na,f.png,m.png\n")
    proc = cli("submit", tmp_path / "ok.csv", "--queue", tmp_path / "q.sqlite", "--out", tmp_path / "o.zarr",
               "--option", "no_such_knob=3", check=1)
    assert "no_such_knob" in proc.stderr
    assert not (tmp_path / "q.sqlite").exists()  # nothing was queued
    proc = cli("submit", tmp_path / "ok.csv", "--queue", tmp_path / "q.sqlite", "--out", tmp_path / "o.zarr",
               "--option", "lr_transform=abc", check=1)  # a value of the wrong kind is refused at submit too
    assert "lr_transform must be a number, got 'abc'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q.sqlite").exists()
    proc = cli("status", "--queue", tmp_path / "q.sqlite", check=1)
    assert "does not exist" in proc.stderr


@pytest.mark.cluster
@pytest.mark.slow
def test_submit_run_status_retry_cancel_report(tmp_path):
    manifest = make_pairs(tmp_path / "data", n_good=2, bad=True)
    queue, out = tmp_path / "q.sqlite", tmp_path / "out.zarr"
    cli("submit", manifest, "--queue", queue, "--out", out, *FAST)
    proc = cli("submit", manifest, "--queue", queue, "--out", out, check=1)  # same ids again
    assert "already in queue" in proc.stderr and "nothing was added" in proc.stderr

    run = cli("run", "--queue", queue, "--workers", "2", check=1)  # some pairs fail -> non-zero
    assert "\x1b[" not in run.stdout  # not a terminal: plain output, no live display
    assert "done     good0" in run.stdout and "failed   truncated" in run.stdout

    rows = status(queue)
    assert {k: r["state"] for k, r in rows.items()} == {
        "good0": "done", "good1": "done", "missing": "failed", "truncated": "failed", "constant": "failed"}
    for key in ("pair_id", "state", "attempts", "error", "seconds", "matrix"):
        assert all(key in r for r in rows.values())
    for name in ("good0", "good1"):
        r = rows[name]
        m = np.array(r["matrix"])
        assert m.shape == (3, 3) and r["attempts"] == 1 and r["error"] is None and r["seconds"] > 0
        # a translation-only registration of a known shift: right direction, within a few pixels
        assert np.allclose(m[:2, 2], SHIFT, atol=4.0), m
        stored = zarr.open_array(str(out / name / "transform"), mode="r")
        assert np.allclose(stored[:], m)  # outputs reopen and agree with the queue
        assert (out / name / "registered").is_dir()
    errors = {k: rows[k]["error"] for k in ("missing", "truncated", "constant")}
    for name, error in errors.items():
        assert "\n" not in error and rows[name]["matrix"] is None
    assert "does-not-exist.png" in errors["missing"]
    assert "truncated.tif" in errors["truncated"]
    assert "constant.png" in errors["constant"] and "constant" in errors["constant"].lower()
    assert not (out / "missing" / "transform").exists()

    assert "0 pair(s) cancelled" in cli("cancel", "--queue", queue).stdout  # nothing pending
    assert "1 pair(s) back to pending: constant" in cli("retry", "--queue", queue, "constant").stdout
    assert "constant" in cli("cancel", "--queue", queue).stdout
    assert "pair(s) back to pending: missing, truncated" in cli("retry", "--queue", queue).stdout
    cli("cancel", "--queue", queue, "missing", "truncated")
    proc = cli("retry", "--queue", queue, "good0", check=1)
    assert "cannot move to pending: good0 (done)" in proc.stderr
    assert {r["state"] for r in status(queue).values()} == {"done", "cancelled"}

    # every remaining pair is done or cancelled: a new run has nothing to do and exits 0
    again = cli("run", "--queue", queue, "--workers", "1", "--json")
    final = {r["pair_id"]: r for r in json.loads(again.stdout)}
    assert final["good0"]["finished_at"] == rows["good0"]["finished_at"]  # not recomputed

    report = cli("report", "--queue", queue, "--html", tmp_path / "html")
    assert "good0" in report.stdout and (tmp_path / "html" / "index.html").is_file()
    assert "good1" in (tmp_path / "html" / "index.html").read_text()
