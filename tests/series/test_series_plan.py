"""The series plan: links, the default reference, skip links, pair ids, bad input, storage in the queue."""

from __future__ import annotations

import pytest

from drmime_batch._pair_id import check_pair_id
from drmime_batch.errors import ManifestError, QueueError
from drmime_batch.queue import Queue
from drmime_batch.queue._series_table import get_series, series_ids
from drmime_batch.series import SeriesPlan, SeriesSlide, plan_series, read_slides, series_status, submit_series


def _slides(n: int) -> list[SeriesSlide]:
    return [SeriesSlide(f"s{i}", f"/data/s{i}.tif") for i in range(n)]


def test_default_reference_is_the_middle_slide_and_links_point_outwards():
    plan = plan_series("S", _slides(5))
    assert plan.reference == "s2"
    pairs = {(k.fixed, k.moving, k.distance) for k in plan.links}
    assert pairs == {("s1", "s0", 1), ("s2", "s0", 2), ("s2", "s1", 1),
                     ("s2", "s3", 1), ("s3", "s4", 1), ("s2", "s4", 2)}
    for k in plan.links:
        assert k.pair_id == f"S--{k.fixed}--{k.moving}"
        assert check_pair_id(k.pair_id) == k.pair_id


def test_skip_one_is_a_chain_and_a_longer_skip_adds_links():
    assert [(k.fixed, k.moving) for k in plan_series("S", _slides(4), reference="s0", skip=1).links] == [
        ("s0", "s1"), ("s1", "s2"), ("s2", "s3")]
    longer = plan_series("S", _slides(6), reference="s0", skip=3)
    assert {(k.fixed, k.moving) for k in longer.links if k.moving == "s5"} == {("s4", "s5"), ("s3", "s5"), ("s2", "s5")}
    assert {(k.fixed, k.moving) for k in longer.links if k.moving == "s2"} == {("s1", "s2"), ("s0", "s2")}


def test_plan_round_trips_and_entries_carry_landmarks_of_both_slides():
    slides = [SeriesSlide("a", "/a.tif", "/a.csv", None, 2), SeriesSlide("b", "/b.tif", "/b.csv", "/bm.png", 3)]
    plan = plan_series("S", slides, reference="a")
    assert SeriesPlan.from_dict(plan.to_dict()) == plan
    (entry,) = plan.entries()
    assert (entry.fixed, entry.moving, entry.fixed_landmarks, entry.moving_landmarks, entry.moving_mask) == (
        "/a.tif", "/b.tif", "/a.csv", "/b.csv", "/bm.png")


@pytest.mark.parametrize(("slides", "reference", "message"), [
    ([SeriesSlide("a", "/a.tif", line=2), SeriesSlide("a", "/b.tif", line=3)], None,
     "line 3: slide 'a' listed twice (first on line 2)"),
    ([SeriesSlide("a", "/a.tif"), SeriesSlide("A", "/b.tif")], None, "differs from 'a' only by case"),
    ([SeriesSlide("a", "/a.tif"), SeriesSlide("b", "/a.tif")], None, "is the file of slide 'a' listed twice"),
    ([SeriesSlide("a", "/a.tif"), SeriesSlide("b", "/b.tif")], "zz", "unknown reference slide 'zz' (slides: a, b)"),
    ([SeriesSlide("a", "/a.tif")], None, "a series needs at least two slides, got 1"),
    ([SeriesSlide("a b", "/a.tif"), SeriesSlide("b", "/b.tif")], None, "slide id: pair id 'a b' is not usable"),
    ([SeriesSlide("a--x", "/a.tif"), SeriesSlide("b", "/b.tif")], None, "must not contain '--'"),
])
def test_bad_input_is_one_line_naming_the_slide(slides, reference, message):
    with pytest.raises(ManifestError) as info:
        plan_series("S", slides, reference=reference, source="slides.csv")
    text = str(info.value)
    assert message in text and text.startswith("slides.csv") and "\n" not in text
    assert "--reference" not in text


def test_bad_series_id_and_slide_table(tmp_path):
    with pytest.raises(ManifestError, match="series id"):
        plan_series("bad/id", _slides(2))
    table = tmp_path / "slides.csv"
    table.write_text("slide_id,file\na,a.tif\n")
    with pytest.raises(ManifestError, match=r"slides.csv: line 1: missing column\(s\) path"):
        read_slides(table)
    table.write_text("slide_id,path,landmarks\na,a.tif,a.csv\nb,,\n")
    with pytest.raises(ManifestError, match="line 3: empty 'path' cell"):
        read_slides(table)
    table.write_text("slide_id,path,landmarks\na,a.tif,a.csv\n\nb,sub/b.tif,\n")
    got = read_slides(table)
    assert [(s.slide_id, s.path, s.landmarks, s.line) for s in got] == [
        ("a", str(tmp_path / "a.tif"), str(tmp_path / "a.csv"), 2), ("b", str(tmp_path / "sub" / "b.tif"), None, 4)]


def test_submitted_series_is_pairs_of_the_queue_and_a_stored_plan(tmp_path):
    plan = plan_series("S", _slides(3))
    with Queue.open(tmp_path / "q.sqlite", create=True) as queue:
        added = submit_series(queue, plan, out=tmp_path / "o.zarr", options={"max_iterations": 40})
        assert added == [k.pair_id for k in plan.links]
        assert {r.state for r in queue.rows()} == {"pending"}
        assert series_ids(queue) == ["S"]
        assert SeriesPlan.from_dict(get_series(queue, "S")["plan"]) == plan
        with pytest.raises(QueueError, match="series 'S' is already in queue"):
            submit_series(queue, plan, out=tmp_path / "o.zarr")
        status = series_status(queue, "S")
        assert status["reference"] == "s1" and [k["state"] for k in status["links"]] == ["pending", "pending"]
        with pytest.raises(QueueError, match="no series 'T'"):
            series_status(queue, "T")
    with Queue.open(tmp_path / "q.sqlite") as queue:  # the plan is persistent
        assert series_ids(queue) == ["S"]


def test_refused_submission_leaves_no_plan(tmp_path):
    plan = plan_series("S", _slides(3))
    with Queue.open(tmp_path / "q.sqlite", create=True) as queue:
        with pytest.raises(Exception, match="registration options"):
            submit_series(queue, plan, out=tmp_path / "o.zarr", options={"no_such_option": 1})
        assert series_ids(queue) == [] and queue.rows() == []
        submit_series(queue, plan, out=tmp_path / "o.zarr")  # the same series goes in afterwards
        assert len(queue.rows()) == 2
