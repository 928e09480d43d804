"""benchmarks/batch_slides.py: the generated slides, landmarks and manifest; the RSS sampler; a tiny batch end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drmime_batch.io import open_image
from drmime_batch.queue import read_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_batch_slides", ROOT / "benchmarks" / "batch_slides.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_batch_slides"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_batch_slides", None)


def _colour_at(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mean RGB of the 3 x 3 pixels around each (x, y) point."""
    out = []
    for x, y in np.round(points).astype(int):
        out.append(rgb[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2].reshape(-1, 3).mean(axis=0))
    return np.array(out)


def test_generated_pairs_manifest_and_landmarks(bench, tmp_path: Path) -> None:
    manifest, pairs = bench.generate(tmp_path, 1100, 2, noise=0.0)
    entries = read_manifest(manifest)
    assert [e.pair_id for e in entries] == ["CD31-to-He", "Cc10-to-He"] == [p.pair_id for p in pairs]
    assert all(e.fixed_landmarks and e.moving_landmarks for e in entries)
    fixed = open_image(entries[0].fixed)
    assert fixed.levels[0].shape == (815, 1100, 3)  # 892 x 661 scaled to 1100 on the longer side
    assert [lv.shape[:2] for lv in fixed.levels] == [(815, 1100), (204, 275), (51, 69)]  # /1, /4, /16
    assert fixed.pixel_size == (bench.PIXEL_UM, bench.PIXEL_UM)
    factor = 1100 / 892
    src_fixed = bench.read_landmarks(bench._landmark_path("He"))
    np.testing.assert_allclose(bench.read_landmarks(Path(entries[0].fixed_landmarks)),
                               src_fixed * factor + (factor - 1) / 2, atol=0.01)  # fmt: skip
    for entry, pair, stain in zip(entries, pairs, ("CD31-3", "Cc10-5"), strict=True):
        assert 1.5 <= abs(pair.degrees) <= 3.0
        moving = np.asarray(open_image(entry.moving).levels[0])
        source = np.asarray(Image.open(bench._image_path(stain)).convert("RGB"), dtype=np.float64)
        src_pts = bench.read_landmarks(bench._landmark_path(stain))
        want = _colour_at(source, src_pts)
        # the slide's colour at the moved landmarks is the source's at the original ones (JPEG and
        # interpolation aside), and clearly not at the landmarks scaled without the extra rotation / shift
        moved, scaled = bench.read_landmarks(Path(entry.moving_landmarks)), src_pts * factor + (factor - 1) / 2
        h, w = moving.shape[:2]
        inside = np.all((moved >= 2) & (moved < [w - 2, h - 2]) & (scaled >= 2) & (scaled < [w - 2, h - 2]), axis=1)
        assert inside.sum() > 60  # a few landmarks near the edge leave the slide
        want, moved, scaled = want[inside], moved[inside], scaled[inside]
        got = _colour_at(moving.astype(np.float64), moved)
        unmoved = _colour_at(moving.astype(np.float64), scaled)
        err, wrong = np.median(np.abs(got - want)), np.median(np.abs(unmoved - want))
        assert err < 12 and wrong > 2 * err, (err, wrong)


def test_size_and_pairs_are_checked(bench, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--pairs"):
        bench.generate(tmp_path, 2000, 0)
    with pytest.raises(SystemExit, match="--size"):
        bench.generate(tmp_path, 500, 1)


def test_rigid_matrix_turns_about_the_centre(bench) -> None:
    m = bench.rigid_matrix(90.0, (5.0, -2.0), (10.0, 10.0))
    np.testing.assert_allclose(bench.apply_matrix(m, np.array([[10.0, 10.0], [20.0, 10.0]])),
                               [[15.0, 8.0], [15.0, 18.0]], atol=1e-9)  # fmt: skip


def test_sampler_sees_a_child_process_and_its_peak(bench) -> None:
    code = "import time; b = bytearray(300_000_000); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.0)"
    proc = subprocess.Popen([sys.executable, "-c", code])
    sampler = bench.TreeSampler(proc.pid, every=0.05)
    sampler.start()
    proc.wait()
    sampler.stop()
    assert sampler.samples >= 5
    assert sampler.driver() >= 300e6 and sampler.tree >= sampler.driver()
    assert sampler.workers() == []  # not a multiprocessing spawn
    assert bench.is_worker("python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)")
    assert not bench.is_worker("python -c from multiprocessing.resource_tracker import main;main(4)")


@pytest.mark.slow
@pytest.mark.cluster
def test_tiny_batch_end_to_end(bench, tmp_path: Path) -> None:
    out = tmp_path / "fig.json"
    # 100 iterations per level instead of the default 320: the run, the RSS figures and the rTRE
    # are the same code end to end, in about a third of the optimisation
    assert bench.main(["--size", "1100", "--pairs", "1", "--tmp", str(tmp_path / "w"), "--json", str(out),
                       "--option", "max_iterations=100"]) == 0
    fig = json.loads(out.read_text())
    assert fig["options"] == ["max_iterations=100"]
    assert fig["done"] == 1 and fig["pairs_per_hour"] > 0
    assert len(fig["worker_peak_rss_gb"]) == 2 and all(0.1 < w < 2 for w in fig["worker_peak_rss_gb"])
    pair = fig["per_pair"][0]
    assert pair["rtre_median"] < pair["identity_rtre_median"] / 3
    assert not any((tmp_path / "w").iterdir())  # the scratch folder is removed without --keep
