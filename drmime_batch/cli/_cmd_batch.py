"""Queue commands: ``submit``, ``run``, ``status``, ``retry``, ``cancel``, ``report``, ``demo``.

They parse, call :mod:`drmime_batch.queue` / :mod:`drmime_batch.engine` and render with
:mod:`drmime_batch.cli._console`; no batch logic lives here.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from drmime_batch.cli._options import add_registration_arguments, registration_options

__all__ = ["add_commands"]

# ---------------------------------------------------------------------------------------- submit
def _cmd_submit(args: argparse.Namespace) -> int:
    from drmime_batch.cli._console import make_console
    from drmime_batch.queue import Queue, read_manifest

    entries = read_manifest(args.manifest)
    options = registration_options(args)
    with Queue.open(args.queue, create=True) as queue:
        added = queue.add(entries, out=args.out, options=options)
        counts = queue.counts()
    if not args.quiet:
        make_console().print(
            f"queued {len(added)} pair(s) in {args.queue} (queue: "
            + ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ")",
            markup=False, highlight=False,
        )
    return 0


# ---------------------------------------------------------------------------------------- run
class _Interrupt:
    """First Ctrl-C sets ``stop`` (clean stop); a second one raises ``KeyboardInterrupt``."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: Any = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
            signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_batch(args: argparse.Namespace, *, queue_path: Path) -> int:
    from drmime_batch.cli._console import BatchView, make_console, summary_table
    from drmime_batch.engine import RunOptions, open_client, run_queue
    from drmime_batch.queue import Queue

    quiet = bool(args.quiet or args.json)
    if getattr(args, "verbose", 0) < 2:  # the scheduler's INFO chatter would bury the console
        import distributed  # noqa: F401 - importing it sets its logger levels; override them after

        logging.getLogger("distributed").setLevel(logging.ERROR)
    console = make_console(stderr=bool(args.json))
    stop = threading.Event()
    options = RunOptions(
        device=args.device,
        warp=not args.no_warp,
        max_in_flight=args.max_in_flight,
        max_attempts=args.max_attempts,
    )
    with Queue.open(queue_path) as queue:
        lock = queue.lock()
        if lock.is_held_elsewhere():  # refuse before starting a cluster
            lock.acquire()
        counts = queue.counts()
        if counts["pending"] + counts["running"] == 0:  # nothing to do: no cluster to start
            rows = queue.rows()
            if not quiet:
                console.print("nothing to run: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v),
                              markup=False, highlight=False)
            if args.json:
                print(json.dumps(_status_list(queue, rows), indent=2))
            elif not args.quiet:
                console.print(summary_table(rows))
            return 0 if counts["failed"] == 0 else 1
        with _Interrupt(stop), BatchView(console, quiet=quiet) as view:
            if not quiet:
                view.log("starting the Dask cluster ...", style="dim")
            with open_client(
                scheduler=args.scheduler,
                scheduler_file=args.scheduler_file,
                cluster=args.cluster,
                workers=args.workers,
                threads_per_worker=args.threads_per_worker,
                cluster_config=args.cluster_config,
                min_jobs=args.min_jobs,
                max_jobs=args.max_jobs,
                resources={"GPU": 1} if args.device == "cuda" else None,
                # SLURM/PBS/LSF jobs' logs, unless the config says where: the watch quotes a dead job's
                log_directory=queue_path.resolve().parent / f"{queue_path.stem}-jobs",
            ) as client:
                if not quiet:
                    info = client.scheduler_info()
                    view.log(f"scheduler {info.get('address')} with {len(info.get('workers', {}))} worker(s)",
                             style="dim")
                summary = run_queue(queue, client, options=options, on_event=view, stop=stop)
                if not summary.interrupted:  # series whose links are all finished get their transforms
                    from drmime_batch.cli._cmd_series import compose_after_run

                    compose_after_run(queue, warp=options.warp, log=view.log)
        rows = queue.rows()
        listed = _status_list(queue, rows) if args.json else []
    if args.json:
        print(json.dumps(listed, indent=2))
    elif not args.quiet:
        console.print(summary_table(rows))
    if summary.interrupted:
        print("drmime-batch run: stopped; run again to resume", file=sys.stderr)
        return 130
    return 0 if summary.ok else 1


def _cmd_run(args: argparse.Namespace) -> int:
    return _run_batch(args, queue_path=Path(args.queue))


# ---------------------------------------------------------------------------------------- status
def _qc_brief(qc: Any) -> dict[str, Any]:
    """``{"score", "flagged", "reasons"}`` of a done pair; a row without a record reads unflagged, score None."""
    if not qc:
        return {"score": None, "flagged": False, "reasons": []}
    return {"score": float(qc.get("score", 0.0)), "flagged": bool(qc.get("flagged")),
            "reasons": [str(r) for r in qc.get("reasons") or []]}


def _status_dict(row: Any) -> dict[str, Any]:
    from drmime_batch.cli._console import pair_figures
    from drmime_batch.outcome import PairOutcome

    outcome = PairOutcome.from_row(row)
    return {
        "pair_id": row.pair_id,
        "state": row.state,
        "attempts": row.attempts,
        "error": row.error,
        "seconds": row.seconds,
        "matrix": row.matrix if row.state == "done" else None,
        "worker": row.worker,
        "device": row.device,
        "fixed": row.fixed,
        "moving": row.moving,
        "out": row.out,
        **pair_figures(row),
        "landmarks": outcome.landmarks,
        "qc": _qc_brief(outcome.qc) if row.state == "done" else None,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "failure": outcome.failure,
        "traceback": getattr(row, "traceback", None),
        "outcome": outcome.to_dict(),
    }


def _status_list(queue: Any, rows: list[Any]) -> list[dict[str, Any]]:
    """``status --json``: one object per pair, ``series`` its place in a series (None for a plain pair)."""
    from drmime_batch.series import series_links

    links = series_links(queue)
    return [{**_status_dict(r), "series": links.get(r.pair_id)} for r in rows]


def _print_series(console: Any, records: list[dict[str, Any]]) -> None:
    """One table per series (nothing when the queue holds none)."""
    from drmime_batch.cli._console import series_table

    for record in records:
        console.print(series_table(record))


def _cmd_status(args: argparse.Namespace) -> int:
    from drmime_batch.queue import Queue
    from drmime_batch.series import series_rows

    with Queue.open(args.queue) as queue:
        rows = queue.rows()
        counts = queue.counts()
        alive = queue.lock().is_held_elsewhere()
        if args.json:
            print(json.dumps(_status_list(queue, rows), indent=2))
            return 0
        series = series_rows(queue)
    from drmime_batch.cli._console import make_console, summary_table

    console = make_console()
    console.print(summary_table(rows, title=f"Queue {args.queue}"))
    console.print(
        ", ".join(f"{k} {v}" for k, v in counts.items() if v) + ("; a run is active" if alive else ""),
        markup=False, highlight=False,
    )
    _print_series(console, series)
    _print_tracebacks(rows, verbose=getattr(args, "verbose", 0))
    return 0


def _print_tracebacks(rows: list[Any], *, verbose: int) -> None:
    """Tracebacks of pairs that failed on a bug: printed with ``-v``, else one hint line."""
    with_tb = [r for r in rows if r.state == "failed" and getattr(r, "traceback", None)]
    if not with_tb:
        return
    if verbose:
        for row in with_tb:
            print(f"--- {row.pair_id}: {row.error}\n{row.traceback.rstrip()}", file=sys.stderr)
    else:
        print(f"{len(with_tb)} pair(s) failed on an unexpected error (a bug): add -v for the traceback(s), "
              "and please report them", file=sys.stderr)


# ---------------------------------------------------------------------------------------- retry / cancel
#: What ``retry --flagged`` changes for a flagged pair: a denser initialisation search (72 angles
#: instead of 36, every orientation tried) with another seed; recorded in the pair's options.
FLAGGED_STRATEGY: dict[str, Any] = {"init": "search", "init_angles": 72}


def _flagged_changes(rows: list[Any]) -> dict[str, dict[str, Any]]:
    """The option changes of every done, flagged pair (seed moved on by one from its last)."""
    from drmime_batch.outcome import PairOutcome

    changes = {}
    for row in rows:
        if row.state == "done" and PairOutcome.from_row(row).flagged:
            seed = int((row.options or {}).get("seed") or 0) + 1
            changes[row.pair_id] = FLAGGED_STRATEGY | {"seed": seed}
    return changes


def _cmd_retry(args: argparse.Namespace) -> int:
    from drmime_batch.queue import Queue

    if getattr(args, "flagged", False):
        with Queue.open(args.queue) as queue:
            moved = queue.rerun_with(_flagged_changes(queue.rows()))
        print(f"{len(moved)} flagged pair(s) back to pending with init_angles "
              f"{FLAGGED_STRATEGY['init_angles']} and the next seed" + (f": {', '.join(moved)}" if moved else ""))
        return 0
    with Queue.open(args.queue) as queue:
        moved = queue.retry(args.pair_ids or None)
    print(f"{len(moved)} pair(s) back to pending" + (f": {', '.join(moved)}" if moved else ""))
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from drmime_batch.queue import Queue

    with Queue.open(args.queue) as queue:
        moved = queue.cancel(args.pair_ids or None)
    print(f"{len(moved)} pair(s) cancelled" + (f": {', '.join(moved)}" if moved else ""))
    return 0


# ---------------------------------------------------------------------------------------- report
def _report_rows(rows: list[Any]) -> list[dict[str, Any]]:
    """The rows of :func:`~drmime_batch.evaluation.write_html_report`: the status dict, landmark figures
    flat, the landmark files and the similarity curve (``loss_history`` of the registration record)."""
    out = []
    for row in rows:
        d = _status_dict(row)
        lm = d.pop("landmarks") or {}
        d.update({k: v for k, v in lm.items() if k not in d or d[k] is None})
        registration = (d.get("outcome") or {}).get("registration") or {}
        d.update(fixed_landmarks=row.fixed_landmarks, moving_landmarks=row.moving_landmarks,
                 loss_history=registration.get("loss_history") or [],
                 iterations=d.get("iterations") or registration.get("iterations"),
                 metric=(d.get("outcome") or {}).get("metric") or registration.get("metric"))
        out.append(d)
    return out


def _cmd_report(args: argparse.Namespace) -> int:
    from drmime_batch.cli._console import make_console, summary_table
    from drmime_batch.queue import Queue
    from drmime_batch.series import series_rows

    with Queue.open(args.queue) as queue:
        rows = queue.rows()
        series = series_rows(queue)
    console = make_console()
    console.print(summary_table(rows, title=f"Report of {args.queue}"))
    done = [r for r in rows if r.state == "done"]
    from drmime_batch.outcome import PairOutcome

    landmarks = [PairOutcome.from_row(r).landmarks for r in done]
    lms = [lm for lm in landmarks if isinstance(lm, dict) and "rtre_median" in lm]
    if lms:
        from statistics import median

        console.print(
            f"landmarks over {len(lms)} pair(s): median rTRE {median(lm['identity_rtre_median'] for lm in lms):.4f} "
            f"before → {median(lm['rtre_median'] for lm in lms):.4f} after",
            markup=False, highlight=False,
        )
    _print_series(console, series)
    if args.html:
        from drmime_batch.evaluation import write_html_report

        path = write_html_report(_report_rows(rows), Path(args.html), title=f"drmime-batch report: {Path(args.queue).name}")
        console.print(f"HTML report: {path}", markup=False, highlight=False)
    return 0


# ---------------------------------------------------------------------------------------- demo
def _demo_manifest() -> Path:
    ref = resources.files("drmime_batch") / "examples" / "cima-lung-lesion3" / "demo.csv"
    return Path(str(ref))


def _cmd_demo(args: argparse.Namespace) -> int:
    from drmime_batch.queue import Queue, read_manifest

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    queue_path = out / "queue.sqlite"
    store = out / "demo.zarr"
    entries = read_manifest(_demo_manifest())
    options: dict[str, Any] = {}
    if args.max_iterations is not None:
        options["max_iterations"] = args.max_iterations
    with Queue.open(queue_path, create=True) as queue:
        known = {r.pair_id for r in queue.rows()}
        new = [e for e in entries if e.pair_id not in known]
        if new:
            queue.add(new, out=store, options=options)
        queue.retry()  # a demo re-run retries what failed before
    args.queue = str(queue_path)
    return _run_batch(args, queue_path=queue_path)


# ---------------------------------------------------------------------------------------- parsers
def _add_run_options(p: argparse.ArgumentParser) -> None:
    from drmime_batch.engine._client import CLUSTER_KINDS

    where = p.add_argument_group("where to run")
    where.add_argument("--scheduler", metavar="ADDRESS", help="attach to a running Dask scheduler (tcp://..., tls://...)")
    where.add_argument("--scheduler-file", metavar="FILE", help="attach to the scheduler of a scheduler file")
    where.add_argument("--cluster", choices=CLUSTER_KINDS, default="local",
                       help="cluster to start when no scheduler is given (default: local)")
    where.add_argument("--cluster-config", metavar="FILE", help="YAML of the HPC/Kubernetes cluster and TLS settings")
    where.add_argument("--min-jobs", type=int, default=0, help="adaptive minimum of HPC/Kubernetes jobs")
    where.add_argument("--max-jobs", type=int, default=4, help="adaptive maximum of HPC/Kubernetes jobs")
    where.add_argument("--workers", type=int, help="LocalCluster workers (default: one per core)")
    where.add_argument("--threads-per-worker", type=int, help="LocalCluster threads per worker (default 1)")
    how = p.add_argument_group("how to run")
    how.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                     help="override the submitted device; cuda routes pairs to workers with resources GPU=1")
    how.add_argument("--no-warp", action="store_true", help="write transforms only, not the registered images")
    how.add_argument("--max-attempts", type=int, default=3, help="attempts per pair when workers die (default 3)")
    how.add_argument("--max-in-flight", type=int, help="pairs in flight at once (default: the cluster's threads; 2x with --no-warp)")
    out = p.add_argument_group("output")
    out.add_argument("--quiet", action="store_true", help="no live view, no progress lines")
    out.add_argument("--json", action="store_true", help="print the final queue as JSON (like status --json)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the queue commands on the ``drmime-batch`` parser."""
    p = subparsers.add_parser("submit", help="queue the pairs of a manifest",
                              description="Queue the pairs of MANIFEST (CSV: pair_id,fixed,moving[,fixed_landmarks,"
                                          "moving_landmarks][,fixed_mask][,moving_mask] or the ANHIR cover table, "
                                          "which may also have fixed_mask/moving_mask columns). A mask is an image "
                                          "file, non-zero = tissue, at the image's resolution or a lower one of the "
                                          "same aspect ratio; an empty cell or a missing column means no mask "
                                          "(the mask=auto|none option applies).")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("--queue", required=True, metavar="QUEUE", help="queue file (SQLite); made if missing")
    p.add_argument("--out", required=True, metavar="OUT.zarr", help="output store of these pairs")
    reg = p.add_argument_group("registration options (stored per pair)")
    add_registration_arguments(reg)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_submit)

    p = subparsers.add_parser("run", help="run the pending pairs of a queue on Dask")
    p.add_argument("--queue", required=True, metavar="QUEUE")
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = subparsers.add_parser("status", help="show the pairs of a queue")
    p.add_argument("--queue", required=True, metavar="QUEUE")
    p.add_argument("--json", action="store_true", help="a JSON list, one object per pair")
    p.set_defaults(func=_cmd_status)

    p = subparsers.add_parser("retry", help="put failed (or, with --flagged, flagged) pairs back to pending")
    p.add_argument("--queue", required=True, metavar="QUEUE")
    p.add_argument("--flagged", action="store_true",
                   help="queue the done pairs the quality check flagged again, with a denser initialisation "
                        "search (init_angles 72) and the next seed (recorded in each pair's options)")
    p.add_argument("pair_ids", nargs="*", metavar="PAIR_ID", help="default: every failed pair")
    p.set_defaults(func=_cmd_retry)

    p = subparsers.add_parser("cancel", help="cancel pending pairs")
    p.add_argument("--queue", required=True, metavar="QUEUE")
    p.add_argument("pair_ids", nargs="*", metavar="PAIR_ID", help="default: every pending pair")
    p.set_defaults(func=_cmd_cancel)

    p = subparsers.add_parser("report", help="summary table of a queue, optionally an HTML report")
    p.add_argument("--queue", required=True, metavar="QUEUE")
    p.add_argument("--html", metavar="DIR", help="also write DIR/index.html with QC pictures")
    p.set_defaults(func=_cmd_report)

    p = subparsers.add_parser("demo", help="register the bundled lung-lesion example with the live console")
    p.add_argument("--out", default="drmime-demo", metavar="DIR", help="output folder (default ./drmime-demo)")
    p.add_argument("--max-iterations", type=int, help="iteration cap (default: the core's)")
    _add_run_options(p)
    p.set_defaults(func=_cmd_demo)
