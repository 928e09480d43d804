"""Tissue-mask columns: the manifest reads them, the queue stores them, an old queue file migrates."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from drmime_batch.errors import ManifestError
from drmime_batch.queue import ManifestEntry, Queue, read_manifest

#: The ``pairs`` table as the first release made it (no mask columns).
_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pairs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL UNIQUE,
    fixed TEXT NOT NULL,
    moving TEXT NOT NULL,
    fixed_landmarks TEXT,
    moving_landmarks TEXT,
    out TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    seconds REAL,
    worker TEXT,
    device TEXT,
    matrix TEXT,
    result TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}',
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX pairs_state ON pairs (state);
INSERT INTO meta (key, value) VALUES ('schema_version', '1');
"""


def _write(folder: Path, text: str, name: str = "m.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_manifest_mask_columns_both_one_or_none(tmp_path):
    sub = tmp_path / "sub"
    path = _write(
        sub,
        "pair_id,fixed,moving,fixed_mask,moving_mask\n"
        "both,f.tif,m.tif,masks/f.png,/abs/m.png\n"
        "fixed-only,f.tif,m.tif,masks/f.png,\n"
        "moving-only,f.tif,m.tif,,s3://bucket/masks/m.png\n"
        "neither,f.tif,m.tif,,\n",
    )
    both, fixed_only, moving_only, neither = read_manifest(path)
    assert both.fixed_mask == str((sub / "masks" / "f.png").resolve())  # relative: the manifest's folder
    assert both.moving_mask == "/abs/m.png"
    assert (fixed_only.fixed_mask, fixed_only.moving_mask) == (both.fixed_mask, None)
    assert (moving_only.fixed_mask, moving_only.moving_mask) == (None, "s3://bucket/masks/m.png")  # URL kept
    assert (neither.fixed_mask, neither.moving_mask) == (None, None)
    assert neither.fixed == str((sub / "f.tif").resolve())


def test_manifest_one_mask_column_alone_and_without_masks(tmp_path):
    (entry,) = read_manifest(_write(tmp_path, "pair_id,fixed,moving,moving_mask\np,f.tif,m.tif,mm.png\n"))
    assert entry.fixed_mask is None and entry.moving_mask == str((tmp_path / "mm.png").resolve())
    (entry,) = read_manifest(_write(tmp_path, "pair_id,fixed,moving\np,f.tif,m.tif\n", "plain.csv"))
    assert (entry.fixed_mask, entry.moving_mask) == (None, None)


def test_manifest_anhir_layout_with_mask_column(tmp_path):
    path = _write(
        tmp_path,
        "Target image,Source image,fixed_mask,Image size [pixels]\n"
        'img/He.jpg,img/CD31.jpg,masks/He.png,"(660, 895)"\n',
    )
    (entry,) = read_manifest(path)
    assert entry.pair_id == "CD31-to-He"
    assert entry.fixed_mask == str((tmp_path / "masks" / "He.png").resolve()) and entry.moving_mask is None


def test_manifest_error_lists_the_mask_columns(tmp_path):
    with pytest.raises(ManifestError, match=r"\[,fixed_mask\]\[,moving_mask\]"):
        read_manifest(_write(tmp_path, "pair_id,fixed,fixed_mask\na,f,fm\n"))


def test_submitting_masks_round_trips_through_the_queue_file(tmp_path):
    manifest = _write(tmp_path, "pair_id,fixed,moving,fixed_mask,moving_mask\n"
                                "a,f.tif,m.tif,fm.png,\nb,f.tif,m2.tif,,\n")
    qpath = tmp_path / "q.sqlite"
    with Queue.open(qpath, create=True) as q:
        q.add(read_manifest(manifest), out=tmp_path / "o.zarr")
    with Queue.open(qpath) as q:  # reopened: read back from the file
        a, b = q.rows()
        assert a.fixed_mask == str((tmp_path / "fm.png").resolve()) and a.moving_mask is None
        assert (b.fixed_mask, b.moving_mask) == (None, None)
        as_json = json.loads(json.dumps(a.to_dict()))
        assert as_json["fixed_mask"] == a.fixed_mask and "moving_mask" in as_json
        assert as_json["fixed_landmarks"] is None  # the existing keys stay


def test_queue_of_the_old_schema_migrates_on_open(tmp_path):
    qpath = tmp_path / "old.sqlite"
    conn = sqlite3.connect(qpath)
    conn.executescript(_OLD_SCHEMA)
    now = time.time()
    conn.execute(
        "INSERT INTO pairs (pair_id, fixed, moving, out, state, attempts, matrix, result, options, "
        "submitted_at, finished_at, updated_at) VALUES (?, ?, ?, ?, 'done', 1, ?, ?, ?, ?, ?, ?)",
        ("old", "/f.tif", "/m.tif", "/o.zarr", json.dumps([[1, 0, 2], [0, 1, 3], [0, 0, 1]]),
         json.dumps({"final_mi": 0.4}), json.dumps({"max_size": 256}), now, now, now),
    )
    conn.commit()
    conn.close()

    with Queue.open(qpath) as q:
        (row,) = q.rows()
        assert (row.pair_id, row.state, row.matrix[1][2], row.result, row.options) == (
            "old", "done", 3.0, {"final_mi": 0.4}, {"max_size": 256})
        assert (row.fixed_mask, row.moving_mask) == (None, None)
        q.add([ManifestEntry("new", "/f.tif", "/m2.tif", moving_mask="/mm.png")], out="/o.zarr")
    with sqlite3.connect(qpath) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(pairs)")]
    assert columns[-3:] == ["fixed_mask", "moving_mask", "traceback"]  # added once each, at the end
    with Queue.open(qpath) as q:  # opening again changes nothing
        assert [(r.pair_id, r.moving_mask) for r in q.rows()] == [("old", None), ("new", "/mm.png")]
        assert q.counts()["done"] == 1 and q.counts()["pending"] == 1
