"""A run on a queue with the rollback journal (as on NFS/Lustre) while other processes read it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from _batch_data import FAST, cli, make_pairs, spawn, status

from drmime_batch.queue import STATES

# another process reading the queue as fast as it can, as a user's watch script would
_POLLER = textwrap.dedent("""
    import os, sys, time
    from drmime_batch.queue import Queue
    path, stop, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reads = 0
    while not os.path.exists(stop):
        with Queue.open(path) as q:
            assert q.journal_mode == "delete", q.journal_mode
            counts, rows = q.counts(), q.rows()
        assert sum(counts.values()) == total and len(rows) == total, (counts, len(rows))
        reads += 1
        time.sleep(0.01)  # leave the two test cores to the run
    print(reads)
""")


def test_status_while_run_works_with_the_rollback_journal(tmp_path, monkeypatch):
    monkeypatch.setenv("DRMIME_BATCH_QUEUE_JOURNAL", "delete")  # inherited by every process below
    n = 2
    manifest = make_pairs(tmp_path / "data", n_good=n)
    queue, out, stop = tmp_path / "q.sqlite", tmp_path / "out.zarr", tmp_path / "stop"
    cli("submit", manifest, "--queue", queue, "--out", out, *FAST)

    poller = subprocess.Popen([sys.executable, "-c", _POLLER, str(queue), str(stop), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    driver = spawn("run", "--queue", queue, "--workers", "1", "--no-warp")
    seen: list[Counter[str]] = []
    try:
        while driver.poll() is None:
            rows = json.loads(cli("status", "--queue", queue, "--json", timeout=60).stdout)  # exit 0 every time
            states = Counter(r["state"] for r in rows)
            assert set(states) <= set(STATES) and sum(states[s] for s in STATES) == n == len(rows), rows
            seen.append(states)
            time.sleep(1.0)  # each status is a new Python process: keep the cores for the run
        driver_out, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        stop.touch()
        poller_out, poller_err = poller.communicate(timeout=60)
    assert driver.returncode == 0, driver_out
    assert seen, "status never ran while the driver was alive"
    assert poller.returncode == 0, poller_err
    assert int(poller_out.strip()) > 0

    assert {r["state"] for r in status(queue).values()} == {"done"}
    conn = sqlite3.connect(queue)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    finally:
        conn.close()
    assert not Path(f"{queue}-wal").exists()
