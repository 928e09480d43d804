"""``drmime-batch evaluate``: landmark errors of a finished queue, per pair and summarised."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_commands"]

#: Columns of ``--csv`` (and the order of the per-pair JSON keys that matter most).
CSV_COLUMNS = (
    "pair_id", "state", "seconds", "n_points", "rtre_median", "rtre_mean", "rtre_max", "naed",
    "robustness", "identity_rtre_median", "floor_rtre_median", "floor_ratio", "tre_median_px",
    "tre_mean_px", "tre_max_px", "tre_median_um", "tre_mean_um", "diagonal_px", "landmark_error", "error",
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``evaluate``."""
    p = subparsers.add_parser(
        "evaluate",
        help="landmark errors (TRE, rTRE, NAED, robustness) of the done pairs of a queue",
        description=(
            "Score each done pair whose manifest gave landmarks (ANHIR ',X,Y' CSVs): rTRE = TRE / "
            "fixed-image diagonal, NAED, robustness against the identity, and the best affine fit "
            "of the landmarks as a floor. Prints a table per pair and a summary (median, mean, 90th "
            "percentile). A series (submit-series) gets a table of its slides: each slide's errors "
            "into the reference frame, measured from its stored transform, beside the identity's, "
            "plain chaining's and the affine floor of its landmarks onto the reference's."
        ),
    )
    p.add_argument("--queue", required=True, type=Path, help="the queue file (from 'submit')")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="FILE",
        help="write {'pairs': [...], 'summary': {...}} as JSON to FILE (stdout when no FILE) instead of the table",
    )
    group.add_argument("--csv", type=Path, default=None, metavar="FILE",
                       help="also write one CSV row per pair to FILE")
    p.add_argument("--no-floor", action="store_true", help="skip the best-affine-fit floor")
    p.set_defaults(func=run_evaluate)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _print_tables(records: Sequence[dict[str, Any]], summary: dict[str, dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    has_um = any(r.get("tre_median_um") is not None for r in records)
    table = Table(title=title)
    for name in ("pair", "state", "n", "rTRE med", "rTRE mean", "rTRE max", "NAED", "robust.",
                 "identity", "floor", "÷ floor", "TRE px", *(["TRE µm"] if has_um else []), "s"):
        table.add_column(name, justify="left" if name in ("pair", "state") else "right", no_wrap=name == "pair")
    for r in records:
        state = r["state"]
        style = {"done": "green", "failed": "red", "running": "yellow"}.get(state, "")
        if r.get("landmark_error"):
            note = f"[red]{r['landmark_error']}[/red]"
            table.add_row(r["pair_id"], f"[{style}]{state}[/{style}]" if style else state, note)
            continue
        cells = [
            r["pair_id"], f"[{style}]{state}[/{style}]" if style else state, _fmt(r.get("n_points")),
            _fmt(r.get("rtre_median")), _fmt(r.get("rtre_mean")), _fmt(r.get("rtre_max")), _fmt(r.get("naed")),
            _fmt(r.get("robustness"), 2), _fmt(r.get("identity_rtre_median")), _fmt(r.get("floor_rtre_median")),
            _fmt(r.get("floor_ratio"), 2), _fmt(r.get("tre_median_px"), 1),
        ]
        if has_um:
            cells.append(_fmt(r.get("tre_median_um"), 1))
        cells.append(_fmt(r.get("seconds"), 1))
        table.add_row(*cells)
    console.print(table)
    if not summary:
        console.print("no pair has both landmarks and a finished registration: nothing to summarise")
        return
    stats = Table(title="summary over pairs")
    for name in ("figure", "n", "median", "mean", "90th pct"):
        stats.add_column(name, justify="left" if name == "figure" else "right")
    for key, s in summary.items():
        digits = 1 if key in ("seconds", "tre_median_px", "tre_median_um") else 4
        stats.add_row(key, str(s["n"]), _fmt(s["median"], digits), _fmt(s["mean"], digits), _fmt(s["p90"], digits))
    console.print(stats)


def _print_series(series: Sequence[dict[str, Any]]) -> None:
    """Per series, its slides' errors into the reference frame, measured from the stored transforms."""
    from drmime_batch.cli._console import make_console, series_table

    console = make_console()
    for record in series:
        console.print(series_table(record))


def _write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    tmp.replace(path)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``; 0 when every pair with landmarks could be scored, 1 otherwise."""
    from drmime_batch.evaluation import evaluate_rows, summarise_rows
    from drmime_batch.queue import Queue
    from drmime_batch.series import series_rows

    with Queue.open(args.queue) as queue:
        rows = queue.rows()
        series = series_rows(queue, rescore=True, floor=not args.no_floor)
    records = evaluate_rows(rows, floor=not args.no_floor)
    summary = summarise_rows(records)
    if args.json is not None:
        text = json.dumps({"queue": str(args.queue), "pairs": records, "summary": summary, "series": series},
                          indent=2)
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            target = Path(args.json)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text + "\n", encoding="utf-8")
    else:
        _print_tables(records, summary, title=f"landmark errors: {args.queue}")
        _print_series(series)
        if args.csv is not None:
            _write_csv(args.csv, records)
    failures = [r for r in records if r.get("landmark_error")]
    for r in failures:
        print(f"drmime-batch evaluate: pair {r['pair_id']}: {r['landmark_error']}", file=sys.stderr)
    unscored = [(s["series_id"], r) for s in series for r in s["slides"] if r.get("landmark_error")]
    for series_id, r in unscored:
        print(f"drmime-batch evaluate: series {series_id}, slide {r['slide_id']}: {r['landmark_error']}",
              file=sys.stderr)
    return 1 if failures or unscored else 0
