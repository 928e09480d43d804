"""``status --json`` shows each done pair's quality; ``retry --flagged`` queues flagged pairs again."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from drmime_batch.cli._cmd_batch import FLAGGED_STRATEGY, _cmd_retry, _cmd_status
from drmime_batch.queue import Queue
from drmime_batch.queue._manifest import ManifestEntry


def _queue(tmp_path: Path) -> Path:
    path = tmp_path / "q.sqlite"
    entries = [ManifestEntry(pair_id=p, fixed=f"{p}-f.png", moving=f"{p}-m.png") for p in ("good", "bad")]
    with Queue.open(path, create=True) as q:
        q.add(entries, out=tmp_path / "out.zarr", options={"seed": 4})
        for pid, flagged in (("good", False), ("bad", True)):
            assert q.claim(pid)
            qc = {"score": 0.1 if flagged else 0.9, "flagged": flagged,
                  "reasons": ["another orientation is as similar"] if flagged else [], "features": {}}
            q.finish(pid, matrix=np.eye(3).tolist(), result={"ok": True, "qc": qc}, seconds=1.0)
    return path


def test_status_json_has_qc_and_retry_flagged_moves_only_flagged(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = _queue(tmp_path)
    assert _cmd_status(argparse.Namespace(queue=str(path), json=True)) == 0
    rows = {r["pair_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["bad"]["qc"] == {"score": 0.1, "flagged": True, "reasons": ["another orientation is as similar"]}
    assert rows["good"]["qc"]["flagged"] is False
    assert _cmd_retry(argparse.Namespace(queue=str(path), flagged=True, pair_ids=[])) == 0
    assert "1 flagged pair(s)" in capsys.readouterr().out
    with Queue.open(path) as q:
        bad, good = q.get("bad"), q.get("good")
    assert bad.state == "pending" and good.state == "done"
    assert bad.options == {"seed": 5, **FLAGGED_STRATEGY}
    assert good.options == {"seed": 4}
