"""The rich console of the batch commands: a live view while ``run`` works, tables afterwards.

Rich objects are built here only. On a terminal, ``run`` shows one :class:`rich.live.Live` holding
an overall progress bar (rate, ETA) and a table of running pairs (worker, device, elapsed, current
MI), with log lines printed above. Off a terminal (pipes, CI) or with ``--quiet``, it prints plain
lines and never draws a live display.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from drmime_batch.engine import RunEvent
from drmime_batch.queue import PairRow

__all__ = ["BatchView", "make_console", "pair_figures", "series_table", "summary_table"]

_STATE_STYLE = {"done": "green", "failed": "red", "running": "cyan", "pending": "yellow", "cancelled": "dim"}


def make_console(*, stderr: bool = False, file: TextIO | None = None) -> Console:
    """A rich console; plain text (no colour codes, no cursor moves) when not on a terminal."""
    console = Console(file=file or (sys.stderr if stderr else sys.stdout), highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # logs and CI: room for the summary table, no folding at 80 columns
    return console


def pair_figures(row: PairRow) -> dict[str, Any]:
    """Flat figures of a pair for tables and JSON: MI, landmark rTRE before/after, QC picture."""
    from drmime_batch.outcome import PairOutcome

    return PairOutcome.from_row(row).summary()


def _qc_cell(row: PairRow) -> Text:
    """The quality score of a done pair, red and marked when flagged."""
    from drmime_batch.outcome import PairOutcome

    qc = PairOutcome.from_row(row).qc if row.state == "done" else None
    if not qc:
        return Text("-")
    text = f"{float(qc.get('score', 0.0)):.2f}" + (" ⚑" if qc.get("flagged") else "")
    return Text(text, style="red" if qc.get("flagged") else "green")


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return str(value)


def summary_table(rows: Iterable[PairRow], *, title: str | None = "Batch summary") -> Table:
    """A table of pairs: state, attempts, seconds, MI, quality, landmark rTRE before → after, error.

    Flagged pairs come first, their quality score in red and the first reason in the last column.
    """
    from drmime_batch.outcome import PairOutcome

    rows = sorted(rows, key=lambda r: not PairOutcome.from_row(r).flagged)  # stable: queue order otherwise
    with_landmarks = any(pair_figures(r)["identity_rtre_median"] is not None or r.fixed_landmarks for r in rows)
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("pair")
    table.add_column("state")
    table.add_column("att.", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("MI", justify="right")
    table.add_column("QC", justify="right")
    if with_landmarks:
        table.add_column("rTRE median before → after", justify="right")
    table.add_column("worker / error", overflow="fold")
    for row in rows:
        fig = pair_figures(row)
        cells: list[str | Text] = [
            row.pair_id,
            Text(row.state, style=_STATE_STYLE.get(row.state, "")),
            str(row.attempts),
            _fmt(row.seconds, ".1f"),
            _fmt(fig["final_mi"], ".3f"),
            _qc_cell(row),
        ]
        if with_landmarks:
            before, after = fig["identity_rtre_median"], fig["rtre_median"]
            cells.append("-" if after is None else f"{_fmt(before, '.4f')} → {_fmt(after, '.4f')}")
        reasons = (PairOutcome.from_row(row).qc or {}).get("reasons") or []
        if row.error:
            cells.append(Text(row.error, style="red"))
        elif row.state == "done" and reasons:
            cells.append(Text(f"flagged: {reasons[0]}", style="yellow"))
        else:
            cells.append(Text(str(row.worker or ""), style="dim"))
        table.add_row(*cells)
    return table


_SLIDE_STYLE = {"reference": "bold", "composed": "green", "missing": "red", "waiting": "yellow"}


def series_table(record: dict[str, Any]) -> Group:
    """A series' heading line and its slides, one a row: state, links finished / planned, rTRE into the
    reference frame.

    ``record`` is one item of :func:`drmime_batch.series.series_rows`; the floor columns appear
    when its rows carry the affine floor (``evaluate``).
    """
    links = ", ".join(f"{k} {v}" for k, v in sorted(record["links"].items()))
    title = (f"series {record['series_id']}: {len(record['slides'])} slides, reference {record['reference']}, "
             f"{record['state']}"
             + (f" (last composition: {record['composition']})"
                if record["composition"] and record["composition"] != record["state"] else "")
             + f"; links {links}"
             + (f"; median rTRE {_fmt(record['rtre_median'], '.4f')}" if record["rtre_median"] is not None else "")
             + (f"; {len(record['fields_not_composed'])} deformable link(s): matrices composed, fields not (yet)"
                if record.get("fields_not_composed") else ""))
    slides = record["slides"]
    with_landmarks = any(r["identity_rtre_median"] is not None for r in slides)
    with_floor = any(r.get("floor_rtre_median") is not None for r in slides)
    table = Table()
    table.add_column("slide")
    table.add_column("state")
    table.add_column("links", justify="right")
    if with_landmarks:
        table.add_column("rTRE median before → after", justify="right")
        table.add_column("chained", justify="right")
    if with_floor:
        table.add_column("floor", justify="right")
        table.add_column("÷ floor", justify="right")
    table.add_column("why / chain", overflow="fold")
    for r in slides:
        cells: list[str | Text] = [r["slide_id"], Text(r["state"], style=_SLIDE_STYLE.get(r["state"], "")),
                                   f"{r['links_done']}/{r['links_total']}"]
        if with_landmarks:
            after = r["rtre_median"]
            cells.append("-" if after is None else f"{_fmt(r['identity_rtre_median'], '.4f')} → {_fmt(after, '.4f')}")
            cells.append(_fmt(r["chain_rtre_median"], ".4f"))
        if with_floor:
            cells += [_fmt(r.get("floor_rtre_median"), ".4f"), _fmt(r.get("floor_ratio"), ".2f")]
        note = r.get("error") or r.get("landmark_error")
        cells.append(Text(note, style="red") if note else Text(" → ".join(r["chain"]), style="dim"))
        table.add_row(*cells)
    return Group(Text(title, style="bold"), table)


class _RateColumn(ProgressColumn):
    """Pairs per hour of the overall task."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- pairs/h" if not speed else f"{speed * 3600:.0f} pairs/h", style="progress.data.speed")


@dataclass
class _Running:
    worker: str = ""
    device: str = ""
    since: float = 0.0
    iteration: int | None = None
    value: float | None = None
    stage: str = "queued"


class BatchView:
    """Renders :class:`~drmime_batch.engine.RunEvent` objects: live on a terminal, plain lines otherwise.

    Use as a context manager and pass the instance as the driver's ``on_event``.

    Parameters
    ----------
    console : rich.console.Console
    live : bool or None
        Force the live view on/off; default: on when the console is a terminal.
    quiet : bool
        Print nothing but failures (for scripts).
    """

    def __init__(self, console: Console, *, live: bool | None = None, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet
        self.live_mode = (console.is_terminal and not console.is_dumb_terminal) if live is None else live
        self.live_mode = self.live_mode and not quiet
        self.running: dict[str, _Running] = {}
        self.total = 0
        self.finished = 0
        self._progress: Progress | None = None
        self._task_id: Any = None
        self._live: Live | None = None

    # ------------------------------------------------------------ context
    def __enter__(self) -> BatchView:
        if self.live_mode:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._task_id = self._progress.add_task("pairs", total=None)
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self.running.clear()
            self._live.update(self._render(), refresh=True)
            self._live.__exit__(None, None, None)
            self._live = None

    # ------------------------------------------------------------ rendering
    def _render(self) -> Group:
        parts: list[Any] = []
        if self._progress is not None:
            parts.append(self._progress)
        if self.running:
            table = Table(box=None, padding=(0, 1), show_header=True, header_style="dim")
            for name, justify in (("pair", "left"), ("stage", "left"), ("worker", "left"), ("device", "left"),
                                  ("elapsed", "right"), ("iter", "right"), ("MI", "right")):
                table.add_column(name, justify=justify)  # type: ignore[arg-type]
            now = time.monotonic()
            for pair_id, r in self.running.items():
                table.add_row(
                    pair_id,
                    r.stage,
                    r.worker or "-",
                    r.device or "-",
                    f"{now - r.since:.0f} s" if r.since else "-",
                    "-" if r.iteration is None else str(r.iteration),
                    _fmt(r.value, ".3f"),
                )
            parts.append(table)
        return Group(*parts)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def log(self, message: str, *, style: str = "") -> None:
        """A line above the bars (live) or a plain line."""
        if self.quiet and style != "red":
            return
        if self._live is not None:
            self._live.console.print(Text(message, style=style))
        else:
            self.console.print(Text(message, style=style) if self.console.is_terminal else message,
                               markup=False, highlight=False, soft_wrap=True)

    # ------------------------------------------------------------ events
    def __call__(self, event: RunEvent) -> None:
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)
        self._refresh()

    def _on_begin(self, event: RunEvent) -> None:
        counts = event.counts
        self.total = sum(v for k, v in counts.items() if k != "cancelled")
        self.finished = counts.get("done", 0) + counts.get("failed", 0)
        todo = counts.get("pending", 0) + counts.get("running", 0)
        if self._progress is not None:
            self._progress.update(self._task_id, total=self.total, completed=self.finished)
        self.log(f"{todo} pair(s) to run, {counts.get('done', 0)} already done, "
                 f"{counts.get('failed', 0)} failed earlier")

    def _on_submitted(self, event: RunEvent) -> None:
        self.running[event.pair_id or ""] = _Running(stage="queued", device=str((event.row.options if event.row else {}).get("device", "")))

    def _on_started(self, event: RunEvent) -> None:
        r = self.running.setdefault(event.pair_id or "", _Running())
        r.worker, r.since, r.stage = event.worker or "", time.monotonic(), "registering"
        if not self.live_mode:
            self.log(f"start    {event.pair_id} on {event.worker}")

    def _on_progress(self, event: RunEvent) -> None:
        r = self.running.get(event.pair_id or "")
        if r is not None:
            r.iteration, r.value = event.iteration, event.value

    def _on_warping(self, event: RunEvent) -> None:
        r = self.running.get(event.pair_id or "")
        if r is not None:
            r.stage = "warping"
            if event.row is not None:
                r.device = event.row.device or r.device
        if not self.live_mode:
            self.log(f"warp     {event.pair_id}")

    def _advance(self, pair_id: str | None) -> None:
        self.running.pop(pair_id or "", None)
        self.finished += 1
        if self._progress is not None:
            self._progress.update(self._task_id, completed=self.finished)

    def _on_done(self, event: RunEvent) -> None:
        self._advance(event.pair_id)
        row = event.row
        if row is None:
            return
        fig = pair_figures(row)
        extra = ""
        if fig["rtre_median"] is not None:
            extra = f"  rTRE {_fmt(fig['identity_rtre_median'], '.4f')} → {_fmt(fig['rtre_median'], '.4f')}"
        self.log(f"done     {row.pair_id} [{self.finished}/{self.total}] {_fmt(row.seconds, '.1f')} s  "
                 f"MI {_fmt(fig['final_mi'], '.3f')}{extra}  ({row.worker}, {row.device})", style="green")

    def _on_failed(self, event: RunEvent) -> None:
        self._advance(event.pair_id)
        self.log(f"failed   {event.pair_id} [{self.finished}/{self.total}]: {event.message}", style="red")

    def _on_requeued(self, event: RunEvent) -> None:
        self.running.pop(event.pair_id or "", None)
        self.log(f"requeued {event.pair_id}: {event.message}", style="yellow")

    def _on_log(self, event: RunEvent) -> None:
        self.log(event.message or "", style="dim")

    def _on_end(self, event: RunEvent) -> None:
        c = event.counts
        self.log("finished: " + ", ".join(f"{k} {v}" for k, v in c.items() if v))
