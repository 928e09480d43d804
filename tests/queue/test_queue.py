"""The persistent queue and manifest reader, on real SQLite files."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from drmime_batch.errors import ManifestError, QueueError, QueueLockedError
from drmime_batch.queue import ManifestEntry, Queue, read_manifest


def _manifest(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_manifest_ours_resolves_relative_paths(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    path = _manifest(sub, "pair_id,fixed,moving,fixed_landmarks,moving_landmarks\na,f.tif,m.tif,f.csv,m.csv\n\nb,/x/f.tif,m2.tif,,\n")
    entries = read_manifest(path)
    assert [e.pair_id for e in entries] == ["a", "b"]
    assert entries[0].fixed == str((sub / "f.tif").resolve())
    assert entries[0].moving_landmarks == str((sub / "m.csv").resolve())
    assert entries[1].fixed == "/x/f.tif" and entries[1].fixed_landmarks is None
    assert entries[1].line == 4


def test_manifest_anhir_cover_table(tmp_path):
    path = _manifest(
        tmp_path,
        "Target image,Source image,Target landmarks,Source landmarks,Image size [pixels]\n"
        'img/He.jpg,img/CD31.jpg,lm/He.csv,lm/CD31.csv,"(660, 895)"\n',
    )
    (entry,) = read_manifest(path)
    assert entry.pair_id == "CD31-to-He"
    assert entry.fixed.endswith("img/He.jpg") and entry.moving.endswith("img/CD31.jpg")
    assert entry.fixed_landmarks.endswith("lm/He.csv")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("pair_id,fixed,moving\na,f,m\nb,f,m\na,f,m2\n", r"line 4: duplicate pair id 'a' \(first on line 2\)"),
        ("pair_id,fixed\na,f\n", r"line 1: missing column\(s\) moving"),
        ("fixed,moving\nf,m\n", r"line 1: missing column 'pair_id'"),
        ("pair_id,fixed,moving\na,,m\n", r"line 2: empty 'fixed' cell"),
        ("pair_id,fixed,moving\na b,f,m\n", r"line 2: pair id 'a b' is not usable"),
        ("pair_id,fixed,moving\na,f,m,extra\n", r"line 2: more cells than header columns"),
        ("pair_id,fixed,moving\n", r"no pairs"),
        ("", r"line 1: empty manifest"),
    ],
)
def test_manifest_refusals_name_the_line(tmp_path, text, match):
    with pytest.raises(ManifestError, match=match):
        read_manifest(_manifest(tmp_path, text))


def test_manifest_unreadable(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "nope.csv")


def test_queue_transitions_and_persistence(tmp_path):
    qpath = tmp_path / "q.sqlite"
    with Queue.open(qpath, create=True) as q:
        q.add([ManifestEntry("a", "/f", "/m"), ManifestEntry("b", "/f", "/m2")], out=tmp_path / "o.zarr",
              options={"max_iterations": 5})
        with pytest.raises(QueueError, match=r"already in queue .*: a; nothing was added"):
            q.add([ManifestEntry("c", "/f", "/m"), ManifestEntry("a", "/f", "/m")], out=tmp_path / "o.zarr")
        assert [r.pair_id for r in q.rows()] == ["a", "b"]
        assert q.claim("a") and not q.claim("a")
        q.set_where("a", worker="tcp://w", device="cpu")
        assert q.finish("a", matrix=[[1, 0, 2], [0, 1, 3], [0, 0, 1]], result={"final_mi": 0.5}, seconds=1.5)
        assert q.claim("b")
        assert q.fail("b", "CorruptImageError: /m2:\n truncated")
    with Queue.open(qpath) as q:  # reopened: everything persisted
        a, b = q.rows()
        assert (a.state, a.attempts, a.matrix[0][2], a.result["final_mi"], a.worker) == ("done", 1, 2.0, 0.5, "tcp://w")
        assert a.options == {"max_iterations": 5} and a.out == str((tmp_path / "o.zarr").resolve())
        assert (b.state, b.error) == ("failed", "CorruptImageError: /m2: truncated")
        json.dumps([r.to_dict() for r in q.rows()])
        assert q.retry() == ["b"] and q.get("b").state == "pending" and q.get("b").error is None
        with pytest.raises(QueueError, match=r"cannot move to pending: a \(done\)"):
            q.retry(["a"])
        with pytest.raises(QueueError, match=r"no pair\(s\) 'zz'"):
            q.cancel(["zz"])
        assert q.cancel() == ["b"] and q.retry(["b"]) == ["b"]
        assert q.claim("b") and q.recover() == ["b"] and q.get("b").attempts == 2
        assert q.counts() == {"pending": 1, "running": 0, "done": 1, "failed": 0, "cancelled": 0}


def test_open_missing_or_foreign_file(tmp_path):
    with pytest.raises(QueueError, match="does not exist"):
        Queue.open(tmp_path / "none.sqlite")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(QueueError, match="is not a drmime_batch queue"):
        Queue.open(bad)


def _hold_lock(path: str, ready) -> None:  # runs in a child process
    q = Queue.open(path)
    q.lock().acquire()
    ready.set()
    time.sleep(60)


def test_lock_refuses_second_driver_and_dies_with_sigkill(tmp_path):
    qpath = tmp_path / "q.sqlite"
    Queue.open(qpath, create=True).close()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(qpath), ready))
    proc.start()
    try:
        assert ready.wait(30)
        q = Queue.open(qpath)
        assert q.lock().is_held_elsewhere()
        with pytest.raises(QueueLockedError, match=rf"another 'run' is alive .*pid {proc.pid}"):
            q.lock().acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
    with q.lock():  # the kernel released the flock of the killed holder
        assert f"pid {os.getpid()}" in Path(f"{qpath}.lock").read_text()
    q.close()


def test_options_are_checked_when_a_batch_is_queued(tmp_path):
    """A bad option is refused at submit, naming it; nothing is queued (it would fail every pair at run)."""
    from drmime_batch.errors import ConfigError

    entries = [ManifestEntry(pair_id="p1", fixed=str(tmp_path / "f.png"), moving=str(tmp_path / "m.png"))]
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        with pytest.raises(ConfigError, match="lr_transform must be a number, got 'abc'"):
            q.add(entries, out=tmp_path / "out.zarr", options={"lr_transform": "abc"})
        with pytest.raises(ConfigError, match=r"unknown registration option\(s\) \['max_iter'\]"):
            q.add(entries, out=tmp_path / "out.zarr", options={"max_iter": 10})
        assert q.rows() == []
        assert q.add(entries, out=tmp_path / "out.zarr", options={"max_iterations": 10}) == ["p1"]


def test_checking_options_at_submit_does_not_import_torch(tmp_path):
    """The queue checks options with the torch-free config: ``submit``-side code stays light."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from drmime_batch.queue import ManifestEntry, Queue\n"
        f"q = Queue.open({str(tmp_path / 'q.sqlite')!r}, create=True)\n"
        f"q.add([ManifestEntry(pair_id='p', fixed='/f.png', moving='/m.png')], out={str(tmp_path / 'o.zarr')!r}, "
        "options={'transform': 'rigid', 'max_iterations': 5})\n"
        "print('torch' in sys.modules, 'dask' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False"]


def test_a_stopped_run_does_not_use_up_attempts(tmp_path):
    """Requeued after a user stop (count=False) the attempt is taken back; after a lost worker it stays."""
    entries = [ManifestEntry(pair_id="p1", fixed=str(tmp_path / "f.png"), moving=str(tmp_path / "m.png"))]
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        q.add(entries, out=tmp_path / "out.zarr")
        for _ in range(3):  # three runs stopped by the user while the pair ran
            assert q.claim("p1")
            assert q.requeue("p1", "interrupted", count=False)
        assert q.get("p1").attempts == 0 and q.get("p1").state == "pending"
        assert q.claim("p1") and q.requeue("p1", "worker lost")
        assert q.get("p1").attempts == 1
