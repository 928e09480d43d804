"""Driver cost per finished pair against the size of the queue: the previous pending scan and the index read.

Usage::

    python benchmarks/queue_scaling.py [--sizes 1000,5000,10000,50000] [--pairs 300] [--old-pairs 30]
                                       [--in-flight 8] [--journal auto|wal|delete] [--json [OUT]]

What is measured
    For each size N a real queue file of N pending pairs is built (one ``Queue.add`` of N entries,
    one transaction) in a temporary folder. Then the real driver loop (``_Driver.run`` of
    :mod:`drmime_batch.engine._driver`, the code of ``drmime-batch run``) drives it with a minimal
    in-process stand-in for the Dask client: ``submit`` returns a future that is already finished
    with a valid result (identity matrix), and the stand-in for ``distributed.as_completed`` hands
    back one finished future per loop turn, as in a real run where every pair takes minutes and
    they finish one by one. ``pair_is_complete`` is replaced by ``True`` (no outputs are written)
    and ``--no-warp`` is used, so the time is the driver's own work per pair: refill, claim, the
    row reads, the finish transition and the events. The figure is the median of the milliseconds
    between two consecutive ``done`` events (the median, so that another job taking the core for
    a moment does not count; the start of the run, with its one-off ``recover`` and ``counts``, is
    outside it). An untimed run of both
    drivers on a 100-pair queue comes first (imports, caches).

    ``new`` is the driver as it is; ``old`` is the same driver with the refill and emptiness test
    of the previous release (``Queue.rows(states=["pending"])`` on every loop turn), run on a copy
    of the same queue file, side by side. ``old`` measures fewer pairs (``--old-pairs``) because
    each of its turns reads the whole queue.

Printed: per size, ms per finished pair for both and, at the end, the ratio of the largest size to
the smallest (1.0 = independent of the queue size). ``--json`` writes every figure, the command and
the machine to OUT (default ``benchmarks/results/queue-scaling-cpu.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import distributed  # noqa: E402 - after the path line: the benchmark runs from a checkout

import drmime_batch.io  # noqa: E402
from drmime_batch.engine import _driver  # noqa: E402
from drmime_batch.engine._driver import RunEvent, RunOptions, _Driver  # noqa: E402
from drmime_batch.queue import ManifestEntry, Queue  # noqa: E402

DEFAULT_JSON = REPO / "benchmarks" / "results" / "queue-scaling-cpu.json"
_RESULT = {"ok": True, "matrix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "seconds": 0.0,
           "worker": "stand-in", "device": "cpu", "final_mi": 0.5}


# ------------------------------------------------------------------------------------------ stand-ins
class _Future:
    """A future that finished at once with a valid registration result."""

    status = "finished"

    def __init__(self, key: str) -> None:
        self.key = key

    def result(self) -> dict[str, Any]:
        return dict(_RESULT)

    def exception(self) -> None:
        return None

    def release(self) -> None:
        pass


class _Client:
    """The parts of ``distributed.Client`` the driver calls."""

    def submit(self, fn: Any, task: Any, *, key: str, pure: bool, resources: Any) -> _Future:
        return _Future(key)

    def nthreads(self) -> dict[str, int]:
        return {"stand-in": 8}

    def subscribe_topic(self, topic: str, handler: Any) -> None:
        pass

    def unsubscribe_topic(self, topic: str) -> None:
        pass

    def cancel(self, futures: Any, force: bool = False) -> None:
        pass

    def scheduler_info(self, **kwargs: Any) -> dict[str, Any]:
        return {"workers": {}}


class _OneAtATime:
    """``as_completed`` whose futures finish one per loop turn, oldest first."""

    def __init__(self) -> None:
        self.futures: list[_Future] = []

    def add(self, future: _Future) -> None:
        self.futures.append(future)

    def has_ready(self) -> bool:
        return bool(self.futures)

    def next_batch(self, block: bool = False) -> list[_Future]:
        return [self.futures.pop(0)] if self.futures else []

    def clear(self) -> None:
        self.futures.clear()


class _OldDriver(_Driver):
    """The refill and emptiness test of the previous release: every pending row, every turn."""

    def _refill(self) -> None:
        room = self._capacity() - len(self.inflight) - len(self.warps)
        if room <= 0 or self.stop.is_set():
            return
        busy = {pid for pid, _ in self.inflight.values()} | {pid for pid, _, _ in self.warps.values()}
        for row in self.q.rows(states=["pending"]):
            if room <= 0:
                break
            if row.pair_id in busy:
                continue
            self._submit(row)
            room -= 1

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
                if not self.q.rows(states=["pending"]):
                    break
                continue
            if not busy:
                self.stop.wait(self.opt.poll_s)


# ------------------------------------------------------------------------------------------ measuring
def build_queue(path: Path, size: int) -> float:
    """A queue of ``size`` pending pairs at ``path``; returns the seconds it took."""
    t0 = time.perf_counter()
    entries = [ManifestEntry(f"pair-{i:06d}", f"/slides/fixed-{i}.tif", f"/slides/moving-{i}.tif") for i in range(size)]
    with Queue.open(path, create=True) as q:
        q.add(entries, out=path.parent / "out.zarr", options={"max_iterations": 10})
    return time.perf_counter() - t0


def per_pair_ms(path: Path, driver_cls: type[_Driver], pairs: int, in_flight: int) -> float:
    """Run the driver on ``path`` until ``pairs`` pairs are done; median ms between two ``done`` events."""
    stamps: list[float] = []
    stop = threading.Event()

    def on_event(event: RunEvent) -> None:
        if event.kind == "done":
            stamps.append(time.perf_counter())
            if len(stamps) >= pairs:
                stop.set()

    with Queue.open(path) as q, q.lock():
        driver = driver_cls(q, _Client(), RunOptions(warp=False, max_in_flight=in_flight), on_event, stop)  # type: ignore[arg-type]
        driver.run()
    if len(stamps) < 2:
        raise RuntimeError(f"only {len(stamps)} pair(s) finished")
    # the median interval: a shared machine's hiccups (another job taking the core) do not count
    return 1000 * statistics.median(b - a for a, b in itertools.pairwise(stamps))


def machine() -> dict[str, Any]:
    """The machine, with SQLite's version (the store these figures measure)."""
    import sqlite3

    from drmime_batch.evaluation import machine_info

    return machine_info(versions=()) | {"sqlite": sqlite3.sqlite_version}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,5000,10000,50000", help="queue sizes, comma-separated")
    p.add_argument("--pairs", type=int, default=300, help="pairs finished per size, index read (default 300)")
    p.add_argument("--old-pairs", type=int, default=30, help="pairs finished per size, previous scan (default 30)")
    p.add_argument("--in-flight", type=int, default=8, help="pairs in flight at once (default 8)")
    p.add_argument("--journal", choices=("auto", "wal", "delete"), default="auto",
                   help="DRMIME_BATCH_QUEUE_JOURNAL for the run (default auto)")
    p.add_argument("--json", type=Path, nargs="?", const=DEFAULT_JSON, default=None, metavar="OUT",
                   help="write every figure as JSON (default OUT: benchmarks/results/queue-scaling-cpu.json)")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(s < max(args.pairs, args.old_pairs) + args.in_flight for s in sizes):
        p.error("every size must exceed --pairs/--old-pairs plus --in-flight")
    os.environ["DRMIME_BATCH_QUEUE_JOURNAL"] = args.journal
    drmime_batch.io.pair_is_complete = lambda *a, **k: True  # no outputs are written: see the docstring
    distributed.as_completed = _OneAtATime  # what _Driver builds its as_completed from
    command = "python benchmarks/queue_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    _driver.logger.disabled = True

    rows = []
    with tempfile.TemporaryDirectory(prefix="queue-scaling-") as tmp:  # untimed warm-up of both drivers
        for cls in (_Driver, _OldDriver):
            build_queue(Path(tmp) / f"warm-{cls.__name__}.sqlite", 100)
            per_pair_ms(Path(tmp) / f"warm-{cls.__name__}.sqlite", cls, 50, args.in_flight)
    print(f"{'pairs in queue':>15} {'build s':>8} {'new ms/pair':>12} {'old ms/pair':>12}")
    with tempfile.TemporaryDirectory(prefix="queue-scaling-") as tmp:
        for size in sizes:
            base = Path(tmp) / f"q{size}.sqlite"
            build_s = build_queue(base, size)
            with Queue.open(base) as q:
                journal = q.journal_mode
            figures = {}
            for name, cls, pairs in (("new", _Driver, args.pairs), ("old", _OldDriver, args.old_pairs)):
                copy = Path(tmp) / f"q{size}-{name}.sqlite"
                shutil.copyfile(base, copy)
                figures[name] = per_pair_ms(copy, cls, pairs, args.in_flight)
                copy.unlink()
            base.unlink()
            rows.append({"size": size, "build_s": round(build_s, 3), "journal": journal,
                         "new_ms_per_pair": round(figures["new"], 3), "old_ms_per_pair": round(figures["old"], 3),
                         "new_pairs": args.pairs, "old_pairs": args.old_pairs})
            print(f"{size:>15} {build_s:>8.2f} {figures['new']:>12.3f} {figures['old']:>12.3f}", flush=True)
    first, last = rows[0], rows[-1]
    ratios = {k: round(last[f"{k}_ms_per_pair"] / first[f"{k}_ms_per_pair"], 2) for k in ("new", "old")}
    print(f"ratio {last['size']}/{first['size']} pairs: new {ratios['new']:.2f}x, old {ratios['old']:.2f}x "
          f"(journal {rows[0]['journal']}, {args.in_flight} in flight)")
    print(f"command: {command}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command,
            "what": "driver-side milliseconds per finished pair (real _Driver loop, in-process stand-in client, "
                    "futures finishing one per turn, no outputs); old = previous pending scan",
            "in_flight": args.in_flight,
            "journal": args.journal,
            "sizes": rows,
            "ratio_largest_to_smallest": ratios,
            "machine": machine(),
        }, indent=2) + "\n", encoding="utf-8")
        out = args.json.resolve()
        print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
