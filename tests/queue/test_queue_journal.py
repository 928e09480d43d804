"""The queue on shared file systems: journal choice, switching a WAL file, waiting on a busy file, the lock."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from drmime_batch.errors import QueueError, QueueLockedError
from drmime_batch.queue import ManifestEntry, Queue
from drmime_batch.queue import _queue as queue_module
from drmime_batch.queue._journal import (
    JOURNAL_ENV,
    choose_journal_mode,
    filesystem_type,
    parse_mount_table,
)

ROOT = Path(__file__).resolve().parents[2]

#: /proc/self/mountinfo of a cluster node: local root and scratch, NFS home and project, Lustre inside it
MOUNTINFO = textwrap.dedent("""\
    22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
    25 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw
    30 22 259:3 / /scratch rw,relatime shared:3 - xfs /dev/nvme1n1 rw
    40 22 0:50 / /home rw,relatime shared:10 - nfs4 filer:/export/home rw,vers=4.2
    41 22 0:51 / /project rw,relatime shared:11 - nfs filer:/export/project rw,vers=3
    42 41 0:52 / /project/fast rw,relatime shared:12 - lustre 10.0.0.1@o2ib:/fast rw,flock
    43 22 0:53 / /mnt/my\\040data rw,relatime shared:13 - fuse.sshfs me@host:/data rw
    44 22 0:54 / /mnt/cephfs rw,relatime shared:14 - ceph 10.0.0.2:/ rw
    45 22 0:55 / /projects rw,relatime shared:15 - ext4 /dev/sdb1 rw
""")
#: the same machine as /proc/mounts
PROC_MOUNTS = textwrap.dedent("""\
    /dev/nvme0n1p2 / ext4 rw,relatime 0 0
    filer:/export/home /home nfs4 rw,vers=4.2 0 0
    /dev/sdb1 /home/local ext4 rw 0 0
""")


@pytest.mark.parametrize(
    ("path", "fstype", "mode"),
    [
        ("/home/me/batch/q.sqlite", "nfs4", "delete"),
        ("/project/lab/q.sqlite", "nfs", "delete"),
        ("/project/fast/run1/q.sqlite", "lustre", "delete"),  # the longest mount point wins
        ("/projects/q.sqlite", "ext4", "wal"),  # "/project" is a string prefix, not a path prefix
        ("/scratch/q.sqlite", "xfs", "wal"),
        ("/tmp/q.sqlite", "ext4", "wal"),  # the root mount
        ("/mnt/my data/q.sqlite", "fuse.sshfs", "delete"),  # escaped space in the mount point
        ("/mnt/cephfs/q.sqlite", "ceph", "delete"),
    ],
)
def test_detector_on_a_mountinfo_table(path, fstype, mode):
    assert filesystem_type(path, MOUNTINFO) == fstype
    chosen, reason = choose_journal_mode(path, env={}, mount_table=MOUNTINFO)
    assert chosen == mode and fstype in reason


def test_detector_on_proc_mounts_and_override():
    assert parse_mount_table(PROC_MOUNTS)[1] == ("/home", "nfs4")
    assert choose_journal_mode("/home/me/q.sqlite", env={}, mount_table=PROC_MOUNTS)[0] == "delete"
    assert choose_journal_mode("/home/local/q.sqlite", env={}, mount_table=PROC_MOUNTS)[0] == "wal"
    # the environment variable wins over the detection, both ways
    assert choose_journal_mode("/home/me/q.sqlite", env={JOURNAL_ENV: "wal"}, mount_table=PROC_MOUNTS)[0] == "wal"
    assert choose_journal_mode("/tmp/q.sqlite", env={JOURNAL_ENV: "DELETE"}, mount_table=PROC_MOUNTS)[0] == "delete"
    assert choose_journal_mode("/home/me/q.sqlite", env={JOURNAL_ENV: "auto"}, mount_table=PROC_MOUNTS)[0] == "delete"
    with pytest.raises(QueueError, match=rf"{JOURNAL_ENV}='memory' for queue .*: use auto, wal or delete"):
        choose_journal_mode("/tmp/q.sqlite", env={JOURNAL_ENV: "memory"}, mount_table="")


def test_same_mount_point_twice_the_last_one_wins():
    table = "1 0 8:1 / /data rw - ext4 /dev/sda1 rw\n2 1 0:40 / /data rw - nfs4 filer:/d rw\n"
    assert filesystem_type("/data/q.sqlite", table) == "nfs4"


def _file_journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_forced_delete_journal_on_a_real_file(tmp_path, monkeypatch):
    monkeypatch.setenv(JOURNAL_ENV, "delete")
    qpath = tmp_path / "q.sqlite"
    with Queue.open(qpath, create=True) as q:
        assert q.journal_mode == "delete"
        q.add([ManifestEntry("a", "/f", "/m")], out=tmp_path / "o.zarr")
        assert q.claim("a")
        assert not Path(f"{qpath}-wal").exists() and not Path(f"{qpath}-shm").exists()
    assert _file_journal_mode(qpath) == "delete"
    monkeypatch.setenv(JOURNAL_ENV, "wal")  # and back: a local disk again
    with Queue.open(qpath) as q:
        assert q.journal_mode == "wal" and q.get("a").state == "running"
    assert _file_journal_mode(qpath) == "wal"


def test_bad_override_is_refused_before_touching_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(JOURNAL_ENV, "off")
    with pytest.raises(QueueError, match="use auto, wal or delete"):
        Queue.open(tmp_path / "q.sqlite", create=True)
    assert not (tmp_path / "q.sqlite").exists()


def test_a_wal_queue_with_unmerged_writes_switches_to_delete(tmp_path, monkeypatch):
    qpath = tmp_path / "q.sqlite"
    # a WAL writer dies without closing: its last commits exist only in q.sqlite-wal
    code = textwrap.dedent(f"""
        import os
        from drmime_batch.queue import ManifestEntry, Queue
        q = Queue.open({str(qpath)!r}, create=True)
        assert q.journal_mode == "wal"
        q._conn.execute("PRAGMA wal_autocheckpoint = 0")
        q.add([ManifestEntry(f"p{{i}}", "/f", "/m") for i in range(50)], out="/o.zarr")
        assert q.claim("p0") and q.fail("p0", "boom", traceback="Traceback...\\nValueError: boom")
        os._exit(0)
    """)
    env = {**os.environ, JOURNAL_ENV: "wal", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    assert Path(f"{qpath}-wal").stat().st_size > 0

    monkeypatch.setenv(JOURNAL_ENV, "delete")
    with Queue.open(qpath) as q:
        assert q.journal_mode == "delete"
        assert q.counts() == {"pending": 49, "running": 0, "done": 0, "failed": 1, "cancelled": 0}
        assert q.get("p0").traceback == "Traceback...\nValueError: boom"
    assert not Path(f"{qpath}-wal").exists()  # checkpointed into the database, then removed
    assert _file_journal_mode(qpath) == "delete"


def _hold_exclusive(path: str, seconds: float, ready) -> None:  # runs in a child process
    import time

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    ready.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def test_readers_and_writers_wait_for_a_busy_file(tmp_path, monkeypatch):
    monkeypatch.setenv(JOURNAL_ENV, "delete")
    monkeypatch.setattr(queue_module, "_BUSY_TIMEOUT_MS", 50)  # SQLite gives up fast: the retries must wait
    qpath = tmp_path / "q.sqlite"
    with Queue.open(qpath, create=True) as q:
        q.add([ManifestEntry("a", "/f", "/m")], out=tmp_path / "o.zarr")
    ctx = multiprocessing.get_context("spawn")

    def locked_for(seconds: float) -> multiprocessing.Process:
        ready = ctx.Event()
        proc = ctx.Process(target=_hold_exclusive, args=(str(qpath), seconds, ready))
        proc.start()
        assert ready.wait(30)
        return proc

    with Queue.open(qpath) as q:
        proc = locked_for(1.0)
        assert [r.state for r in q.rows()] == ["pending"]  # waited for the lock, did not fail
        proc.join(30)
        proc = locked_for(1.0)
        assert q.claim("a") and q.get("a").state == "running"
        proc.join(30)

        monkeypatch.setattr(queue_module, "BUSY_WAIT_S", 0.3)
        proc = locked_for(2.0)
        try:
            with pytest.raises(QueueError, match=r"stayed busy for 0 s"):
                q.counts()
        finally:
            proc.join(30)


def _probe_lock(path: str, out) -> None:  # runs in a child process
    out.put(Queue.open(path).lock().is_held_elsewhere())


def test_lock_in_this_process_is_not_lost_to_a_probe(tmp_path):
    qpath = tmp_path / "q.sqlite"
    Queue.open(qpath, create=True).close()
    ctx = multiprocessing.get_context("spawn")
    with Queue.open(qpath) as q, q.lock():
        assert q.lock().is_held_elsewhere()  # another QueueLock object sees the driver ...
        with pytest.raises(QueueLockedError, match="this process"):
            q.lock().acquire()  # ... and cannot take it twice
        # POSIX locks go when the process closes *any* descriptor of the file: the probes above
        # must not have opened one, so another process still sees the lock held
        out = ctx.Queue()
        proc = ctx.Process(target=_probe_lock, args=(str(qpath), out))
        proc.start()
        assert out.get(timeout=30) is True
        proc.join(30)
    assert not q.lock().is_held_elsewhere()
    with q.lock():
        pass
