"""Small real test pairs for the batch tests, made from the bundled lung-lesion H&E, and a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[2] / "drmime_batch" / "examples" / "cima-lung-lesion3"
HE = EXAMPLE / "images" / "29-041-Izd2-w35-He-les3.jpg"
#: fixed pixel p shows the same tissue as moving pixel p + SHIFT (x, y)
SHIFT = (7.0, -4.0)
#: fast registration options for tests
FAST = ["--transform", "translation", "--max-iterations", "40", "--option", "min_iterations=20",
        "--option", "init=moments", "--max-size", "200"]


def make_pairs(folder: Path, n_good: int = 2, *, bad: bool = False) -> Path:
    """Write ``n_good`` shifted crop pairs (PNG, ~160x180) and, with ``bad``, a missing file, a
    truncated TIFF and a constant image; return the manifest path."""
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    src = np.asarray(Image.open(HE).convert("RGB"))[::3, ::3]
    fixed = np.ascontiguousarray(src[10:170, 20:200])
    moving = np.ascontiguousarray(src[14:174, 13:193])  # moving = fixed shifted by SHIFT
    Image.fromarray(fixed).save(folder / "fixed.png")
    lines = ["pair_id,fixed,moving"]
    for i in range(n_good):
        Image.fromarray(moving).save(folder / f"moving{i}.png")
        lines.append(f"good{i},fixed.png,moving{i}.png")
    if bad:
        tifffile.imwrite(folder / "whole.tif", moving, photometric="rgb")
        data = (folder / "whole.tif").read_bytes()
        (folder / "truncated.tif").write_bytes(data[: len(data) // 3])
        Image.fromarray(np.full((160, 180, 3), 128, np.uint8)).save(folder / "constant.png")
        lines += ["missing,fixed.png,does-not-exist.png", "truncated,fixed.png,truncated.tif",
                  "constant,fixed.png,constant.png"]
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def cli(*args: Any, timeout: float = 240, check: int | None = 0, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m drmime_batch ARGS`` and return the finished process (checks the exit code)."""
    proc = subprocess.run([sys.executable, "-m", "drmime_batch", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def spawn(*args: Any) -> subprocess.Popen[str]:
    """Start ``python -m drmime_batch ARGS`` in its own process group (to kill it and its children)."""
    return subprocess.Popen([sys.executable, "-m", "drmime_batch", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def status(queue: Path) -> dict[str, dict[str, Any]]:
    """``status --json`` as a dict by pair id."""
    return {row["pair_id"]: row for row in json.loads(cli("status", "--queue", queue, "--json").stdout)}


def peek(queue: Path) -> dict[str, Any]:
    """The queue's rows by pair id, read in-process (cheap enough to poll)."""
    from drmime_batch.queue import Queue

    with Queue.open(queue) as q:
        return {r.pair_id: r for r in q.rows()}


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.2) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
