"""The persistent batch queue: one SQLite file holding every pair and its state.

State machine::

    pending --claim--> running --finish--> done
       ^                  |  \\--fail----> failed --retry--> pending
       |                  \\--requeue (worker lost, driver restarted)--> pending
       \\--cancel--> cancelled --retry (named)--> pending

Every transition is one conditional ``UPDATE ... WHERE state = ...`` in its own ``BEGIN IMMEDIATE``
transaction, so a process killed at any moment leaves the file consistent. The ``run`` driver
holds the :class:`QueueLock` on the side file ``<queue>.lock``, which keeps a second driver away;
the short commands (``submit``, ``retry``, ``cancel``) only touch rows in states the driver is not
working on.

Journal and shared file systems
    On a local disk the file uses SQLite's WAL journal (readers never wait for the writer). WAL
    needs every process on one host, so on a network or cluster file system (NFS, CephFS, Lustre,
    GPFS, BeeGFS, SMB, ...: ``status`` on a login node while ``run`` works on another node) the
    queue uses the rollback journal (``journal_mode=DELETE``), which only needs the POSIX locks
    those file systems pass to their server; an existing WAL file is checkpointed and switched on
    open. ``DRMIME_BATCH_QUEUE_JOURNAL=auto|wal|delete`` overrides the detection (see
    :mod:`drmime_batch.queue._journal` for the list of file systems). With the rollback journal a
    reader waits while a write commits: every statement waits on a busy file (SQLite's busy
    timeout, then retries with back-off, for up to :data:`BUSY_WAIT_S` seconds) instead of failing.

Per-pair cost
    What the driver does for each pair (:meth:`Queue.next_pending`, :meth:`Queue.has_pending`,
    :meth:`Queue.get`, the transitions) goes through an index (``pairs_state`` on ``state``, whose
    entries SQLite keeps in ``seq`` order, i.e. submission order; ``pair_id`` is unique), so it
    costs the same in a queue of 1,000 or 100,000 pairs. :meth:`Queue.rows` and
    :meth:`Queue.counts` read the whole queue and are for commands, not per-pair loops.

Schema changes are additive: a column added later (``fixed_mask``, ``moving_mask``, ``traceback``)
is nullable and added on open to a file made before it (``ALTER TABLE ... ADD COLUMN``), so the
schema version stays 1 and an older drmime_batch still reads the file (ignoring what it does not
know).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import random
import socket
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from drmime_batch._pair_id import check_pair_id, pair_id_key
from drmime_batch.errors import ConfigError, OutputStoreError, QueueError, QueueLockedError
from drmime_batch.queue._journal import choose_journal_mode
from drmime_batch.queue._manifest import ManifestEntry

__all__ = ["BUSY_WAIT_S", "STATES", "TRACEBACK_MAX_CHARS", "PairRow", "Queue", "QueueLock"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

STATES = ("pending", "running", "done", "failed", "cancelled")
#: Longest wait, in seconds, of one queue operation on a file another process is writing.
BUSY_WAIT_S = 120.0
#: Tracebacks longer than this keep their last characters (where the exception is).
TRACEBACK_MAX_CHARS = 20_000
_BUSY_TIMEOUT_MS = 10_000  # SQLite's own wait per attempt; retries with back-off come on top
_SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS pairs (
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
    moving_mask TEXT,
    traceback TEXT
)""",
    # entries of an index on (state) are ordered by (state, rowid = seq): "the first pending pairs
    # in submission order" is a range read of this index, no sort and no scan
    "CREATE INDEX IF NOT EXISTS pairs_state ON pairs (state)",
)
_COLUMNS = (
    "pair_id, fixed, moving, fixed_landmarks, moving_landmarks, out, state, attempts, error, "
    "seconds, worker, device, matrix, result, options, submitted_at, started_at, finished_at, "
    "fixed_mask, moving_mask, traceback"
)
#: Columns added after the first release: (name, SQL type), added on open when missing.
_ADDED_COLUMNS = (("fixed_mask", "TEXT"), ("moving_mask", "TEXT"), ("traceback", "TEXT"))
_IN_CHUNK = 500  # ids per "IN (...)" list: SQLite builds cap the parameters of one statement (999 before 3.32)


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
    traceback : str or None
        Full traceback (several lines) of the last failure when it was an unexpected error,
        at most :data:`TRACEBACK_MAX_CHARS` characters; cleared with ``error``.
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
    traceback: str | None = None

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


# ---------------------------------------------------------------------------------- waiting on a busy file
def _is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds the lock we need (worth waiting for)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _retry_busy(what: Callable[[], _T], *, path: Path, max_wait_s: float | None = None) -> _T:
    """``what()``, run again with back-off while the file is busy, for up to ``max_wait_s`` seconds.

    SQLite's busy handler already waits inside each call, but not in every case: a connection
    that would deadlock gets ``SQLITE_BUSY`` at once, and a commit under the rollback journal can
    time out behind a long reader. ``what`` must be safe to repeat (one read, or one whole
    transaction that rolled back).
    """
    limit = BUSY_WAIT_S if max_wait_s is None else max_wait_s
    deadline = time.monotonic() + limit
    delay = 0.02
    while True:
        try:
            return what()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                if _is_busy(exc):
                    raise QueueError(f"queue {path} stayed busy for {limit:.0f} s ({exc}); try again") from exc
                raise
        time.sleep(delay * (0.5 + random.random()))  # jitter: two waiting processes do not retry in step
        delay = min(1.0, delay * 2)


# ---------------------------------------------------------------------------------- opening
def _set_journal(conn: sqlite3.Connection, path: Path) -> str:
    """Put the file in the journal mode its file system needs; return the mode it ends up in.

    Leaving WAL needs the file to itself: the WAL is checkpointed into the database first, and
    while another process keeps it open (an older ``run``) the switch is tried for a few seconds,
    then the file stays in WAL with a warning.
    """
    wanted, reason = choose_journal_mode(path)
    current = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    if current == wanted:
        return current
    deadline = time.monotonic() + 5.0
    while True:
        try:
            if current == "wal":
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            current = str(conn.execute(f"PRAGMA journal_mode = {wanted.upper()}").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        if current == wanted or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if current != wanted:
        logger.warning("queue %s stays in journal mode %s (wanted %s: %s); another process has it open",
                       path, current, wanted, reason)
    else:
        logger.debug("queue %s: journal mode %s (%s)", path, current, reason)
    return current


def _ensure_schema(conn: sqlite3.Connection) -> str:
    """Create the tables of a new file, add the columns an older file lacks; return the schema version.

    Writes only when something is missing: opening a queue for ``status`` takes no write lock.
    Checked again inside one write transaction, so two processes opening the same file at once do
    not both create or alter it.
    """

    def missing() -> bool:
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        if not {"meta", "pairs", "pairs_state"} <= names:
            return True
        have = {row[1] for row in conn.execute("PRAGMA table_info(pairs)")}
        if not all(name in have for name, _ in _ADDED_COLUMNS):
            return True
        return conn.execute("SELECT 1 FROM meta WHERE key='schema_version'").fetchone() is None

    if missing():
        conn.execute("BEGIN IMMEDIATE")
        try:
            if missing():
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(_SCHEMA_VERSION),)
                )
                (version,) = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if int(version) == _SCHEMA_VERSION:
                    have = {row[1] for row in conn.execute("PRAGMA table_info(pairs)")}
                    for name, sql_type in _ADDED_COLUMNS:
                        if name not in have:
                            conn.execute(f"ALTER TABLE pairs ADD COLUMN {name} {sql_type}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    (version,) = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return str(version)


# ---------------------------------------------------------------------------------- the driver lock
_HELD: dict[str, QueueLock] = {}  # lock files this process holds (POSIX locks are per process)
_HELD_GUARD = threading.Lock()
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class QueueLock:
    """The single-driver lock: a POSIX ``fcntl`` lock on ``<queue>.lock``, dropped by the kernel when its holder dies.

    Use through :meth:`Queue.lock`. The file records pid and host of the holder, for messages only:
    the lock itself is the ``fcntl`` lock.

    Why ``fcntl`` (:func:`fcntl.lockf`) and not ``flock`` or a lock file with a pid
        POSIX record locks are what network file systems carry to their server: NFSv4 in its
        protocol (NFSv3 through the lock manager), CephFS, Lustre mounted with ``flock``, GPFS,
        BeeGFS with global locks. They are also what SQLite itself relies on for the rollback
        journal, so the lock needs nothing from the file system that the queue does not already
        need. ``flock`` is emulated with them on Linux NFS but node-local on some others (Lustre
        ``localflock``, BeeGFS by default), so a driver on another node would not see it. An
        ``O_EXCL`` lock file with a pid cannot tell a dead holder on another host from a live one
        (pids are per host), and a stale-pid rule would let two drivers run; a kernel lock needs
        no such guess: it goes with the process (on NFSv4, with its client's lease when a whole
        node dies, after the server's lease time, typically 90 s).

        POSIX locks belong to the process, not the file descriptor, and closing *any* descriptor
        of the file drops them, so this class keeps a per-process record of the lock files it
        holds and never opens a second descriptor of a held one. A file system without POSIX
        locks (NFS mounted with ``nolock``) gets a :class:`QueueError` saying so.
    """

    def __init__(self, queue_path: Path) -> None:
        self.path = Path(f"{queue_path}.lock")
        self._fd: int | None = None

    def _key(self) -> str:
        return os.path.realpath(self.path)

    def _locked_message(self, holder: str) -> str:
        return (
            f"another 'run' is alive on queue {self.path.with_suffix('')} ({holder or 'holder unknown'}); "
            "wait for it to finish or stop it first"
        )

    def _try_lock(self, fd: int) -> bool:
        """Take the lock on ``fd`` without waiting; False when another process holds it."""
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            if exc.errno in _NO_LOCKS:
                raise QueueError(
                    f"cannot lock {self.path}: {exc.strerror}; the file system gives no POSIX locks, which "
                    "the queue needs (an NFS mount with 'nolock'?): put the queue on storage that has them"
                ) from None
            raise
        return True

    def acquire(self) -> None:
        """Take the lock or raise :class:`QueueLockedError` naming the holder."""
        with _HELD_GUARD:
            key = self._key()
            if key in _HELD:
                raise QueueLockedError(self._locked_message(f"pid {os.getpid()} on {socket.gethostname()}, this process"))
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                taken = self._try_lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if not taken:
                holder = ""
                with contextlib.suppress(OSError):
                    holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
                os.close(fd)
                raise QueueLockedError(self._locked_message(holder))
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            os.fsync(fd)  # so a 'run' on another host can name us
            self._fd = fd
            _HELD[key] = self

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        with _HELD_GUARD:
            if self._fd is None:
                return
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            with contextlib.suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            _HELD.pop(self._key(), None)

    def is_held_elsewhere(self) -> bool:
        """True when a driver holds the lock right now: another process, or another ``QueueLock`` of this one."""
        with _HELD_GUARD:
            if self._key() in _HELD:
                return _HELD[self._key()] is not self
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._try_lock(fd):
                    return True
                fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
            return False

    def __enter__(self) -> QueueLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------------------- the queue
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

    def __init__(self, path: Path, conn: sqlite3.Connection, journal_mode: str = "wal") -> None:
        self.path = path
        self._conn = conn
        #: The journal mode the file is in: ``"wal"`` or ``"delete"`` (see the module docstring).
        self.journal_mode = journal_mode

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, *, create: bool = False) -> Queue:
        """Open the queue file at ``path``.

        Picks the journal (WAL on a local disk, the rollback journal on a shared file system or as
        ``DRMIME_BATCH_QUEUE_JOURNAL`` says; see the module docstring) and brings an older file's
        schema up to date.

        Parameters
        ----------
        path : str or Path
            The SQLite file.
        create : bool
            Make the file (and its parent folder) when it does not exist.

        Raises
        ------
        QueueError
            The file does not exist (and ``create`` is false), is not a drmime_batch queue, stays
            busy, or ``DRMIME_BATCH_QUEUE_JOURNAL`` is not ``auto``, ``wal`` or ``delete``.
        """
        path = Path(path).expanduser()
        if not path.exists():
            if not create:
                raise QueueError(f"queue {path} does not exist; make it with 'drmime-batch submit'")
            path.parent.mkdir(parents=True, exist_ok=True)
        choose_journal_mode(path)  # a bad override is refused before the file is touched
        conn = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)

        def setup() -> tuple[str, str]:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = _set_journal(conn, path)
            # WAL is safe from corruption with NORMAL; the rollback journal needs FULL for that
            conn.execute(f"PRAGMA synchronous = {'NORMAL' if mode == 'wal' else 'FULL'}")
            return mode, _ensure_schema(conn)

        try:
            mode, version = _retry_busy(setup, path=path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise QueueError(f"{path} is not a drmime_batch queue (SQLite said: {exc})") from exc
        except BaseException:
            conn.close()
            raise
        if int(version) != _SCHEMA_VERSION:
            conn.close()
            raise QueueError(
                f"queue {path} has schema version {version}, this drmime_batch reads {_SCHEMA_VERSION}"
            )
        return cls(path, conn, mode)

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

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """All records of one query, waiting while the file is busy."""
        return _retry_busy(lambda: self._conn.execute(sql, args).fetchall(), path=self.path)

    def _write(self, body: Callable[[sqlite3.Connection], _T]) -> _T:
        """``body(conn)`` in one ``BEGIN IMMEDIATE`` transaction, repeated while the file is busy.

        IMMEDIATE takes the write lock first, so SQLite's busy handler can wait for it; a deferred
        write that reads first can meet another writer and fail at once (a would-be deadlock).
        """

        def attempt() -> _T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                value = body(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            return value

        return _retry_busy(attempt, path=self.path)

    # ------------------------------------------------------------------ reading
    def rows(
        self, *, states: Iterable[str] | None = None, pair_ids: Iterable[str] | None = None
    ) -> list[PairRow]:
        """Snapshot of pairs in submission order, optionally filtered by state and id.

        Reads every matching row: for commands and reports, not for a per-pair loop (see
        :meth:`next_pending`, :meth:`has_pending`, :meth:`get`).
        """
        sql = f"SELECT {_COLUMNS} FROM pairs"
        where: list[str] = []
        args: list[Any] = []
        if states is not None:
            states = list(states)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += states
        if pair_ids is not None:
            pair_ids = list(pair_ids)
            if len(pair_ids) > _IN_CHUNK:  # past SQLite's parameter cap: filter here
                wanted = set(pair_ids)
                return [r for r in self.rows(states=states) if r.pair_id in wanted]
            where.append(f"pair_id IN ({','.join('?' * len(pair_ids))})")
            args += pair_ids
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        return [PairRow._from_sql(rec) for rec in self._read(sql, args)]

    def get(self, pair_id: str) -> PairRow:
        """The row of one pair; :class:`QueueError` when the id is unknown."""
        recs = self._read(f"SELECT {_COLUMNS} FROM pairs WHERE pair_id=?", (pair_id,))
        if not recs:
            raise QueueError(f"no pair {pair_id!r} in queue {self.path}")
        return PairRow._from_sql(recs[0])

    def next_pending(self, limit: int, *, exclude: Iterable[str] = ()) -> list[PairRow]:
        """The first ``limit`` pending pairs in submission order, skipping the ids in ``exclude``.

        One range read of the state index: the cost grows with ``limit`` and ``len(exclude)``,
        not with the size of the queue.

        Parameters
        ----------
        limit : int
            At most this many rows (none when ``limit <= 0``).
        exclude : iterable of str
            Ids to skip (e.g. pairs the caller is already working on).

        Examples
        --------
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> with Queue.open(d / "q.sqlite", create=True) as q:
        ...     _ = q.add([ManifestEntry(f"p{i}", "/a.tif", "/b.tif") for i in range(5)], out=str(d / "o.zarr"))
        ...     [r.pair_id for r in q.next_pending(2, exclude=["p0"])]
        ['p1', 'p2']
        """
        if limit <= 0:
            return []
        skip = set(exclude)
        recs = self._read(
            f"SELECT {_COLUMNS} FROM pairs WHERE state='pending' ORDER BY seq LIMIT ?", (limit + len(skip),)
        )
        return [PairRow._from_sql(rec) for rec in recs if rec[0] not in skip][:limit]

    def has_pending(self) -> bool:
        """True when at least one pair is pending (one index probe)."""
        return bool(self._read("SELECT EXISTS (SELECT 1 FROM pairs WHERE state='pending')")[0][0])

    def counts(self) -> dict[str, int]:
        """Number of pairs per state (every state present, zeros included).

        Counts the entries of the state index (no table rows are read): linear in the queue size,
        cheap, but for commands and the start and end of a run, not for every pair.
        """
        counts = dict.fromkeys(STATES, 0)
        for state, n in self._read("SELECT state, COUNT(*) FROM pairs GROUP BY state"):
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

        ``options`` are checked against :class:`~drmime_batch.config.RegistrationConfig` here, so
        a batch with an unknown option or a value of the wrong type is refused when submitted
        rather than failing pair by pair when it runs.

        Raises
        ------
        QueueError
            A pair id is unusable, duplicated in ``entries``, already in the queue, or differs
            from another id of the same output store only by case (nothing is added).
        ConfigError
            An option is unknown or invalid (nothing is added).
        """
        from drmime_batch.config import RegistrationConfig  # torch-free

        try:
            RegistrationConfig.from_dict(dict(options or {}))
        except ConfigError as exc:
            raise ConfigError(f"registration options of the batch: {exc}; nothing was added to queue "
                              f"{self.path}") from None
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

        def insert(conn: sqlite3.Connection) -> None:
            clash: list[str] = []
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start:start + _IN_CHUNK]
                clash += [pid for (pid,) in conn.execute(
                    f"SELECT pair_id FROM pairs WHERE pair_id IN ({','.join('?' * len(chunk))})", chunk)]
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

        self._write(insert)
        return ids

    # ------------------------------------------------------------------ transitions
    def _update(self, sql: str, args: Sequence[Any]) -> int:
        return self._write(lambda conn: conn.execute(sql, args).rowcount)

    def claim(self, pair_id: str) -> bool:
        """``pending`` → ``running``: one more attempt starts. False if the pair was not pending."""
        now = time.time()
        return bool(
            self._update(
                "UPDATE pairs SET state='running', attempts=attempts+1, error=NULL, traceback=NULL, started_at=?, "
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
                "UPDATE pairs SET state='done', error=NULL, traceback=NULL, matrix=?, result=?, seconds=?, "
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
        traceback: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> bool:
        """``running`` or ``pending`` → ``failed`` with a one-line error. False otherwise.

        Parameters
        ----------
        pair_id : str
        error : str
            Squashed to one line (at most 2,000 characters).
        seconds : float, optional
            Wall time of the failed attempt.
        worker, device : str, optional
            Where it ran (kept from before when not given).
        traceback : str, optional
            Full traceback of an unexpected error, stored as it is (several lines); only its last
            :data:`TRACEBACK_MAX_CHARS` characters when longer. ``None`` clears an earlier one.
        result : mapping, optional
            What is known of the failed attempt (the pair's outcome record: its failure kind,
            the images opened); replaces the row's ``result``. None keeps it.
        """
        now = time.time()
        line = " ".join(str(error).split()) or "unknown error"
        if traceback is not None and len(traceback) > TRACEBACK_MAX_CHARS:
            cut = len(traceback) - TRACEBACK_MAX_CHARS
            traceback = f"[... first {cut} characters cut ...]\n" + traceback[cut:]
        return bool(
            self._update(
                "UPDATE pairs SET state='failed', error=?, traceback=?, seconds=?, worker=COALESCE(?, worker), "
                "device=COALESCE(?, device), result=COALESCE(?, result), finished_at=?, updated_at=? "
                "WHERE pair_id=? AND state IN ('running', 'pending')",
                (line[:2000], traceback, seconds, worker, device,
                 None if result is None else json.dumps(dict(result), default=str), now, now, pair_id),
            )
        )

    def requeue(self, pair_id: str, error: str | None = None, *, count: bool = True) -> bool:
        """``running`` → ``pending`` (worker lost, driver stopped).

        ``count=False`` takes back the attempt that started it: a run the user stopped (Ctrl-C,
        SIGTERM) says nothing about the pair, and several stopped runs must not use up its
        attempts. A lost worker keeps its attempt (it may be the pair that killed the worker).
        """
        back = 0 if count else 1
        return bool(
            self._update(
                "UPDATE pairs SET state='pending', error=?, traceback=NULL, attempts=MAX(attempts - ?, 0), "
                "updated_at=? WHERE pair_id=? AND state='running'",
                (error, back, time.time(), pair_id),
            )
        )

    def recover(self) -> list[str]:
        """Every ``running`` pair (left by a dead driver) back to ``pending``; returns their ids.

        Only call while holding :meth:`lock` (then no live driver is running them).
        """

        def body(conn: sqlite3.Connection) -> list[str]:
            ids = [pid for (pid,) in conn.execute("SELECT pair_id FROM pairs WHERE state='running' ORDER BY seq")]
            conn.execute("UPDATE pairs SET state='pending', updated_at=? WHERE state='running'", (time.time(),))
            return ids

        return self._write(body)

    def retry(self, pair_ids: Iterable[str] | None = None) -> list[str]:
        """Put pairs back to ``pending``: every ``failed`` one, or the named ``failed``/``cancelled`` ones.

        Clears their ``error`` and ``traceback``.

        Raises
        ------
        QueueError
            A named pair is unknown or in a state that cannot be retried (nothing changes).
        """
        return self._move(pair_ids, to="pending", default_from=("failed",), named_from=("failed", "cancelled"))

    def rerun_with(self, changes: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Put ``done`` or ``failed`` pairs back to ``pending`` with their options changed.

        ``changes`` maps a pair id to the options merged into that pair's stored options (the
        retry strategy, recorded in the queue). Pairs in another state are left as they are.
        Returns the ids moved.
        """
        now = time.time()

        def body(conn: sqlite3.Connection) -> list[str]:
            moved = []
            for pid, extra in changes.items():
                rec = conn.execute("SELECT state, options FROM pairs WHERE pair_id=?", (pid,)).fetchone()
                if rec is None or rec[0] not in ("done", "failed"):
                    continue
                opts = json.loads(rec[1] or "{}") | dict(extra)
                conn.execute("UPDATE pairs SET state='pending', options=?, error=NULL, traceback=NULL, updated_at=? "
                             "WHERE pair_id=?", (json.dumps(opts, sort_keys=True), now, pid))
                moved.append(pid)
            return moved

        return self._write(body)

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
        named = None if pair_ids is None else list(dict.fromkeys(pair_ids))

        def body(conn: sqlite3.Connection) -> list[str]:
            if named is None:
                ids = [
                    pid
                    for (pid,) in conn.execute(
                        f"SELECT pair_id FROM pairs WHERE state IN ({','.join('?' * len(default_from))}) ORDER BY seq",
                        default_from,
                    )
                ]
            else:
                states: dict[str, str] = {}
                for start in range(0, len(named), _IN_CHUNK):
                    chunk = named[start:start + _IN_CHUNK]
                    states.update(conn.execute(
                        f"SELECT pair_id, state FROM pairs WHERE pair_id IN ({','.join('?' * len(chunk))})", chunk
                    ).fetchall())
                unknown = [i for i in named if i not in states]
                if unknown:
                    raise QueueError(f"no pair(s) {', '.join(map(repr, unknown))} in queue {self.path}")
                bad = [f"{i} ({states[i]})" for i in named if states[i] not in named_from and states[i] != to]
                if bad:
                    raise QueueError(
                        f"cannot move to {to}: {', '.join(bad)}; only {'/'.join(named_from)} pairs can"
                    )
                ids = [i for i in named if states[i] != to]
            clear = to == "pending"
            conn.executemany(
                "UPDATE pairs SET state=?, updated_at=?, error=CASE WHEN ? THEN NULL ELSE error END, "
                "traceback=CASE WHEN ? THEN NULL ELSE traceback END WHERE pair_id=?",
                [(to, now, clear, clear, pid) for pid in ids],
            )
            return ids

        return self._write(body)
