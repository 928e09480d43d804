"""Series commands: ``submit-series``, ``compose-series``, ``series-status``.

A series runs with the ordinary ``run`` (its links are pairs of the queue); ``run`` composes every
series whose links are finished when it ends (:func:`compose_after_run`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from drmime_batch.cli._options import add_registration_arguments, registration_options

__all__ = ["add_commands", "compose_after_run"]


def _print(line: str) -> None:
    from drmime_batch.cli._console import make_console

    make_console().print(line, markup=False, highlight=False)


def _cmd_submit_series(args: argparse.Namespace) -> int:
    from drmime_batch.queue import Queue
    from drmime_batch.series import plan_series, read_slides, submit_series

    slides = read_slides(args.slides)
    plan = plan_series(args.series_id, slides, reference=args.reference, skip=args.skip, source=str(args.slides))
    options = registration_options(args)
    with Queue.open(args.queue, create=True) as queue:
        added = submit_series(queue, plan, out=args.out, options=options)
    if options.get("deformable"):
        print(f"drmime-batch submit-series: note: series {plan.series_id!r} is deformable: each link's displacement "
              "field stays with its pair, the series composes the links' matrices only (composing fields along a "
              "series is not done yet)", file=sys.stderr)
    if not args.quiet:
        _print(f"queued series {plan.series_id!r}: {len(plan.slides)} slides, reference {plan.reference}, "
               f"{len(added)} link(s) in {args.queue}")
    return 0


def _print_tables(queue: Any, ids: list[str]) -> None:
    """The per-slide table of each series of ``ids`` (:func:`drmime_batch.series.series_rows`)."""
    from drmime_batch.cli._console import make_console, series_table
    from drmime_batch.series import series_rows

    console = make_console()
    for record in series_rows(queue):
        if record["series_id"] in ids:
            console.print(series_table(record))


def _cmd_compose_series(args: argparse.Namespace) -> int:
    from drmime_batch.queue import Queue
    from drmime_batch.queue._series_table import series_ids
    from drmime_batch.series import compose_series

    with Queue.open(args.queue) as queue:
        ids = [args.series_id] if args.series_id else series_ids(queue)
        summaries = [compose_series(queue, sid, warp=not args.no_warp) for sid in ids]
        if args.json:
            print(json.dumps([{k: v for k, v in s.items() if k != "fingerprint"} for s in summaries], indent=2))
        else:
            _print_tables(queue, ids)
    return 0 if all(s["state"] == "composed" for s in summaries) else 1


def _cmd_series_status(args: argparse.Namespace) -> int:
    from drmime_batch.queue import Queue
    from drmime_batch.queue._series_table import series_ids
    from drmime_batch.series import series_rows, series_status

    with Queue.open(args.queue) as queue:
        ids = [args.series_id] if args.series_id else series_ids(queue)
        records = [series_status(queue, sid) for sid in ids]
        if args.json:  # the links and the last composition, and the per-slide rows of status/report
            rows = {r["series_id"]: r["slides"] for r in series_rows(queue)}
            print(json.dumps([{**rec, "slide_rows": rows[rec["series_id"]]} for rec in records], indent=2))
            return 0
        if not records:
            _print(f"no series in {args.queue}")
        _print_tables(queue, ids)
    return 0


def compose_after_run(queue: Any, *, warp: bool, log: Callable[[str], None]) -> None:
    """Compose the series of ``queue`` that the run finished (nothing when it holds none).

    A failed composition is one logged line, not a failed run: ``compose-series`` retries it.
    """
    from drmime_batch.errors import DrmimeError
    from drmime_batch.series import compose_finished

    try:
        for s in compose_finished(queue, warp=warp):
            log(f"series {s['series_id']}: {s['state']}" + (f" (missing {', '.join(s['missing'])})"
                                                              if s.get("missing") else ""))
    except DrmimeError as exc:
        log(f"series composition failed: {' '.join(str(exc).split())}")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the series commands on the ``drmime-batch`` parser."""
    p = subparsers.add_parser(
        "submit-series", help="queue a series of serial sections (one reference frame)",
        description="Queue SLIDES (CSV: slide_id,path in section order, optional landmarks and mask columns) as "
                    "one series: each slide is registered onto its neighbour towards the reference and onto "
                    "slides further towards it (skip links), all pairs in parallel. 'run' runs them and then "
                    "writes every slide's transform into the reference frame at OUT/SERIES_ID/<slide_id>.")
    p.add_argument("slides", metavar="SLIDES.csv")
    p.add_argument("--series-id", required=True, help="name of the series (its group in OUT, the prefix of its pairs)")
    p.add_argument("--reference", metavar="SLIDE_ID", help="slide whose frame all are brought into (default: the middle one)")
    p.add_argument("--skip", type=int, default=2, metavar="N",
                   help="longest link in sections (default 2: neighbours and every second section; 1: a chain)")
    p.add_argument("--queue", required=True, metavar="QUEUE", help="queue file (SQLite); made if missing")
    p.add_argument("--out", required=True, metavar="OUT.zarr", help="output store")
    add_registration_arguments(p.add_argument_group("registration options (stored per pair)"))
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_submit_series)

    p = subparsers.add_parser("compose-series", help="write the series' transforms into the reference frame")
    p.add_argument("--queue", required=True, metavar="QUEUE")
    p.add_argument("--series-id", help="default: every series of the queue")
    p.add_argument("--no-warp", action="store_true", help="transforms only, no OUT/SERIES_ID/stack")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_compose_series)

    p = subparsers.add_parser("series-status", help="show the series of a queue, per slide")
    p.add_argument("--queue", required=True, metavar="QUEUE")
    p.add_argument("--series-id", help="default: every series of the queue")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_series_status)
