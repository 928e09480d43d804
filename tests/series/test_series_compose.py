"""Composing a series from its finished links (no cluster: the links are finished by hand)."""

from __future__ import annotations

import json

import numpy as np
from _series_support import TRUTH
from _series_support import finish as _finish
from PIL import Image

from drmime_batch.cli import main
from drmime_batch.queue import Queue
from drmime_batch.series import compose_finished, compose_series, plan_series, read_slides
from drmime_batch.transforms import open_transform


def test_compose_writes_every_slide_in_the_reference_frame(series):
    queue, plan, tmp = series
    assert compose_series(queue, "S", warp=False)["state"] == "waiting"  # links still pending
    _finish(queue, plan)
    summary = compose_series(queue, "S", warp=False)
    assert summary["state"] == "composed" and summary["missing"] == []
    for sid, truth in TRUTH.items():
        t = open_transform(tmp / "o.zarr", f"S/{sid}")
        np.testing.assert_allclose(t.matrix, truth, atol=1e-9)
        assert t.attrs["series"]["reference"] == "s1" and t.image_path("moving").endswith(f"{sid}.png")
    by_slide = {s["slide_id"]: s for s in summary["slides"]}
    assert by_slide["s1"]["state"] == "reference"
    assert by_slide["s3"]["landmarks"]["tre_max_px"] < 1e-6
    assert by_slide["s3"]["landmarks"]["identity_rtre_median"] > 0
    assert compose_finished(queue, warp=False) == []  # nothing changed since


def test_a_failed_link_is_routed_around_and_a_cut_off_slide_is_named(series, capsys):
    queue, plan, tmp = series
    # s3 hangs on s2 (neighbour) and s1 (skip): without s2--s3 it is reached through s1 directly;
    # s0 has one link only: when it fails, s0 is missing and the others are still written
    _finish(queue, plan, fail={"S--s2--s3", "S--s1--s0"})
    summary = compose_series(queue, "S", warp=False)
    np.testing.assert_allclose(open_transform(tmp / "o.zarr", "S/s3").matrix, TRUTH["s3"], atol=1e-9)
    assert summary["state"] == "partial" and summary["missing"] == ["s0"]
    (s0,) = [s for s in summary["slides"] if s["slide_id"] == "s0"]
    assert "S--s1--s0 failed (cannot read image s0.png: truncated file)" in s0["error"]
    assert not (tmp / "o.zarr" / "S" / "s0").exists()
    assert main(["series-status", "--queue", str(tmp / "q.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "series S: 4 slides, reference s1" in out and "s0" in out and "missing" in out
    assert main(["series-status", "--queue", str(tmp / "q.sqlite"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert record["composed"]["missing"] == ["s0"] and len(record["links"]) == len(plan.links)


def test_noisy_links_compose_with_landmark_errors_and_a_stack(series):
    queue, plan, tmp = series
    _finish(queue, plan, noise=0.5)
    (summary,) = compose_finished(queue, warp=True)
    assert summary["state"] == "composed"
    for s in summary["slides"]:
        if s["state"] == "placed":
            assert s["landmarks"]["tre_median_px"] < 2.0 and s["chain_landmarks"] is not None
    import zarr

    group = zarr.open_group(str(tmp / "o.zarr" / "S" / "stack"), mode="r")
    assert [a["name"] for a in group.attrs["ome"]["multiscales"][0]["axes"]] == ["z", "c", "y", "x"]
    assert group.attrs["ome"]["version"] == "0.5"
    stack = np.asarray(group["0"])
    assert stack.shape == (4, 3, 64, 72)
    np.testing.assert_array_equal(stack[1].transpose(1, 2, 0), np.asarray(Image.open(tmp / "s1.png")))


def test_run_hook_composes_finished_series_once_and_logs_one_line(series):
    from drmime_batch.cli._cmd_series import compose_after_run

    queue, plan, tmp = series
    lines: list[str] = []
    compose_after_run(queue, warp=False, log=lines.append)
    assert lines == []  # links pending: nothing to compose yet
    _finish(queue, plan, fail={"S--s1--s0"})
    compose_after_run(queue, warp=False, log=lines.append)
    compose_after_run(queue, warp=False, log=lines.append)  # unchanged since: not again
    assert lines == ["series S: partial (missing s0)"]


def test_apply_points_with_a_series_entry_maps_a_slide_into_the_reference_frame(series, capsys):
    queue, plan, tmp = series
    _finish(queue, plan, fail={"S--s1--s0"})
    compose_series(queue, "S", warp=False)
    out = tmp / "s3-on-s1.csv"
    assert main(["apply", "points", str(tmp / "o.zarr"), "S/s3", str(tmp / "s3.csv"), "--out", str(out)]) == 0
    assert "3 points" in capsys.readouterr().out
    mapped = np.loadtxt(out, delimiter=",", skiprows=1, usecols=(1, 2))
    np.testing.assert_allclose(mapped, np.loadtxt(tmp / "s1.csv", delimiter=",", skiprows=1, usecols=(1, 2)),
                               atol=1e-9)  # s3's landmarks land on the reference's
    back = tmp / "back.csv"
    assert main(["apply", "points", str(tmp / "o.zarr"), "S/s3", str(out), "--out", str(back), "--inverse"]) == 0
    np.testing.assert_allclose(np.loadtxt(back, delimiter=",", skiprows=1, usecols=(1, 2)),
                               np.loadtxt(tmp / "s3.csv", delimiter=",", skiprows=1, usecols=(1, 2)), atol=1e-9)
    # the missing slide: one line saying why (more in test_series_apply)
    assert main(["apply", "points", str(tmp / "o.zarr"), "S/s0", str(tmp / "s3.csv"), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "slide s0 was not placed" in err


def test_deformable_series_composes_the_matrices_and_names_the_fields_left_out(tmp_path, capsys):
    from drmime_batch.queue._series_table import series_ids

    lines = ["slide_id,path"]
    for sid in TRUTH:
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / f"{sid}.png")
        lines.append(f"{sid},{sid}.png")
    (tmp_path / "slides.csv").write_text("\n".join(lines) + "\n")
    queue_path = tmp_path / "q.sqlite"
    assert main(["submit-series", str(tmp_path / "slides.csv"), "--series-id", "S", "--reference", "s1",
                 "--queue", str(queue_path), "--out", str(tmp_path / "o.zarr"), "--deformable", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "composes the links' matrices only" in err and len(err.strip().splitlines()) == 1
    with Queue.open(queue_path) as queue:
        assert series_ids(queue) == ["S"]
        plan = plan_series("S", read_slides(tmp_path / "slides.csv"), reference="s1")
        _finish(queue, plan)
        summary = compose_series(queue, "S", warp=False)
    assert summary["state"] == "composed"
    assert sorted(summary["fields_not_composed"]) == sorted(k.pair_id for k in plan.links)
    t = open_transform(tmp_path / "o.zarr", "S/s3")
    np.testing.assert_allclose(t.matrix, TRUTH["s3"], atol=1e-9)
    assert t.kind == "affine" and t.attrs["series"]["fields_not_composed"] == summary["fields_not_composed"]
    assert main(["status", "--queue", str(queue_path)]) == 0
    assert f"{len(plan.links)} deformable link(s): matrices composed, fields not (yet)" in capsys.readouterr().out
