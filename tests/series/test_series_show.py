"""``status``, ``evaluate``, ``report`` and ``series-status`` show series: per slide its state, links and errors.

A tiny real series (crops of the downsized H&E, translation, few iterations) runs once on an
in-process cluster; the figures the commands print are checked against landmarks mapped through
the stored composed transforms here, by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drmime_batch.cli import main

HE = Path(__file__).resolve().parents[2] / "drmime_batch/examples/cima-lung-lesion3/images/29-041-Izd2-w35-He-les3.jpg"
#: top-left corner (x, y) of each slide's crop of the downsized H&E; the reference is s1
CORNERS = {"s0": (10, 14), "s1": (16, 10), "s2": (23, 6)}
OPTIONS = ["--transform", "translation", "--max-iterations", "40", "--option", "min_iterations=10",
           "--init", "moments", "--max-size", "128", "--option", "threads=1"]
#: landmarks (x, y) in the pixels of the downsized H&E; each slide's file holds them in its crop's pixels
POINTS = np.array([[30.0, 25.0], [70.0, 30.0], [50.0, 60.0], [85.0, 75.0], [40.0, 80.0]])
SHAPE = (88, 96)


@pytest.fixture(scope="module")
def real_series(tmp_path_factory):
    import torch
    from distributed import Client

    from drmime_batch.engine import RunOptions, run_queue
    from drmime_batch.queue import Queue
    from drmime_batch.series import compose_finished

    tmp = tmp_path_factory.mktemp("series")
    src = np.asarray(Image.open(HE).convert("RGB").resize((140, 103), Image.Resampling.LANCZOS))
    lines = ["slide_id,path,landmarks"]
    for sid, (x, y) in CORNERS.items():
        Image.fromarray(np.ascontiguousarray(src[y:y + SHAPE[0], x:x + SHAPE[1]])).save(tmp / f"{sid}.png")
        pts = POINTS - [x, y]
        (tmp / f"{sid}.csv").write_text(",X,Y\n" + "".join(f"{i},{a},{b}\n" for i, (a, b) in enumerate(pts)))
        lines.append(f"{sid},{sid}.png,{sid}.csv")
    lines.append("s3,missing.png,")  # unreadable: its links fail, the others are composed
    (tmp / "slides.csv").write_text("\n".join(lines) + "\n")
    queue_path, store = tmp / "q.sqlite", tmp / "out.zarr"
    assert main(["submit-series", str(tmp / "slides.csv"), "--series-id", "S", "--reference", "s1",
                 "--queue", str(queue_path), "--out", str(store), *OPTIONS, "--quiet"]) == 0
    threads = torch.get_num_threads()
    try:
        with Queue.open(queue_path) as queue, \
                Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            run_queue(queue, client, options=RunOptions(warp=False, max_in_flight=2))
            compose_finished(queue, warp=False)
    finally:
        torch.set_num_threads(threads)
    return tmp, queue_path, store


def _by_hand(store: Path, slide: str) -> tuple[float, float]:
    """(rTRE median, identity's) of ``slide``'s landmarks against s1's through the stored transform."""
    from drmime_batch.transforms import open_transform

    m = open_transform(store, f"S/{slide}").matrix
    ref = np.c_[POINTS - CORNERS["s1"], np.ones(len(POINTS))]
    mine = POINTS - CORNERS[slide]
    mapped = (m @ ref.T)[:2].T
    diag = float(np.hypot(*SHAPE))
    return (float(np.median(np.hypot(*(mapped - mine).T)) / diag),
            float(np.median(np.hypot(*(ref[:, :2] - mine).T)) / diag))


def _check_rows(rows: list[dict], store: Path) -> None:
    by = {r["slide_id"]: r for r in rows}
    assert by["s1"]["state"] == "reference" and by["s3"]["state"] == "missing"
    assert by["s1"]["rtre_median"] is None and by["s3"]["rtre_median"] is None
    assert "S--s2--s3 failed" in by["s3"]["error"] and "S--s1--s3 failed" in by["s3"]["error"]
    assert (by["s3"]["links_done"], by["s3"]["links_total"]) == (0, 2)
    assert (by["s2"]["links_done"], by["s2"]["links_total"]) == (1, 2)  # s2--s3 failed
    for sid in ("s0", "s2"):
        after, before = _by_hand(store, sid)
        assert by[sid]["state"] == "composed"
        assert by[sid]["rtre_median"] == pytest.approx(after, rel=1e-6, abs=1e-9)
        assert by[sid]["identity_rtre_median"] == pytest.approx(before, rel=1e-6)
        assert after < 0.2 * before  # the registration really moved the slide onto the reference


@pytest.mark.slow
@pytest.mark.cluster
def test_status_shows_the_series_per_slide_with_the_real_errors(real_series, capsys):
    tmp, queue, store = real_series
    assert main(["status", "--queue", str(queue)]) == 0
    out = capsys.readouterr().out
    assert "series S: 4 slides, reference s1, partial" in out
    after, before = _by_hand(store, "s2")
    line = next(x for x in out.splitlines() if "│ s2 " in x)
    assert "composed" in line and "1/2" in line and f"{before:.4f} → {after:.4f}" in line
    assert "no finished link joins it to the reference" in out
    assert main(["status", "--queue", str(queue), "--json"]) == 0
    pairs = json.loads(capsys.readouterr().out)
    assert isinstance(pairs, list) and {"pair_id", "state", "matrix", "outcome"} <= set(pairs[0])
    link = next(p for p in pairs if p["pair_id"] == "S--s1--s2")
    assert link["series"] == {"series_id": "S", "fixed_slide": "s1", "moving_slide": "s2", "distance": 1}
    assert main(["series-status", "--queue", str(queue), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)
    _check_rows(record["slide_rows"], store)
    assert record["composed"]["missing"] == ["s3"]  # the earlier keys stay


@pytest.mark.slow
@pytest.mark.cluster
def test_evaluate_rescores_from_the_stored_transforms_with_the_floor(real_series, capsys):
    tmp, queue, store = real_series
    assert main(["evaluate", "--queue", str(queue), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"queue", "pairs", "summary"} <= set(data)
    (series,) = data["series"]
    assert series["state"] == "partial" and series["missing"] == ["s3"]
    _check_rows(series["slides"], store)
    s2 = next(r for r in series["slides"] if r["slide_id"] == "s2")
    assert s2["floor_rtre_median"] < 1e-9  # the landmarks are exactly a shift apart: the floor is 0
    assert series["rtre_median"] == pytest.approx(np.median([_by_hand(store, s)[0] for s in ("s0", "s2")]))
    assert main(["evaluate", "--queue", str(queue)]) == 0
    out = capsys.readouterr().out
    assert "series S: 4 slides, reference s1, partial" in out and "÷ floor" in out


@pytest.mark.slow
@pytest.mark.cluster
def test_report_prints_the_series_table(real_series, capsys):
    tmp, queue, store = real_series
    assert main(["report", "--queue", str(queue)]) == 0
    out = capsys.readouterr().out
    after, before = _by_hand(store, "s0")
    assert "series S: 4 slides, reference s1, partial" in out
    assert f"{before:.4f} → {after:.4f}" in out


def test_plain_queue_shows_no_series_and_pairs_have_series_none(tmp_path, capsys):
    from drmime_batch.queue import ManifestEntry, Queue

    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        q.add([ManifestEntry("p1", "/a.png", "/b.png")], out=tmp_path / "o.zarr")
    assert main(["status", "--queue", str(tmp_path / "q.sqlite"), "--json"]) == 0
    (pair,) = json.loads(capsys.readouterr().out)
    assert pair["series"] is None
    assert main(["status", "--queue", str(tmp_path / "q.sqlite")]) == 0
    assert "series" not in capsys.readouterr().out.lower()


def test_waiting_series_says_so_before_composition(tmp_path, capsys):
    from drmime_batch.queue import Queue
    from drmime_batch.series import SeriesSlide, plan_series, series_rows, submit_series

    plan = plan_series("S", [SeriesSlide(f"s{i}", f"/d/s{i}.png") for i in range(3)])
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        submit_series(q, plan, out=tmp_path / "o.zarr")
        (record,) = series_rows(q)
    assert record["state"] == "waiting" and record["composition"] is None
    assert [(r["slide_id"], r["state"], r["links_total"]) for r in record["slides"]] == [
        ("s0", "waiting", 1), ("s1", "waiting", 2), ("s2", "waiting", 1)]
    assert main(["status", "--queue", str(tmp_path / "q.sqlite")]) == 0
    assert "series S: 3 slides, reference s1, waiting; links pending 2" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.cluster
def test_apply_points_brings_a_registered_slide_onto_the_reference(real_series, capsys):
    tmp, queue, store = real_series
    out = tmp / "s2-on-s1.csv"
    assert main(["apply", "points", str(store), "S/s2", str(tmp / "s2.csv"), "--out", str(out)]) == 0
    mapped = np.loadtxt(out, delimiter=",", skiprows=1, usecols=(1, 2))
    np.testing.assert_allclose(mapped, POINTS - CORNERS["s1"], atol=1.0)  # within a pixel of the truth
