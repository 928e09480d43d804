"""`evaluate` and the HTML report on a small finished queue (real SQLite, real files)."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drmime_batch.cli import build_parser, main
from drmime_batch.evaluation import (
    best_fit_matrix,
    evaluate_matrix,
    evaluate_rows,
    image_shape,
    read_landmarks,
    write_html_report,
    write_landmarks,
)
from drmime_batch.queue import ManifestEntry, Queue, read_manifest

EXAMPLE = Path(__file__).resolve().parents[2] / "drmime_batch" / "examples" / "cima-lung-lesion3"


@pytest.fixture()
def finished_queue(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """The bundled demo manifest (4 stains onto H&E) plus one pair without landmarks, finished."""
    entries = read_manifest(EXAMPLE / "demo.csv")
    entries.append(ManifestEntry("no-landmarks", entries[0].fixed, entries[0].moving))
    qpath = tmp_path / "q.sqlite"
    matrices: dict[str, np.ndarray] = {}
    with Queue.open(qpath, create=True) as q:
        q.add(entries, out=tmp_path / "out.zarr")
        for i, e in enumerate(entries):
            q.claim(e.pair_id)
            if e.pair_id == "Ki67-to-He":
                q.fail(e.pair_id, "RegistrationDivergedError: boom", seconds=1.0)
                continue
            if e.fixed_landmarks:
                # a plausible registration: the landmarks' affine fit, slightly off
                m = best_fit_matrix(read_landmarks(e.fixed_landmarks), read_landmarks(e.moving_landmarks))
                m[:2, 2] += [1.5 * i, -2.0]
            else:
                m = np.eye(3)
            matrices[e.pair_id] = m
            result: dict = {"final_mi": 0.5}
            if e.fixed_landmarks:  # what the engine's worker stores (its own call of evaluate_matrix)
                result["fixed_shape"] = [661, 892]
                result["landmarks"] = evaluate_matrix(
                    m, read_landmarks(e.fixed_landmarks), read_landmarks(e.moving_landmarks), fixed_shape=(661, 892)
                ).to_dict()
            q.finish(e.pair_id, matrix=m.tolist(), result=result, seconds=2.0 + i)
    return qpath, matrices


def test_evaluate_json_matches_library(finished_queue, tmp_path: Path, capsys) -> None:
    qpath, matrices = finished_queue
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--queue", str(qpath), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    pairs = {p["pair_id"]: p for p in data["pairs"]}
    assert list(pairs) == ["CD31-to-He", "Cc10-to-He", "Ki67-to-He", "proSPC-to-He", "no-landmarks"]
    assert pairs["Ki67-to-He"]["state"] == "failed" and "rtre_median" not in pairs["Ki67-to-He"]
    assert pairs["no-landmarks"]["has_landmarks"] is False and "rtre_median" not in pairs["no-landmarks"]
    manifest = {e.pair_id: e for e in read_manifest(EXAMPLE / "demo.csv")}
    scored = []
    for pid in ("CD31-to-He", "Cc10-to-He", "proSPC-to-He"):
        e = manifest[pid]
        f, m = read_landmarks(e.fixed_landmarks), read_landmarks(e.moving_landmarks)
        ref = evaluate_matrix(matrices[pid], f, m, fixed_shape=(661, 892))
        floor = evaluate_matrix(best_fit_matrix(f, m), f, m, fixed_shape=(661, 892))
        for key, value in ref.to_dict().items():
            assert pairs[pid][key] == (value if value is None else pytest.approx(value, rel=1e-12)), (pid, key)
        assert pairs[pid]["floor_rtre_median"] == pytest.approx(floor.rtre_median)
        assert pairs[pid]["floor_ratio"] == pytest.approx(ref.rtre_median / floor.rtre_median)
        assert pairs[pid]["rtre_median"] < pairs[pid]["identity_rtre_median"]
        scored.append(ref.rtre_median)
    s = data["summary"]["rtre_median"]
    assert s["n"] == 3
    assert s["median"] == pytest.approx(np.median(scored)) and s["mean"] == pytest.approx(np.mean(scored))
    assert s["p90"] == pytest.approx(np.percentile(scored, 90))


def test_evaluate_table_and_csv(finished_queue, tmp_path: Path, capsys) -> None:
    qpath, _ = finished_queue
    out = tmp_path / "sub" / "eval.csv"
    assert main(["evaluate", "--queue", str(qpath), "--csv", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CD31-to-He" in text and "summary over pairs" in text and "rtre_median" in text
    rows = list(csv.DictReader(out.open()))
    assert [r["pair_id"] for r in rows][:2] == ["CD31-to-He", "Cc10-to-He"]
    assert float(rows[0]["rtre_median"]) > 0 and rows[2]["rtre_median"] == ""


def test_evaluate_json_to_stdout(finished_queue, capsys) -> None:
    qpath, _ = finished_queue
    assert main(["evaluate", "--queue", str(qpath), "--json", "--no-floor"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "floor_rtre_median" not in data["pairs"][0] and data["summary"]["naed"]["n"] == 3


def test_evaluate_reports_a_missing_landmark_file(finished_queue, tmp_path: Path, capsys) -> None:
    qpath, _ = finished_queue
    # a pair whose moving landmark file vanished after submission
    fixed_lm = write_landmarks(tmp_path / "f.csv", np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]))
    e = read_manifest(EXAMPLE / "demo.csv")[0]
    with Queue.open(qpath) as q:
        q.add([ManifestEntry("gone", e.fixed, e.moving, str(fixed_lm), str(tmp_path / "gone.csv"))],
              out=tmp_path / "out.zarr")
        q.claim("gone")
        q.finish("gone", matrix=np.eye(3).tolist(), result={}, seconds=1.0)
    assert main(["evaluate", "--queue", str(qpath), "--json"]) == 1
    captured = capsys.readouterr()
    assert "pair gone: landmark file" in captured.err and "gone.csv does not exist" in captured.err
    pairs = {p["pair_id"]: p for p in json.loads(captured.out)["pairs"]}
    assert "gone.csv" in pairs["gone"]["landmark_error"] and pairs["CD31-to-He"]["landmark_error"] is None


def test_evaluate_missing_queue_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", "--queue", str(tmp_path / "none.sqlite")]) == 1
    assert "none.sqlite does not exist" in capsys.readouterr().err


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.cells: list[str] = []
        self.links: list[str] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))
        self._in_td = tag == "td"

    def handle_data(self, data):
        if self._in_td and data.strip():
            self.cells.append(data.strip())


def test_html_report_of_a_finished_queue(finished_queue, tmp_path: Path) -> None:
    qpath, _ = finished_queue
    with Queue.open(qpath) as q:
        rows = evaluate_rows(q.rows())
    for i, row in enumerate(rows):  # QC overlays as the engine would write them (one missing)
        if row["state"] == "done" and row["pair_id"] != "no-landmarks":
            png = tmp_path / "qc-src" / f"{row['pair_id']}.png"
            png.parent.mkdir(exist_ok=True)
            Image.new("RGB", (16, 12), (i * 40, 0, 0)).save(png)
            row["qc_png"] = png
        else:
            row["qc_png"] = tmp_path / "missing.png" if row["pair_id"] == "no-landmarks" else None
    rows[0]["pair_id"] = "CD31-to-He <&>"  # ids are escaped, file names sanitised
    out = write_html_report(rows, tmp_path / "report", title="lung <batch>")
    assert out == tmp_path / "report" / "index.html"
    parser = _Collect()
    parser.feed(out.read_text())
    parser.close()
    qc_imgs = [src for src in parser.imgs if src.startswith("qc/")]
    # the three QC overlays that exist, and the batch's rTRE plot (rows without image files: no overlays)
    assert len(qc_imgs) == 3 and set(parser.imgs) - set(qc_imgs) == {"figures/rtre-before-after.png"}
    assert not parser.links
    for src in parser.imgs:
        assert not Path(src).is_absolute() and ".." not in src
        assert (out.parent / src).is_file()
    for src in qc_imgs:
        assert image_shape(out.parent / src) == (12, 16)
    assert "CD31-to-He <&>" in parser.cells and "RegistrationDivergedError: boom" in parser.cells
    assert f"{rows[1]['rtre_median']:.4f}" in parser.cells
    assert "<title>lung &lt;batch&gt;</title>" in out.read_text()


def test_report_command_uses_the_html_writer(finished_queue, tmp_path: Path) -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    if "report" not in commands:
        pytest.skip("the engine's 'report' command is not in this tree yet")
    qpath, _ = finished_queue
    out_dir = tmp_path / "html"
    main(["report", "--queue", str(qpath), "--html", str(out_dir)])
    page = out_dir / "index.html"
    parser2 = _Collect()
    parser2.feed(page.read_text())
    assert "CD31-to-He" in parser2.cells
    with Queue.open(qpath) as q:
        expected = q.get("Cc10-to-He").result["landmarks"]["rtre_median"]
    assert f"{expected:.4f}" in parser2.cells  # the landmark figures reach the page
    for src in parser2.imgs:
        assert (out_dir / src).is_file()
