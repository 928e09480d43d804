"""The console renders driver events: a live view on a terminal, plain lines otherwise."""

from __future__ import annotations

import io

from rich.console import Console

from drmime_batch.cli._console import BatchView, summary_table
from drmime_batch.engine import RunEvent
from drmime_batch.queue import PairRow


def _row(pair_id: str, state: str, **kw) -> PairRow:
    return PairRow(pair_id=pair_id, fixed="/f.png", moving="/m.png", fixed_landmarks="/f.csv",
                   moving_landmarks="/m.csv", out="/o.zarr", state=state, **kw)


DONE = _row("a", "done", attempts=1, seconds=12.5, worker="tcp://w1", device="cpu",
            matrix=[[1, 0, 2], [0, 1, 3], [0, 0, 1]],
            result={"final_mi": 0.42, "landmarks": {"rtre_median": 0.0123, "identity_rtre_median": 0.0456}})
FAILED = _row("b", "failed", attempts=1, error="moving image /m.png: CorruptImageError: truncated")

EVENTS = [
    RunEvent("begin", counts={"pending": 2, "running": 0, "done": 0, "failed": 0, "cancelled": 1}),
    RunEvent("submitted", pair_id="a", row=_row("a", "running")),
    RunEvent("started", pair_id="a", worker="tcp://w1"),
    RunEvent("progress", pair_id="a", worker="tcp://w1", iteration=30, value=0.377),
    RunEvent("warping", pair_id="a", row=DONE),
    RunEvent("done", pair_id="a", row=DONE),
    RunEvent("failed", pair_id="b", row=FAILED, message=FAILED.error),
    RunEvent("end", counts={"pending": 0, "running": 0, "done": 1, "failed": 1, "cancelled": 1}),
]


def test_plain_lines_when_not_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, width=200)
    with BatchView(console) as view:
        assert not view.live_mode
        for event in EVENTS:
            view(event)
    text = buf.getvalue()
    assert "\x1b[" not in text
    assert "2 pair(s) to run, 0 already done" in text
    assert "done     a [1/2] 12.5 s  MI 0.420  rTRE 0.0456 → 0.0123" in text
    assert "failed   b [2/2]: moving image /m.png: CorruptImageError: truncated" in text
    assert "finished: done 1, failed 1, cancelled 1" in text


def test_quiet_prints_failures_only():
    buf = io.StringIO()
    with BatchView(Console(file=buf, width=200), quiet=True) as view:
        for event in EVENTS:
            view(event)
    assert buf.getvalue().strip().splitlines() == ["failed   b [2/2]: moving image /m.png: CorruptImageError: truncated"]


def test_live_view_on_a_terminal_shows_running_pairs_and_mi():
    buf = io.StringIO()
    console = Console(file=buf, width=160, force_terminal=True, color_system=None)
    with BatchView(console) as view:
        assert view.live_mode
        for event in EVENTS[:4]:
            view(event)
        view._live.refresh()
        live_text = buf.getvalue()
        for event in EVENTS[4:]:
            view(event)
    assert "pairs" in live_text and "tcp://w1" in live_text and "0.377" in live_text and "registering" in live_text
    assert "pairs/h" in live_text
    assert "done     a" in buf.getvalue()


def test_summary_table_landmarks_before_after():
    buf = io.StringIO()
    Console(file=buf, width=200).print(summary_table([DONE, FAILED]))
    text = buf.getvalue()
    assert "rTRE median before → after" in text and "0.0456 → 0.0123" in text
    assert "CorruptImageError" in text and "0.420" in text
