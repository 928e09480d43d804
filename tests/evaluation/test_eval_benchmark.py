"""benchmarks/accuracy.py: the cheap reference methods end to end, and the peers' matrix convention."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from drmime_batch.evaluation import best_fit_matrix, evaluate_matrix, read_landmarks

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("bench_accuracy", ROOT / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_accuracy"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_accuracy", None)


def test_cover_table_of_the_bundled_dataset(accuracy) -> None:
    pairs = accuracy.read_cover_table(accuracy.DEFAULT_DATASET)
    assert len(pairs) == 10 and pairs[0].pair_id == "Cc10-5-to-CD31-3"
    assert pairs[0].fixed.name == "29-041-Izd2-w35-CD31-3-les3.jpg"  # fixed = ANHIR target
    assert all(p.fixed.is_file() and p.moving_landmarks.is_file() for p in pairs)


def test_reference_methods_end_to_end(accuracy, tmp_path: Path, capsys) -> None:
    out = tmp_path / "acc.json"
    assert accuracy.main(["--pairs", "2", "--methods", "identity,floor-h", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [p["method"] for p in data["pairs"]] == ["floor", "identity", "floor-h"] * 2
    pairs = accuracy.read_cover_table(accuracy.DEFAULT_DATASET)[:2]
    floors = []
    for pair in pairs:
        f, m = read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks)
        floors.append(evaluate_matrix(best_fit_matrix(f, m), f, m, fixed_shape=(660, 895)).rtre_median)
    got = [p["scores"]["rtre_median"] for p in data["pairs"] if p["method"] == "floor"]
    np.testing.assert_allclose(got, floors)
    s = data["summary"]
    assert s["floor"]["rtre_median"]["median"] == pytest.approx(np.median(floors))
    assert s["floor"]["within_1.3x_floor"] == [2, 2] and s["identity"]["within_1.3x_floor"] == [0, 2]
    assert s["identity"]["ratio_to"]["floor"]["rtre_median_ratio"] > 5
    assert "summary over pairs" in capsys.readouterr().out


def test_unknown_method_is_refused(accuracy) -> None:
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--methods", "drmime,nope"])


def _shifted(accuracy, matrix: np.ndarray):
    from scipy import ndimage

    fixed = accuracy.load_rgb(accuracy.DEFAULT_DATASET / "images" / "29-041-Izd2-w35-He-les3.jpg")[::2, ::2]
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])
    rc = swap @ np.linalg.inv(matrix) @ swap  # moving(q) = fixed(M^-1 q), in (row, col)
    moving = np.stack(
        [ndimage.affine_transform(fixed[..., c].astype(float), rc[:2, :2], offset=rc[:2, 2], order=1, cval=255)
         for c in range(3)], axis=-1).astype(np.uint8)
    return fixed, moving


def test_simpleitk_adapter_returns_fixed_to_moving_pixels(accuracy) -> None:
    pytest.importorskip("SimpleITK")
    truth = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, -4.0], [0.0, 0.0, 1.0]])
    fixed, moving = _shifted(accuracy, truth)
    runner = accuracy.Methods(threads=1, max_iterations=None, device="cpu")
    assert runner.available("sitk") is None
    first = runner.run_sitk(fixed, moving, None)
    np.testing.assert_allclose(first, truth, atol=0.05)
    # the same sample every run (SimpleITK's seed 0 is the wall clock: peer rows changed between runs)
    np.testing.assert_array_equal(runner.run_sitk(fixed, moving, None), first)


def test_fluorescence_modality_shows_every_method_a_dark_background_nuclear_channel(accuracy) -> None:
    import io

    from rich.console import Console

    from drmime_batch.core._mask import tissue_mask

    pair = accuracy.read_cover_table(accuracy.DEFAULT_DATASET)[0]
    rgb = accuracy.load_rgb(pair.moving)
    fl = accuracy.fluorescence(rgb)
    assert fl.shape == rgb.shape[:2] and fl.dtype == np.uint8
    tissue = tissue_mask(rgb)
    assert fl[~tissue].mean() < 0.5 * fl[tissue].mean()  # bright tissue on a dark background
    # the peers get it as it is (dark background, their padding value), not inverted like an RGB slide
    np.testing.assert_allclose(accuracy.peer_gray(fl), fl / 255.0, atol=1e-6)

    seen = []

    class Spy(accuracy.Methods):
        @staticmethod
        def run_identity(f, m, pair):
            seen.append((f.shape, m.shape))
            return np.eye(3)

    runner = Spy(threads=1, max_iterations=None, device="cpu")
    out = accuracy.run([pair], ["identity"], runner, Console(file=io.StringIO()), accuracy.MODALITIES["fluorescence"])
    assert seen == [(accuracy.load_rgb(pair.fixed).shape, rgb.shape[:2])]  # fixed as scanned, moving re-rendered
    assert out[0].scores["rtre_median"] > 0 and out[0].error is None
    assert accuracy.parse_args(["--modality", "fluorescence"]).modality == "fluorescence"
