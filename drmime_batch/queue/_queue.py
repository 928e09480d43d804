"""The persistent batch queue: one SQLite file (WAL) holding every pair and its state.

State machine::

    pending --claim--> running --finish--> done
       ^                  |  \\--fail----> failed --retry--> pending
       |                  \\--requeue (worker lost, driver restarted)--> pending
       \\--cancel--> cancelled --retry (named)--> pending

Every transition is one conditional ``UPDATE ... WHERE state = ...`` in its own transaction, so a
process killed at any moment leaves the file consistent. The ``run`` driver holds an exclusive
:func:`fcntl.flock` on the side file ``<queue>.lock`` (released by the kernel when the driver dies,
even by SIGKILL), which keeps a second driver away; the short commands (``submit``, ``retry``,
``cancel``) only touch rows in states the driver is not working on.

Schema changes are additive: a column added later (``fixed_mask``, ``moving_mask``) is nullable
and added on open to a file made before it (``ALTER TABLE ... ADD COLUMN``), so the schema version
stays 1 and an older drmime_batch still reads the file (ignoring what it does not know).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from drmime_batch._pair_id import check_pair_id, pair_id_key
from drmime_batch.errors import OutputStoreError, QueueError, QueueLockedError
from drmime_batch.queue._manifest import ManifestEntry

__all__ = ["STATES", "PairRow", "Queue", "QueueLock"]

STATES = ("pending", "running", "done", "failed", "cancelled")
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL UNIQUE,
    fixed TEXT NOT NULL,
    moving TEXT NOT NULL,
    fixed_landmarks TEXT,
    moving_landmarks TEXT,
    out TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    seconds REAL,
    worker TEXT,
    device TEXT,
    matrix TEXT,
    result TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}',
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    fixed_mask TEXT,
    moving_mask TEXT
);
CREATE INDEX IF NOT EXISTS pairs_state ON pairs (state);
"""
_COLUMNS = (
    "pair_id, fixed, moving, fixed_landmarks, moving_landmarks, out, state, attempts, error, "
    "seconds, worker, device, matrix, result, options, submitted_at, started_at, finished_at, "
    "fixed_mask, moving_mask"
)
#: Columns added after the first release: (name, SQL type), added on open when missing.
_ADDED_COLUMNS = (("fixed_mask", "TEXT"), ("moving_mask", "TEXT"))


@dataclass(frozen=True)
class PairRow:
    """One pair as the queue holds it (a read-only snapshot).

    Attributes
    ----------
    pair_id, fixed, moving, fixed_landmarks, moving_landmarks : str
        As submitted (absolute paths; landmarks may be ``None``).
    out : str
        The output store (``OUT.zarr``); the pair writes ``OUT.zarr/<pair_id>/...``.
    state : {"pending", "running", "done", "failed", "cancelled"}
    attempts : int
        How many times the pair was started (a worker lost mid-pair counts).
    error : str or None
        One-line error of the last failure.
    seconds : float or None
        Wall time of the last finished attempt (registration + outputs).
    worker, device : str or None
        Where the last attempt ran.
    matrix : list of lists or None
        3x3 fixed → moving full-resolution pixel matrix, for done pairs.
    result : dict
        Small summary (final MI, timings, levels, landmark scores, ...).
    options : dict
        Registration options given at ``submit``.
    submitted_at, started_at, finished_at : float or None
        Unix times.
    fixed_mask, moving_mask : str or None
        Tissue-mask images of the pair as submitted (absolute paths or URLs), when given.
    """

    pair_id: str
    fixed: str
    moving: str
    fixed_landmarks: str | None
    moving_landmarks: str | None
    out: str
    state: str
    attempts: int = 0
    error: str | None = None
    seconds: float | None = None
    worker: str | None = None
    device: str | None = None
    matrix: list[list[float]] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    fixed_mask: str | None = None
    moving_mask: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (a new object)."""
        return asdict(self)

    @classmethod
    def _from_sql(cls, rec: Sequence[Any]) -> PairRow:
        values = list(rec)
        values[12] = json.loads(values[12]) if values[12] else None
        values[13] = json.loads(values[13] or "{}")
        values[14] = json.loads(values[14] or "{}")
        return cls(*values)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a queue made by an earlier release up to date: add the nullable columns it lacks.

    Checked and altered in one write transaction, so two processes opening the same old file at
    once do not both try to add a column.
    """
    have = {row[1] for row in conn.execute("PRAGMA table_info(pairs)")}
    if all(name in have for name, _ in _ADDED_COLUMNS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(pairs)")}
        for name, sql_type in _ADDED_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE pairs ADD COLUMN {name} {sql_type}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class QueueLock:
    """An exclusive ``flock`` on ``<queue>.lock``; the kernel drops it when the holder dies.

    Use through :meth:`Queue.lock`. The file records pid and host of the holder, for messages only:
    the lock itself is the ``flock``.
    """

    def __init__(self, queue_path: Path) -> None:
        self.path = Path(f"{queue_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`QueueLockedError` naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
            os.close(fd)
            raise QueueLockedError(
                f"another 'run' is alive on queue {self.path.with_suffix('')} ({holder or 'holder unknown'}); "
                "wait for it to finish or stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def is_held_elsewhere(self) -> bool:
        """True when some other process holds the lock right now."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we may just have taken
        return False

    def __enter__(self) -> QueueLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Queue:
    """A persistent queue of slide pairs in one SQLite file.

    Open with :meth:`open` (``create=True`` to make a new one). Reads return frozen
    :class:`PairRow` snapshots; writes are single-statement transitions (see the module docstring).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from drmime_batch.queue import ManifestEntry
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with Queue.open(d / "q.sqlite", create=True) as q:
    ...     q.add([ManifestEntry("p1", "/a.tif", "/b.tif")], out=str(d / "out.zarr"))
    ...     [(r.pair_id, r.state, r.attempts) for r in q.rows()]
    ['p1']
    [('p1', 'pending', 0)]
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> Queue:
        """Open the queue file at ``path``.

        Parameters
        ----------
        path : str or Path
            The SQLite file.
        create : bool
            Make the file (and its parent folder) when it does not exist.

        Raises
        ------
        QueueError
            The file does not exist (and ``create`` is false) or is not a drmime_batch queue.
        """
        path = Path(path).expanduser()
        if not path.exists():
            if not create:
                raise QueueError(f"queue {path} does not exist; make it with 'drmime-batch submit'")
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(_SCHEMA_VERSION),),
            )
            (version,) = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if int(version) == _SCHEMA_VERSION:
                _add_missing_columns(conn)
        except sqlite3.DatabaseError as exc:
            raise QueueError(f"{path} is not a drmime_batch queue (SQLite said: {exc})") from exc
        if int(version) != _SCHEMA_VERSION:
            conn.close()
            raise QueueError(
                f"queue {path} has schema version {version}, this drmime_batch reads {_SCHEMA_VERSION}"
            )
        return cls(path, conn)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(self) -> QueueLock:
        """The driver lock of this queue (not yet taken; use as a context manager)."""
        return QueueLock(self.path)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ------------------------------------------------------------------ reading
    def rows(
        self, *, states: Iterable[str] | None = None, pair_ids: Iterable[str] | None = None
    ) -> list[PairRow]:
        """Snapshot of pairs in submission order, optionally filtered by state and id."""
        sql = f"SELECT {_COLUMNS} FROM pairs"
        where, args = [], []  # type: ignore[var-annotated]
        if states is not None:
            states = list(states)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        if pair_ids is not None:
            pair_ids = list(pair_ids)
            where.append(f"pair_id IN ({','.join('?' * len(pair_ids))})")
            args += pair_ids
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        return [PairRow._from_sql(rec) for rec in self._conn.execute(sql, args)]

    def get(self, pair_id: str) -> PairRow:
        """The row of one pair; :class:`QueueError` when the id is unknown."""
        rows = self.rows(pair_ids=[pair_id])
        if not rows:
            raise QueueError(f"no pair {pair_id!r} in queue {self.path}")
        return rows[0]

    def counts(self) -> dict[str, int]:
        """Number of pairs per state (every state present, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._conn.execute("SELECT state, COUNT(*) FROM pairs GROUP BY state"):
            counts[state] = n
        return counts

    # ------------------------------------------------------------------ submitting
    def add(
        self,
        entries: Sequence[ManifestEntry],
        *,
        out: str | Path,
        options: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Queue new pairs as ``pending``; all or nothing.

        Every pair id is checked with :func:`drmime_batch._pair_id.check_pair_id`, the rule the
        output writer applies, so a pair that could never write its outputs is refused here.

        Raises
        ------
        QueueError
            A pair id is unusable, duplicated in ``entries``, already in the queue, or differs
            from another id of the same output store only by case (nothing is added).
        """
        ids = [e.pair_id for e in entries]
        for e in entries:
            try:
                check_pair_id(e.pair_id)
            except OutputStoreError as exc:
                where = f"manifest line {e.line}: " if e.line else ""
                raise QueueError(f"{where}{exc}; nothing was added to queue {self.path}") from None
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise QueueError(f"duplicate pair ids in submission: {', '.join(dup)}")
        folded: dict[str, str] = {}
        for pid in ids:
            other = folded.setdefault(pair_id_key(pid), pid)
            if other != pid:
                raise QueueError(
                    f"pair ids {other!r} and {pid!r} differ only by case (one output folder on "
                    f"case-insensitive storage); nothing was added to queue {self.path}"
                )
        now = time.time()
        opts = json.dumps(dict(options or {}), sort_keys=True)
        out = str(out)
        # an fsspec URL (s3://bucket/out.zarr) is stored as given: Path() would collapse its "//"
        out = out.rstrip("/") if "://" in out else str(Path(out).expanduser().resolve())
        with self._transaction() as conn:
            clash = [
                pid
                for (pid,) in conn.execute(
                    f"SELECT pair_id FROM pairs WHERE pair_id IN ({','.join('?' * len(ids))})", ids
                )
            ] if ids else []
            if clash:
                raise QueueError(
                    f"pair id(s) already in queue {self.path}: {', '.join(sorted(clash))}; "
                    "nothing was added (rename them, or use 'retry' for existing pairs)"
                )
            for (pid,) in conn.execute("SELECT pair_id FROM pairs WHERE out=?", (out,)):
                if pair_id_key(pid) in folded:
                    raise QueueError(
                        f"pair id {folded[pair_id_key(pid)]!r} differs from {pid!r}, already queued for {out}, only "
                        "by case (one output folder on case-insensitive storage); nothing was added"
                    )
            conn.executemany(
                "INSERT INTO pairs (pair_id, fixed, moving, fixed_landmarks, moving_landmarks, out, "
                "options, submitted_at, updated_at, fixed_mask, moving_mask) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.pair_id, e.fixed, e.moving, e.fixed_landmarks, e.moving_landmarks, out, opts, now, now,
                     e.fixed_mask, e.moving_mask)
                    for e in entries
                ],
            )
        return ids

    # ------------------------------------------------------------------ transitions
    def _update(self, sql: str, args: Sequence[Any]) -> int:
        return self._conn.execute(sql, args).rowcount

    def claim(self, pair_id: str) -> bool:
        """``pending`` → ``running``: one more attempt starts. False if the pair was not pending."""
        now = time.time()
        return bool(
            self._update(
                "UPDATE pairs SET state='running', attempts=attempts+1, error=NULL, started_at=?, "
                "finished_at=NULL, updated_at=? WHERE pair_id=? AND state='pending'",
                (now, now, pair_id),
            )
        )

    def set_where(self, pair_id: str, *, worker: str | None, device: str | None) -> None:
        """Record the worker and device of a running pair."""
        self._update(
            "UPDATE pairs SET worker=COALESCE(?, worker), device=COALESCE(?, device), updated_at=? "
            "WHERE pair_id=? AND state='running'",
            (worker, device, time.time(), pair_id),
        )

    def count_attempt(self, pair_id: str) -> None:
        """A running pair was started again by the scheduler (its worker died): attempts + 1."""
        self._update(
            "UPDATE pairs SET attempts=attempts+1, updated_at=? WHERE pair_id=? AND state='running'",
            (time.time(), pair_id),
        )

    def finish(
        self,
        pair_id: str,
        *,
        matrix: Sequence[Sequence[float]],
        result: Mapping[str, Any],
        seconds: float | None,
        worker: str | None = None,
        device: str | None = None,
    ) -> bool:
        """``running`` → ``done`` with the matrix and result summary. False if not running."""
        now = time.time()
        return bool(
            self._update(
                "UPDATE pairs SET state='done', error=NULL, matrix=?, result=?, seconds=?, "
                "worker=COALESCE(?, worker), device=COALESCE(?, device), finished_at=?, updated_at=? "
                "WHERE pair_id=? AND state='running'",
                (
                    json.dumps([[float(v) for v in r] for r in matrix]),
                    json.dumps(dict(result), default=str),
                    seconds,
                    worker,
                    device,
                    now,
                    now,
                    pair_id,
                ),
            )
        )

    def fail(
        self,
        pair_id: str,
        error: str,
        *,
        seconds: float | None = None,
        worker: str | None = None,
        device: str | None = None,
    ) -> bool:
        """``running`` or ``pending`` → ``failed`` with a one-line error. False otherwise."""
        now = time.time()
        line = " ".join(str(error).split()) or "unknown error"
        return bool(
            self._update(
                "UPDATE pairs SET state='failed', error=?, seconds=?, worker=COALESCE(?, worker), "
                "device=COALESCE(?, device), finished_at=?, updated_at=? "
                "WHERE pair_id=? AND state IN ('running', 'pending')",
                (line[:2000], seconds, worker, device, now, now, pair_id),
            )
        )

    def requeue(self, pair_id: str, error: str | None = None) -> bool:
        """``running`` → ``pending`` (worker lost, driver stopped); keeps the attempt count."""
        return bool(
            self._update(
                "UPDATE pairs SET state='pending', error=?, updated_at=? WHERE pair_id=? AND state='running'",
                (error, time.time(), pair_id),
            )
        )

    def recover(self) -> list[str]:
        """Every ``running`` pair (left by a dead driver) back to ``pending``; returns their ids.

        Only call while holding :meth:`lock` (then no live driver is running them).
        """
        with self._transaction() as conn:
            ids = [pid for (pid,) in conn.execute("SELECT pair_id FROM pairs WHERE state='running' ORDER BY seq")]
            conn.execute(
                "UPDATE pairs SET state='pending', updated_at=? WHERE state='running'", (time.time(),)
            )
        return ids

    def retry(self, pair_ids: Iterable[str] | None = None) -> list[str]:
        """Put pairs back to ``pending``: every ``failed`` one, or the named ``failed``/``cancelled`` ones.

        Raises
        ------
        QueueError
            A named pair is unknown or in a state that cannot be retried (nothing changes).
        """
        return self._move(pair_ids, to="pending", default_from=("failed",), named_from=("failed", "cancelled"))

    def cancel(self, pair_ids: Iterable[str] | None = None) -> list[str]:
        """Mark pairs ``cancelled``: every ``pending`` one, or the named ``pending``/``failed`` ones.

        A running pair cannot be cancelled from outside its driver (stop the driver with Ctrl-C).

        Raises
        ------
        QueueError
            A named pair is unknown or in a state that cannot be cancelled (nothing changes).
        """
        return self._move(pair_ids, to="cancelled", default_from=("pending",), named_from=("pending", "failed"))

    def _move(
        self,
        pair_ids: Iterable[str] | None,
        *,
        to: str,
        default_from: tuple[str, ...],
        named_from: tuple[str, ...],
    ) -> list[str]:
        now = time.time()
        with self._transaction() as conn:
            if pair_ids is None:
                ids = [
                    pid
                    for (pid,) in conn.execute(
                        f"SELECT pair_id FROM pairs WHERE state IN ({','.join('?' * len(default_from))}) ORDER BY seq",
                        default_from,
                    )
                ]
            else:
                ids = list(dict.fromkeys(pair_ids))
                states = dict(
                    conn.execute(
                        f"SELECT pair_id, state FROM pairs WHERE pair_id IN ({','.join('?' * len(ids))})", ids
                    ).fetchall()
                ) if ids else {}
                unknown = [i for i in ids if i not in states]
                if unknown:
                    raise QueueError(f"no pair(s) {', '.join(map(repr, unknown))} in queue {self.path}")
                bad = [f"{i} ({states[i]})" for i in ids if states[i] not in named_from and states[i] != to]
                if bad:
                    raise QueueError(
                        f"cannot move to {to}: {', '.join(bad)}; only {'/'.join(named_from)} pairs can"
                    )
                ids = [i for i in ids if states[i] != to]
            for pid in ids:
                conn.execute(
                    "UPDATE pairs SET state=?, updated_at=?, error=CASE WHEN ?='pending' THEN NULL ELSE error END "
                    "WHERE pair_id=?",
                    (to, now, to, pid),
                )
        return ids
