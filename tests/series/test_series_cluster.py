"""One small series end to end: submit-series, the pairs on a Dask cluster, the composition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drmime_batch.cli import main
from drmime_batch.errors import IncompleteOutputError

HE = Path(__file__).resolve().parents[2] / "drmime_batch/examples/cima-lung-lesion3/images/29-041-Izd2-w35-He-les3.jpg"
#: top-left corner (x, y) of each slide's crop of the downsized H&E; the reference is s1
CORNERS = {"s0": (10, 14), "s1": (16, 10), "s2": (23, 6)}
OPTIONS = ["--transform", "translation", "--max-iterations", "40", "--option", "min_iterations=10",
           "--init", "moments", "--max-size", "128", "--option", "threads=1"]


@pytest.mark.slow
@pytest.mark.cluster
def test_small_series_lands_near_the_truth(tmp_path, monkeypatch):
    import torch
    from distributed import Client

    from drmime_batch.engine import RunOptions, run_queue
    from drmime_batch.queue import Queue
    from drmime_batch.series import compose_finished
    from drmime_batch.transforms import open_transform

    src = np.asarray(Image.open(HE).convert("RGB").resize((140, 103), Image.Resampling.LANCZOS))
    lines = ["slide_id,path"]
    for sid, (x, y) in CORNERS.items():
        Image.fromarray(np.ascontiguousarray(src[y:y + 88, x:x + 96])).save(tmp_path / f"{sid}.png")
        lines.append(f"{sid},{sid}.png")
    lines.append("s3,missing.png")  # unreadable: its links fail, the others finish
    (tmp_path / "slides.csv").write_text("\n".join(lines) + "\n")
    queue_path, store = tmp_path / "q.sqlite", tmp_path / "out.zarr"
    assert main(["submit-series", str(tmp_path / "slides.csv"), "--series-id", "S", "--reference", "s1",
                 "--queue", str(queue_path), "--out", str(store), *OPTIONS, "--quiet"]) == 0
    threads = torch.get_num_threads()
    try:
        with Queue.open(queue_path) as queue, \
                Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            summary = run_queue(queue, client, options=RunOptions(warp=False, max_in_flight=2))
            (series,) = compose_finished(queue, warp=True)
    finally:
        torch.set_num_threads(threads)
    assert set(summary.failed) == {"S--s2--s3", "S--s1--s3"}
    assert series["state"] == "partial" and series["missing"] == ["s3"]
    rx, ry = CORNERS["s1"]
    for sid, (x, y) in CORNERS.items():
        t = open_transform(store, f"S/{sid}")
        # reference pixel p shows slide pixel p + (x_ref - x, y_ref - y)
        np.testing.assert_allclose(t.matrix[:2, 2], [rx - x, ry - y], atol=1.0)
        assert t.recorded_shape("fixed") == t.recorded_shape("moving") == (88, 96, 3)  # from the links' outcomes
    assert (store / "S" / "stack" / "0").exists()
    # the unreadable slide: apply says which links failed, and why
    with pytest.raises(IncompleteOutputError, match=r"slide s3 was not placed .*S--s1--s3 failed \(moving image .*missing\.png"):
        open_transform(store, "S/s3")
