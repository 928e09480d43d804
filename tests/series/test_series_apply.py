"""``apply`` on a series entry that has no transform says why, in one line, from the store alone.

The series of ``_series_support`` (four PNGs, reference s1; s0 hangs on the one link S--s1--s0)
with its links finished by hand; finished links are written to the store as a worker would.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _series_support import TRUTH, finish

from drmime_batch.cli import main
from drmime_batch.errors import IncompleteOutputError
from drmime_batch.series import compose_series
from drmime_batch.series._record import SERIES_KEY, read_series_record
from drmime_batch.transforms import open_transform


def _apply_error(capsys, tmp, entry, form="points"):
    """Run ``apply FORM STORE ENTRY``: it must fail with one line on stderr, returned without the prefix."""
    data = {"points": tmp / "s3.csv", "slide": tmp / "s0.png"}[form]
    out = tmp / ("out.csv" if form == "points" else "out.ome.zarr")
    assert main(["apply", form, str(tmp / "o.zarr"), entry, str(data), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("drmime-batch apply: error: "), err
    assert not out.exists()
    return err.removeprefix("drmime-batch apply: error: ")


def test_a_missing_slide_names_its_failed_link_and_the_fix_which_works(series, capsys):
    queue, plan, tmp = series
    finish(queue, plan, fail={"S--s1--s0"}, out=tmp / "o.zarr")
    assert compose_series(queue, "S", warp=False)["missing"] == ["s0"]
    record = read_series_record(tmp / "o.zarr" / "S")
    assert record["queue"] == str(tmp / "q.sqlite") and record["state"] == "partial"
    (s0,) = [s for s in record["slides"] if s["slide_id"] == "s0"]
    assert s0["links"] == [{"pair_id": "S--s1--s0", "state": "failed",
                            "error": "cannot read image s0.png: truncated file"}]
    for form in ("points", "slide"):
        err = _apply_error(capsys, tmp, "S/s0", form)
        assert err.startswith(f"series S in {tmp / 'o.zarr'}: slide s0 was not placed when the series was composed: "
                              "no finished link joins it to the reference s1: "
                              "S--s1--s0 failed (cannot read image s0.png: truncated file). To place it, ")
        assert f"retry that link in queue {tmp / 'q.sqlite'} ('drmime-batch retry' S--s1--s0)" in err
        assert "'drmime-batch run' composes the series again" in err and "'drmime-batch compose-series'" in err
    with pytest.raises(IncompleteOutputError, match="slide s0 was not placed"):
        open_transform(tmp / "o.zarr", "S/s0")
    # what the message says to do places it
    assert queue.retry(["S--s1--s0"]) == ["S--s1--s0"]
    queue.claim("S--s1--s0")
    queue.finish("S--s1--s0", matrix=(TRUTH["s0"] @ np.linalg.inv(TRUTH["s1"])).tolist(), result={}, seconds=1.0)
    assert compose_series(queue, "S", warp=False)["state"] == "composed"
    np.testing.assert_allclose(open_transform(tmp / "o.zarr", "S/s0").matrix, TRUTH["s0"], atol=1e-9)
    assert {s["state"] for s in read_series_record(tmp / "o.zarr" / "S")["slides"]} == {"reference", "placed"}


def test_a_slide_cut_off_by_a_cancelled_link_is_told_to_retry_it_by_name(series, capsys):
    queue, plan, tmp = series
    finish(queue, plan, fail={"S--s1--s0"})
    assert queue.cancel(["S--s1--s0"]) == ["S--s1--s0"]  # a failed link given up on
    compose_series(queue, "S", warp=False)
    err = _apply_error(capsys, tmp, "S/s0")
    assert ": S--s1--s0 cancelled" in err and "To place it, retry that link" in err
    assert "'drmime-batch retry' S--s1--s0" in err


def test_an_unknown_slide_of_a_composed_series_lists_its_slides(series, capsys):
    queue, plan, tmp = series
    finish(queue, plan)
    compose_series(queue, "S", warp=False)
    err = _apply_error(capsys, tmp, "S/s9")
    assert err == f"series S in {tmp / 'o.zarr'} has no slide 's9' (slides: s0, s1, s2, s3)"


def test_a_series_named_without_its_slide_is_told_to_name_one(series, capsys):
    queue, plan, tmp = series
    finish(queue, plan)
    compose_series(queue, "S", warp=False)
    err = _apply_error(capsys, tmp, "S")
    assert err == f"'S' in {tmp / 'o.zarr'} is a series, not a pair: name one of its slides as S/SLIDE " \
                  "(slides: s0, s1, s2, s3)"


def test_a_series_never_composed_says_so_and_which_command_composes_it(series, capsys):
    queue, plan, tmp = series
    finish(queue, plan, out=tmp / "o.zarr")  # the links are in the store; no composition ran
    err = _apply_error(capsys, tmp, "S/s0")
    assert err.startswith(f"series S in {tmp / 'o.zarr'} was never composed: 4 of its links are in the store "
                          "(S--s1--s0, S--s1--s2, S--s1--s3, S--s2--s3), its transforms are not: compose it "
                          "('drmime-batch compose-series'; 'drmime-batch run' does it once all its links are finished)")
    # a link itself is a plain pair of the store, and stays usable
    np.testing.assert_allclose(open_transform(tmp / "o.zarr", "S--s1--s0").matrix, TRUTH["s0"], atol=1e-9)


def test_an_unknown_series_names_what_the_store_holds(series, capsys):
    queue, plan, tmp = series
    finish(queue, plan, out=tmp / "o.zarr")
    compose_series(queue, "S", warp=False)
    err = _apply_error(capsys, tmp, "T/s1")
    assert err.startswith(f"output store {tmp / 'o.zarr'} has no series 'T': neither its group nor any of its links "
                          "(T--*) is there (entries: S, S--s1--s0, S--s1--s2, S--s1--s3, S--s2--s3)")
    assert "appears once one of its links has finished" in err


def test_a_placed_slide_whose_transform_is_gone_is_told_to_compose_again(series, capsys):
    queue, plan, tmp = series
    finish(queue, plan)
    compose_series(queue, "S", warp=False)
    shutil.rmtree(tmp / "o.zarr" / "S" / "s2")
    err = _apply_error(capsys, tmp, "S/s2")
    assert "slide s2 was placed when the series was composed, but its transform is no longer there" in err
    assert err.endswith("compose the series again ('drmime-batch compose-series')")


def test_a_series_composed_by_an_earlier_release_gets_the_plain_message(series, capsys):
    queue, plan, tmp = series
    finish(queue, plan, fail={"S--s1--s0"})
    compose_series(queue, "S", warp=False)
    meta = tmp / "o.zarr" / "S" / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"][SERIES_KEY]  # no record: as written before it existed
    meta.write_text(json.dumps(doc))
    err = _apply_error(capsys, tmp, "S/s0")
    assert err == f"output store {tmp / 'o.zarr'} has no entry 'S/s0' (entries: s1, s2, s3)"
    np.testing.assert_allclose(open_transform(tmp / "o.zarr", "S/s3").matrix, TRUTH["s3"], atol=1e-9)


def test_the_fix_fits_the_states_of_the_slides_links():
    from drmime_batch.series._record import _fix

    gone = _fix([{"pair_id": "S--s1--s0", "state": "not in queue"}], "q.sqlite")
    assert gone == "its links are no longer in queue q.sqlite: submit the series again ('drmime-batch submit-series')"
    behind = _fix([{"pair_id": "S--s2--s3", "state": "done"}], "q.sqlite")
    assert behind.startswith("its finished links reach only slides that are not placed either: place those first")
    two = _fix([{"pair_id": "a", "state": "failed"}, {"pair_id": "b", "state": "cancelled"}], None)
    assert two.startswith("retry those links ('drmime-batch retry' a b), then") and "when they are done" in two
