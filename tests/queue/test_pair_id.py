"""One pair-id rule: the manifest, the queue and the output writer refuse the same ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drmime_batch._pair_id import check_pair_id, pair_id_key
from drmime_batch.errors import ManifestError, OutputStoreError, QueueError
from drmime_batch.io import pair_is_complete, read_transform, write_transform
from drmime_batch.queue import ManifestEntry, Queue, read_manifest

ROOT = Path(__file__).resolve().parents[2]
BAD_IDS = ["a@b", "a b", "a/b", "-a", ".a", "_a", "", "é", "zarr.json", "ZARR.JSON", "x" * 201, "a\\b", "a:b"]
GOOD_IDS = ["a", "CD31-to-He", "He_1.2+x=y", "9" * 200, "zarr.json2"]


@pytest.mark.parametrize("pair_id", BAD_IDS)
def test_every_side_refuses_the_same_bad_id(tmp_path, pair_id):
    with pytest.raises(OutputStoreError, match="is not usable"):
        check_pair_id(pair_id)
    with pytest.raises(OutputStoreError, match="is not usable"):  # the writer applies the same rule
        write_transform(tmp_path / "o.zarr", pair_id, np.eye(3), attrs={})
    with pytest.raises(OutputStoreError):
        pair_is_complete(tmp_path / "o.zarr", pair_id)
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        with pytest.raises(QueueError, match=r"manifest line 7: pair id .* is not usable.*nothing was added"):
            q.add([ManifestEntry("ok", "/f", "/m"), ManifestEntry(pair_id, "/f", "/m", line=7)], out=tmp_path / "o")
        assert q.rows() == []


@pytest.mark.parametrize("pair_id", GOOD_IDS)
def test_an_id_the_queue_takes_the_writer_writes(tmp_path, pair_id):
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        assert q.add([ManifestEntry(pair_id, "/f", "/m")], out=tmp_path / "o.zarr") == [pair_id]
    m = np.array([[1.0, 0, 2], [0, 1, 3], [0, 0, 1]])
    write_transform(tmp_path / "o.zarr", pair_id, m, attrs={})
    assert pair_is_complete(tmp_path / "o.zarr", pair_id, warp=False)
    assert np.allclose(read_transform(tmp_path / "o.zarr", pair_id)[0], m)


def test_manifest_names_the_line_and_the_id(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("pair_id,fixed,moving\nok,f.tif,m.tif\nlab@site,f.tif,m2.tif\n")
    with pytest.raises(ManifestError, match=r"m\.csv: line 3: pair id 'lab@site' is not usable: .*no spaces, slashes or @"):
        read_manifest(path)
    path.write_text("pair_id,fixed,moving\nzarr.json,f.tif,m.tif\n")
    with pytest.raises(ManifestError, match=r"line 2: pair id 'zarr.json' is not usable: .*metadata file"):
        read_manifest(path)


def test_ids_differing_only_by_case_are_refused(tmp_path):
    assert pair_id_key("He-to-CD31") == pair_id_key("HE-TO-cd31")
    path = tmp_path / "m.csv"
    path.write_text("pair_id,fixed,moving\nHe-to-CD31,f.tif,m.tif\nx,f.tif,m.tif\nhe-to-cd31,f.tif,m2.tif\n")
    with pytest.raises(ManifestError, match=r"line 4: pair id 'he-to-cd31' differs from 'He-to-CD31' \(line 2\) only by case"):
        read_manifest(path)
    with Queue.open(tmp_path / "q.sqlite", create=True) as q:
        q.add([ManifestEntry("P1", "/f", "/m")], out=tmp_path / "o.zarr")
        with pytest.raises(QueueError, match=r"'p1' differs from 'P1', already queued for .*o\.zarr, only by case"):
            q.add([ManifestEntry("q1", "/f", "/m"), ManifestEntry("p1", "/f", "/m")], out=tmp_path / "o.zarr")
        with pytest.raises(QueueError, match=r"'A' and 'a' differ only by case"):
            q.add([ManifestEntry("A", "/f", "/m"), ManifestEntry("a", "/f", "/m")], out=tmp_path / "o.zarr")
        q.add([ManifestEntry("p1", "/f", "/m")], out=tmp_path / "other.zarr")  # another store: no collision
        assert [r.pair_id for r in q.rows()] == ["P1", "p1"]


def test_anhir_ids_are_made_safe(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("Target image,Source image\nimg/he les@3.jpg,img/cd31 (2).jpg\n")
    (entry,) = read_manifest(path)
    assert entry.pair_id == "cd31__2_-to-he_les_3" and check_pair_id(entry.pair_id)


def test_submit_refuses_the_manifest_in_one_line_and_queues_nothing(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("pair_id,fixed,moving\ngood,f.png,m.png\nlab@site,f.png,m.png\n")
    queue = tmp_path / "q.sqlite"
    proc = subprocess.run(
        [sys.executable, "-m", "drmime_batch", "submit", str(manifest), "--queue", str(queue), "--out",
         str(tmp_path / "o.zarr")],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "line 3: pair id 'lab@site' is not usable" in proc.stderr
    assert not queue.exists()
