"""Helpers of the series tests: a small series of random PNGs whose links are finished by hand."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from drmime_batch.queue import Queue
from drmime_batch.series import SeriesPlan, plan_series, read_slides, submit_series


def shift(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


#: reference (s1) pixel -> slide pixel
TRUTH = {"s0": shift(-3, 2), "s1": np.eye(3), "s2": shift(4, 1), "s3": shift(9, -2)}
SHAPE = (64, 72, 3)


def make_series(tmp_path: Path) -> tuple[Queue, SeriesPlan]:
    """Series ``S`` of four slides (s0..s3, reference s1, landmarks) queued in ``q.sqlite``, output ``o.zarr``."""
    rng = np.random.default_rng(0)
    lines = ["slide_id,path,landmarks"]
    ref_points = np.array([[10.0, 12.0], [40.0, 20.0], [30.0, 50.0]])
    for sid, t in TRUTH.items():
        Image.fromarray(rng.integers(0, 255, SHAPE, dtype=np.uint8)).save(tmp_path / f"{sid}.png")
        pts = (t @ np.c_[ref_points, np.ones(3)].T)[:2].T
        (tmp_path / f"{sid}.csv").write_text(",X,Y\n" + "".join(f"{i},{x},{y}\n" for i, (x, y) in enumerate(pts)))
        lines.append(f"{sid},{sid}.png,{sid}.csv")
    (tmp_path / "slides.csv").write_text("\n".join(lines) + "\n")
    plan = plan_series("S", read_slides(tmp_path / "slides.csv"), reference="s1")
    queue = Queue.open(tmp_path / "q.sqlite", create=True)
    submit_series(queue, plan, out=tmp_path / "o.zarr")
    return queue, plan


def finish(queue: Queue, plan: SeriesPlan, *, fail: Collection[str] = (), noise: float = 0.0,
           out: Path | None = None) -> None:
    """Finish every link (the true matrix, plus noise) but those of ``fail``, which fail (an unreadable
    image); with ``out``, each finished link's transform is also written there, as a worker would."""
    from drmime_batch.io import write_transform

    rng = np.random.default_rng(1)
    for k in plan.links:
        queue.claim(k.pair_id)
        if k.pair_id in fail:
            queue.fail(k.pair_id, f"cannot read image {k.moving}.png: truncated file")
            continue
        m = TRUTH[k.moving] @ np.linalg.inv(TRUTH[k.fixed]) @ shift(*rng.normal(0, noise, 2))
        if out is not None:
            attrs: dict[str, Any] = {"fixed": plan.slide(k.fixed).path, "moving": plan.slide(k.moving).path}
            write_transform(out, k.pair_id, m, attrs=attrs, fixed_shape=SHAPE, moving_shape=SHAPE)
        queue.finish(k.pair_id, matrix=m.tolist(), result={}, seconds=1.0)
