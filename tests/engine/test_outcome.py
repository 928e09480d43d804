"""The typed pair outcome, end to end: worker task -> queue row -> readers (evaluation, status).

One real registration of the two bundled pyramidal OME-TIFFs (PhysicalSize 1 µm, lung-lesion-3
H&E and CD31 with their landmarks), in-process (no cluster), at a small level with few iterations.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from drmime_batch.engine import PairTask
from drmime_batch.engine._task import register_pair
from drmime_batch.outcome import OUTCOME_VERSION, ImageSide, PairOutcome

DATA = Path(__file__).resolve().parents[1] / "data" / "pyramidal-derived"
LANDMARKS = files("drmime_batch") / "examples/cima-lung-lesion3/landmarks-5pc-user-PS"
OPTIONS = {"max_size": 200, "max_iterations": 60, "min_iterations": 20, "device": "cpu", "threads": 1, "seed": 0}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[PairTask, PairOutcome]:
    out = tmp_path_factory.mktemp("outcome") / "out.zarr"
    task = PairTask(
        pair_id="he-cd31",
        fixed=str(DATA / "lung-lesion3_He_5pc.ome.tif"),
        moving=str(DATA / "lung-lesion3_CD31_5pc.ome.tif"),
        out=str(out),
        fixed_landmarks=str(LANDMARKS / "29-041-Izd2-w35-He-les3.csv"),
        moving_landmarks=str(LANDMARKS / "29-041-Izd2-w35-CD31-3-les3.csv"),
        options=OPTIONS,
    )
    return task, register_pair(task)


def test_the_task_returns_a_full_resolution_outcome_with_pixel_sizes(finished):
    task, outcome = finished
    assert isinstance(outcome, PairOutcome) and outcome.ok, outcome.error
    assert outcome.fixed.shape[:2] == (661, 892) and outcome.moving.shape[:2] == (660, 895)
    assert outcome.fixed.pixel_size == outcome.moving.pixel_size == (1.0, 1.0)  # the files' OME-XML
    assert outcome.fixed.level >= 1  # registered on a pyramid level of at most 200 px
    # the stored registration record is at full resolution, like the matrix beside it
    assert np.allclose(outcome.registration["matrix"], outcome.matrix)
    assert tuple(outcome.registration["fixed_shape"][:2]) == (661, 892)
    # landmark errors in µm, because the moving image has a pixel size (1 µm: equal to pixels)
    lm = outcome.landmarks
    assert lm["tre_median_um"] == pytest.approx(lm["tre_median_px"])
    assert lm["rtre_median"] < lm["identity_rtre_median"]


def test_the_transform_store_holds_the_full_resolution_record(finished):
    from drmime_batch.io import read_transform

    task, outcome = finished
    matrix, attrs = read_transform(task.out, task.pair_id)
    assert np.allclose(matrix, outcome.matrix)
    assert np.allclose(attrs["result"]["matrix"], outcome.matrix)
    assert attrs["result"]["fixed_shape"][:2] == [661, 892]
    # the images the matrix is in, beside it: what 'apply slide' checks a slide against
    assert attrs["fixed_shape"][:2] == [661, 892] and attrs["moving_shape"][:2] == [660, 895]
    assert attrs["fixed_pixel_size_um"] == attrs["moving_pixel_size_um"] == [1.0, 1.0]


def test_the_outcome_round_trips_through_its_dict_and_json(finished):
    _, outcome = finished
    data = json.loads(json.dumps(outcome.to_dict()))
    assert data["outcome_version"] == OUTCOME_VERSION
    # keys of earlier releases stay, flat
    for key in ("final_mi", "iterations", "timings", "device", "fixed_shape", "fixed_level", "moving_level",
                "fixed_downsample", "moving_downsample", "masks", "landmarks", "qc_png"):
        assert key in data, key
    back = PairOutcome.from_dict(data)
    assert back.to_dict() == outcome.to_dict()
    assert back.fixed == outcome.fixed and back.moving == outcome.moving


def test_a_queue_row_gives_the_outcome_back_and_evaluation_reports_micrometres(finished, tmp_path):
    from drmime_batch.evaluation import evaluate_rows
    from drmime_batch.queue import Queue, read_manifest

    task, outcome = finished
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,fixed,moving,fixed_landmarks,moving_landmarks\n"
        f"{task.pair_id},{task.fixed},{task.moving},{task.fixed_landmarks},{task.moving_landmarks}\n"
    )
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        q.add(read_manifest(manifest), out=tmp_path / "out.zarr")
        assert q.claim(task.pair_id)
        record = {k: v for k, v in outcome.to_dict().items() if k not in ("matrix", "ok", "error", "traceback", "pid")}
        q.finish(task.pair_id, matrix=outcome.matrix.tolist(), result=record, seconds=outcome.seconds)
        row = q.get(task.pair_id)
    back = PairOutcome.from_row(row)
    assert back.ok and np.allclose(back.matrix, outcome.matrix)
    assert back.moving.pixel_size == (1.0, 1.0) and back.fixed_shape[:2] == (661, 892)
    (scored,) = evaluate_rows([row], floor=False)
    assert scored["tre_median_um"] == pytest.approx(outcome.landmarks["tre_median_um"])


def test_a_summary_of_an_earlier_release_reads_as_an_outcome():
    old = {  # what a queue row's result held before the outcome was versioned
        "pair_id": "p", "worker": "tcp://w", "attempt": 1, "seconds": 3.5, "final_mi": 0.7, "iterations": 200,
        "timings": {"total_s": 3.0}, "device": "cpu", "transform": "affine", "metric": "mine",
        "fixed_shape": [100, 200, 3], "qc_png": "q.png", "masks": {}, "fixed_level": 1, "moving_level": 2,
        "fixed_downsample": [2.0, 2.0], "moving_downsample": [4.0, 4.0], "warped": False,
    }
    outcome = PairOutcome.from_dict(old, matrix=np.eye(3))
    assert outcome.ok and outcome.fixed_shape == (100, 200, 3) and outcome.moving.level == 2
    assert outcome.final_mi == 0.7 and outcome.moving.pixel_size is None
    assert outcome.summary()["tre_median_um"] is None


def test_outcomes_refuse_what_cannot_be():
    with pytest.raises(ValueError, match="needs its matrix"):
        PairOutcome(pair_id="p", ok=True)
    with pytest.raises(ValueError, match="failure must be one of"):
        PairOutcome.failed("p", "boom", failure="oops")
    failed = PairOutcome.failed("p", "fixed image a.tif:\n  no such file", failure="input")
    assert failed.error == "fixed image a.tif: no such file" and not failed.ok
    side = ImageSide(path="a.tif", shape=[10, 20], pixel_size=0.5, downsample=[2, 2])
    assert side.pixel_size == (0.5, 0.5) and side.shape == (10, 20) and side.downsample == (2.0, 2.0)


def test_a_bug_in_the_task_keeps_its_traceback(tmp_path, monkeypatch):
    """An unexpected exception (not bad input) fails the pair as ``internal`` with its traceback."""
    import drmime_batch._api as api

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(api, "register", broken)
    task = PairTask(pair_id="bug", fixed=str(DATA / "lung-lesion3_He_5pc.ome.tif"),
                    moving=str(DATA / "lung-lesion3_CD31_5pc.ome.tif"), out=str(tmp_path / "out.zarr"),
                    options=OPTIONS)
    outcome = register_pair(task)
    assert not outcome.ok and outcome.failure == "internal"
    assert outcome.error.startswith("internal error") and "ZeroDivisionError: a bug deep inside" in outcome.error
    assert "Traceback" in outcome.traceback and "broken" in outcome.traceback
    assert "\n" not in outcome.error


def test_bad_input_fails_as_input_without_a_traceback(tmp_path):
    task = PairTask(pair_id="missing", fixed=str(tmp_path / "nope.tif"),
                    moving=str(DATA / "lung-lesion3_CD31_5pc.ome.tif"), out=str(tmp_path / "out.zarr"),
                    options=OPTIONS)
    outcome = register_pair(task)
    assert not outcome.ok and outcome.failure == "input" and outcome.traceback is None
    assert outcome.error == f"fixed image {tmp_path / 'nope.tif'}: ImageNotFoundError: no such file or directory"


def test_a_bug_fails_its_pair_in_a_batch_with_the_traceback_in_the_queue(tmp_path, monkeypatch):
    """Driver on an in-process cluster: the bug's traceback reaches the queue and ``status --json``."""
    import torch
    from distributed import Client

    import drmime_batch._api as api
    from drmime_batch.cli._cmd_batch import _status_dict
    from drmime_batch.engine import RunOptions, run_queue
    from drmime_batch.queue import Queue, read_manifest

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(api, "register", broken)
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"pair_id,fixed,moving\nbug,{DATA / 'lung-lesion3_He_5pc.ome.tif'},"
                        f"{DATA / 'lung-lesion3_CD31_5pc.ome.tif'}\n")
    threads = torch.get_num_threads()
    try:
        with Queue.open(tmp_path / "q.sqlite", create=True) as q, \
                Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            q.add(read_manifest(manifest), out=tmp_path / "out.zarr", options=OPTIONS)
            summary = run_queue(q, client, options=RunOptions(warp=False, max_in_flight=1))
            row = q.get("bug")
    finally:
        torch.set_num_threads(threads)
    assert summary.failed == ("bug",) and row.state == "failed"
    assert row.error.startswith("internal error") and "\n" not in row.error
    assert "ZeroDivisionError: a bug deep inside" in row.traceback and "Traceback" in row.traceback
    status = _status_dict(row)
    assert status["traceback"] == row.traceback and status["error"] == row.error
    assert status["failure"] == "internal" and status["outcome"]["failure"] == "internal"
