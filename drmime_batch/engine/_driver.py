"""The batch driver: feeds pending pairs of a queue to a Dask client and records what comes back.

One process, one thread owns the queue while it runs (it holds the queue's lock). It keeps a
bounded number of registration futures in flight in an :class:`distributed.as_completed`, refilled
from the queue with ``.add()``; a pair's warp (a dask graph of chunk tasks writing the registered
OME-Zarr) runs in a small thread pool of the driver, each computing on the same client. A pair
becomes ``done`` only once :func:`drmime_batch.io.pair_is_complete` agrees.

The driver reports through one callback taking :class:`RunEvent` objects (the console renders
them); it never prints.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue as stdqueue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from drmime_batch.engine._task import PROGRESS_TOPIC, PairTask, register_pair
from drmime_batch.errors import ConfigError
from drmime_batch.outcome import PairOutcome
from drmime_batch.queue import PairRow, Queue

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["RunEvent", "RunOptions", "RunSummary", "run_queue"]

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
#: Parts of a pair's outcome the queue holds in columns of their own, not in its ``result``.
_KEPT_APART = ("matrix", "ok", "error", "traceback", "pid")
_WARP_PRIORITY = 10


@dataclass(frozen=True)
class RunOptions:
    """How a ``run`` drives its queue.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"} or None
        Overrides the device given at ``submit``. ``"cuda"`` asks the scheduler for
        ``resources={"GPU": 1}``, so only workers advertising a GPU take pairs, one at a time.
    warp : bool
        Also write ``<out>/<pair_id>/registered`` (the warped moving image, OME-Zarr).
    max_in_flight : int or None
        Pairs in flight at once, registering or warping (default: the cluster's total threads;
        twice that with ``warp=False``, so the scheduler always has the next pair at hand).
    max_attempts : int
        Attempts per pair when workers die under it; then the pair is ``failed``.
    warp_threads : int
        Warps driven at once (each one a graph spread over the workers).
    poll_s : float
        Driver loop period when nothing happens.
    """

    device: str | None = None
    warp: bool = True
    max_in_flight: int | None = None
    max_attempts: int = 3
    warp_threads: int = 2
    poll_s: float = 0.1

    def __post_init__(self) -> None:
        if self.device is not None and self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")


@dataclass(frozen=True)
class RunEvent:
    """Something the console may show.

    kind : {"begin", "submitted", "started", "progress", "warping", "done", "failed", "requeued",
            "log", "end"}
    """

    kind: str
    pair_id: str | None = None
    row: PairRow | None = None
    worker: str | None = None
    iteration: int | None = None
    value: float | None = None
    message: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSummary:
    """What a ``run`` did; ``counts`` is the queue's state count at the end."""

    counts: dict[str, int]
    done: tuple[str, ...]
    failed: tuple[str, ...]
    requeued: tuple[str, ...]
    interrupted: bool
    seconds: float

    @property
    def ok(self) -> bool:
        """True when every pair of the queue is done or cancelled and nothing was interrupted."""
        return not self.interrupted and self.counts.get("failed", 0) == 0 and self.counts.get("pending", 0) == 0 \
            and self.counts.get("running", 0) == 0


def _is_worker_loss(exc: BaseException) -> bool:
    from distributed import KilledWorker
    from distributed.comm.core import CommClosedError

    return isinstance(exc, (KilledWorker, CommClosedError)) or type(exc).__name__ in ("FutureCancelledError",)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _queue_record(outcome: PairOutcome) -> dict[str, Any]:
    """The outcome as the queue's ``result`` column holds it (matrix, error, traceback have columns)."""
    return {k: v for k, v in outcome.to_dict().items() if k not in _KEPT_APART}


def _failed_by(outcome: PairOutcome, exc: BaseException) -> PairOutcome:
    """``outcome`` marked as failed by ``exc``: its kind, and the traceback when ``exc`` is a bug."""
    import traceback

    from drmime_batch.engine._task import _failure_kind

    kind = "output" if isinstance(exc, OSError) else _failure_kind(exc)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if kind == "internal" else None
    return outcome.with_(ok=False, matrix=None, failure=kind, traceback=text)


def _warp_pair(row: PairRow, matrix: Any) -> None:
    """Warp the moving image of a done registration onto the fixed grid and write it (blocking)."""
    import dask
    import numpy as np

    from drmime_batch.io import open_image, read_field, warp, write_registered

    fixed_img = open_image(row.fixed)
    moving_img = open_image(row.moving)
    field = read_field(row.out, row.pair_id)  # a deformable result's displacement, else None
    # chunk tasks of a warp go before registrations still queued, so finished pairs complete first
    with dask.annotate(priority=_WARP_PRIORITY):
        arr = warp(moving_img, np.asarray(matrix, dtype=np.float64), like=fixed_img, field=field)
        write_registered(row.out, row.pair_id, arr, pixel_size=fixed_img.pixel_size)


def _total_threads(client: Client) -> int:
    try:
        return max(1, sum(client.nthreads().values()))
    except Exception:  # noqa: BLE001 - sizing only
        return 1


class _Driver:
    def __init__(
        self,
        queue: Queue,
        client: Client,
        options: RunOptions,
        on_event: Callable[[RunEvent], None],
        stop: threading.Event,
    ) -> None:
        from distributed import as_completed

        self.q = queue
        self.client = client
        self.opt = options
        self.emit = on_event
        self.stop = stop
        self.ac = as_completed()
        self.inflight: dict[str, tuple[str, PairTask]] = {}  # future key -> (pair_id, task)
        self.warps: dict[cf.Future[None], tuple[str, PairOutcome, float]] = {}
        self.warp_pool = cf.ThreadPoolExecutor(max(1, options.warp_threads), thread_name_prefix="drmime-warp")
        self.events: stdqueue.SimpleQueue[dict[str, Any]] = stdqueue.SimpleQueue()
        self.starts: dict[str, set[tuple[str, int]]] = {}  # pair -> {(worker, pid)} seen starting
        self.done: list[str] = []
        self.failed: list[str] = []
        self.requeued: list[str] = []
        self._threads = (0, -1e9)  # (total worker threads, when asked)

    # -------------------------------------------------------------- helpers
    def _row(self, pair_id: str) -> PairRow:
        return self.q.get(pair_id)

    def _capacity(self) -> int:
        if self.opt.max_in_flight:
            return self.opt.max_in_flight
        now = time.monotonic()
        if now - self._threads[1] > 2.0:  # workers come and go (adaptive clusters): ask now and then
            self._threads = (_total_threads(self.client), now)
        threads = self._threads[0]
        # with warps, keep no registration queued at the scheduler: a freed thread then takes the
        # (higher-priority) warp chunks of the pair that just finished instead of a new pair
        return threads if self.opt.warp else 2 * threads

    def _submit(self, row: PairRow) -> None:
        if not self.q.claim(row.pair_id):
            return  # cancelled (or taken) meanwhile
        row = self._row(row.pair_id)
        options = dict(row.options)
        if self.opt.device is not None:
            options["device"] = self.opt.device
        task = PairTask(
            pair_id=row.pair_id,
            fixed=row.fixed,
            moving=row.moving,
            out=row.out,
            fixed_landmarks=row.fixed_landmarks,
            moving_landmarks=row.moving_landmarks,
            options=options,
            attempt=row.attempts,
            fixed_mask=row.fixed_mask,
            moving_mask=row.moving_mask,
        )
        resources = {"GPU": 1} if options.get("device", "auto") == "cuda" else None
        future = self.client.submit(
            register_pair,
            task,
            key=f"register-{row.pair_id}-{row.attempts}",
            pure=False,
            resources=resources,
        )
        self.inflight[str(future.key)] = (row.pair_id, task)
        self.starts[row.pair_id] = set()
        self.ac.add(future)
        self.emit(RunEvent("submitted", pair_id=row.pair_id, row=row))

    def _refill(self) -> None:
        room = self._capacity() - len(self.inflight) - len(self.warps)
        if room <= 0 or self.stop.is_set():
            return
        busy = {pid for pid, _ in self.inflight.values()} | {pid for pid, _, _ in self.warps.values()}
        # only the next `room` pending rows (an index range read), never the whole pending set:
        # the cost per finished pair must not grow with the size of the queue
        for row in self.q.next_pending(room, exclude=busy):
            self._submit(row)

    def _on_topic(self, event: Any) -> None:
        # runs on the client's event loop thread: hand over to the driver thread
        msg = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        if isinstance(msg, dict):
            self.events.put(msg)

    def _drain_events(self) -> None:
        latest_progress: dict[str, dict[str, Any]] = {}
        while True:
            try:
                msg = self.events.get_nowait()
            except stdqueue.Empty:
                break
            pair_id = msg.get("pair_id")
            if pair_id not in {pid for pid, _ in self.inflight.values()}:
                continue
            if msg.get("event") == "start":
                seen = self.starts.setdefault(pair_id, set())
                ident = (str(msg.get("worker")), int(msg.get("pid", 0)))
                if seen and ident not in seen:
                    self.q.count_attempt(pair_id)  # the scheduler restarted it after a worker died
                    self.emit(RunEvent("log", pair_id=pair_id, message=f"{pair_id}: restarted on {ident[0]}"))
                seen.add(ident)
                self.q.set_where(pair_id, worker=ident[0], device=None)
                self.emit(RunEvent("started", pair_id=pair_id, worker=ident[0], row=self._row(pair_id)))
            elif msg.get("event") == "progress":
                latest_progress[pair_id] = msg
        for pair_id, msg in latest_progress.items():
            self.emit(RunEvent("progress", pair_id=pair_id, worker=msg.get("worker"),
                               iteration=msg.get("iteration"), value=msg.get("value")))

    def _finish(self, pair_id: str, outcome: PairOutcome, seconds: float) -> None:
        from drmime_batch.io import pair_is_complete

        row = self._row(pair_id)
        if not pair_is_complete(row.out, pair_id, warp=self.opt.warp):
            self._fail(pair_id, f"outputs of {pair_id} in {row.out} are incomplete after the run", outcome)
            return
        outcome = outcome.with_(warped=self.opt.warp, seconds=seconds)
        assert outcome.matrix is not None  # a finished outcome has its matrix (PairOutcome checks)
        # the queue keeps the matrix in its own column; the rest of the record is the result
        record = _queue_record(outcome)
        self.q.finish(pair_id, matrix=outcome.matrix.tolist(), result=record, seconds=seconds,
                      worker=outcome.worker, device=outcome.device)
        self.done.append(pair_id)
        self.emit(RunEvent("done", pair_id=pair_id, row=self._row(pair_id)))

    def _fail(self, pair_id: str, error: str, outcome: PairOutcome | None = None) -> None:
        self.q.fail(pair_id, error, seconds=None if outcome is None else outcome.seconds,
                    worker=None if outcome is None else outcome.worker,
                    device=None if outcome is None else outcome.device,
                    traceback=None if outcome is None else outcome.traceback,
                    result=None if outcome is None else _queue_record(
                        outcome.with_(ok=False, matrix=None, failure=outcome.failure or "output")))
        self.failed.append(pair_id)
        self.emit(RunEvent("failed", pair_id=pair_id, row=self._row(pair_id), message=error))

    def _requeue(self, pair_id: str, why: str, *, count: bool = True) -> None:
        if self.q.requeue(pair_id, why, count=count):
            self.requeued.append(pair_id)
            self.emit(RunEvent("requeued", pair_id=pair_id, message=why))

    # -------------------------------------------------------------- results
    def _on_register(self, future: Future) -> None:
        pair_id, task = self.inflight.pop(str(future.key))
        self.starts.pop(pair_id, None)
        status = future.status
        if status == "finished":
            try:
                outcome: PairOutcome = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. result lost with its worker
                return self._on_error(pair_id, exc)
            finally:
                future.release()
            self.q.set_where(pair_id, worker=outcome.worker, device=outcome.device)
            if not outcome.ok:
                return self._fail(pair_id, str(outcome.error), outcome)
            if self.opt.warp:
                row = self._row(pair_id)
                self.emit(RunEvent("warping", pair_id=pair_id, row=row))
                wf = self.warp_pool.submit(_warp_pair, row, outcome.matrix)
                self.warps[wf] = (pair_id, outcome, time.perf_counter())
            else:
                self._finish(pair_id, outcome, float(outcome.seconds or 0.0))
            return
        error: BaseException
        try:
            error = future.exception() or RuntimeError(f"task ended in state {status}")
        except Exception as other:  # noqa: BLE001 - cancelled futures raise here
            error = other
        future.release()
        self._on_error(pair_id, error)

    def _on_error(self, pair_id: str, exc: BaseException) -> None:
        if _is_worker_loss(exc):
            row = self._row(pair_id)
            if row.attempts < self.opt.max_attempts and not self.stop.is_set():
                self._requeue(pair_id, f"worker lost ({_one_line(exc)})")
                self.emit(RunEvent("log", pair_id=pair_id,
                                   message=f"{pair_id}: worker lost, retrying ({row.attempts}/{self.opt.max_attempts})"))
            elif self.stop.is_set():
                self._requeue(pair_id, "interrupted", count=False)
            else:
                error = f"workers died {row.attempts} times running it: {_one_line(exc)}"
                self._fail(pair_id, error, PairOutcome.failed(pair_id, error, failure="worker"))
        else:
            # raised by the task rather than returned: not a bad input (those are returned), keep
            # the traceback the worker sent along
            failed = PairOutcome.failed(pair_id, _one_line(exc), failure="internal")
            self._fail(pair_id, _one_line(exc), _failed_by(failed, exc))

    def _check_warps(self) -> bool:
        finished = [wf for wf in self.warps if wf.done()]
        for wf in finished:
            pair_id, outcome, t_start = self.warps.pop(wf)
            seconds = float(outcome.seconds or 0.0) + (time.perf_counter() - t_start)
            exc = wf.exception()
            if exc is None:
                self._finish(pair_id, outcome, seconds)
            elif self.stop.is_set():
                self._requeue(pair_id, "interrupted while warping", count=False)
            else:
                self._fail(pair_id, f"warping {pair_id}: {_one_line(exc)}", _failed_by(outcome, exc))
        return bool(finished)

    # -------------------------------------------------------------- loop
    def run(self) -> RunSummary:
        t0 = time.perf_counter()
        recovered = self.q.recover()
        if recovered:
            self.emit(RunEvent("log", message=f"{len(recovered)} pair(s) left running by a stopped driver "
                                              f"go back to pending: {', '.join(recovered)}"))
        self.emit(RunEvent("begin", counts=self.q.counts()))
        if self.opt.device == "cuda" or any(r.options.get("device") == "cuda" for r in self.q.rows(states=["pending"])):
            try:
                workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
            except Exception:  # noqa: BLE001 - a warning only
                workers = {}
            if not any((w.get("resources") or {}).get("GPU") for w in workers.values()):
                self.emit(RunEvent("log", message="no worker advertises the resource GPU (dask worker --resources "
                                                  "GPU=1): cuda pairs wait until one joins"))
        try:
            self.client.subscribe_topic(PROGRESS_TOPIC, self._on_topic)
        except Exception:  # noqa: BLE001 - live MI is optional
            logger.debug("cannot subscribe to worker events", exc_info=True)
        try:
            self._loop()
        finally:
            self._shutdown()
        counts = self.q.counts()
        self.emit(RunEvent("end", counts=counts))
        return RunSummary(counts, tuple(self.done), tuple(self.failed), tuple(self.requeued),
                          self.stop.is_set(), time.perf_counter() - t0)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._refill()
            self._drain_events()
            busy = False
            if self.ac.has_ready():
                for future in self.ac.next_batch(block=False):
                    self._on_register(future)
                busy = True
            busy = self._check_warps() or busy
            if not self.inflight and not self.warps:
                if not self.q.has_pending():
                    break
                continue
            if not busy:
                self.stop.wait(self.opt.poll_s)

    def _shutdown(self) -> None:
        """Leave the queue consistent: whatever is still in flight goes back to pending."""
        with_client = True
        try:
            self.client.unsubscribe_topic(PROGRESS_TOPIC)
        except Exception:  # noqa: BLE001
            with_client = False
        for key, (pair_id, _task) in list(self.inflight.items()):
            self._requeue(pair_id, "interrupted", count=False)
        if with_client and self.inflight:
            try:
                self.client.cancel(list(self.ac.futures), force=True)
            except Exception:  # noqa: BLE001 - best effort on the way out
                logger.debug("cancel failed", exc_info=True)
        self.inflight.clear()
        for wf, (pair_id, _r, _t) in list(self.warps.items()):
            wf.cancel()
            self._requeue(pair_id, "interrupted while warping", count=False)
        self.warps.clear()
        self.warp_pool.shutdown(wait=False, cancel_futures=True)
        self.ac.clear()


def run_queue(
    queue: Queue,
    client: Client,
    *,
    options: RunOptions | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Run every pending pair of ``queue`` on ``client`` until none is left (or ``stop`` is set).

    Takes the queue's lock for the whole run (a second driver gets
    :class:`~drmime_batch.errors.QueueLockedError`), first returns pairs left ``running`` by a
    dead driver to ``pending``, then keeps at most ``options.max_in_flight`` registrations in
    flight. Mutates the queue; writes outputs through the workers.

    Parameters
    ----------
    queue : Queue
    client : distributed.Client
    options : RunOptions, optional
    on_event : callable, optional
        Called on the driver thread with each :class:`RunEvent`.
    stop : threading.Event, optional
        Set it (e.g. from a SIGINT handler) to stop: in-flight pairs are cancelled and go back to
        ``pending``; finished ones are recorded.

    Returns
    -------
    RunSummary

    Examples
    --------
    >>> from drmime_batch.engine import open_client, run_queue  # doctest: +SKIP
    >>> with open_client(workers=2) as client, Queue.open("q.sqlite") as q:  # doctest: +SKIP
    ...     run_queue(q, client).ok
    True
    """
    options = options or RunOptions()
    stop = stop or threading.Event()
    emit = on_event or (lambda event: None)
    with queue.lock():
        return _Driver(queue, client, options, emit, stop).run()
