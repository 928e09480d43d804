"""The worker task records a quality record; bad inputs end failed or flagged, never unflagged.

Called in-process through ``register_pair`` (no cluster), on tiny images with few iterations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _batch_data import make_pairs
from PIL import Image

from drmime_batch.engine import PairTask
from drmime_batch.engine._task import register_pair
from drmime_batch.outcome import PairOutcome

OPTIONS = {"transform": "translation", "max_size": 128, "max_iterations": 40, "min_iterations": 20,
           "init": "moments", "device": "cpu", "threads": 1, "seed": 3}


def _run(tmp_path: Path, fixed: Path, moving: Path, **options: object) -> PairOutcome:
    task = PairTask(pair_id="p", fixed=str(fixed), moving=str(moving), out=str(tmp_path / "out.zarr"),
                    options=OPTIONS | options)
    return register_pair(task)


def _png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def _section(seed: int, shape: tuple[int, int] = (110, 130)) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cx, cy = rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h
    blob = ((xx - cx) / (0.3 * w)) ** 2 + ((yy - cy) / (0.25 * h)) ** 2 < 1.0
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5)
    img = np.full(shape, 232.0) + rng.normal(0, 2, shape)
    img[blob] = 120 + 60 * texture[blob] / texture.std()
    return np.clip(img, 0, 255).astype(np.uint8)


def _failed_or_flagged(outcome: PairOutcome) -> bool:
    return (not outcome.ok) or bool((outcome.qc or {})["flagged"])


@pytest.mark.slow
def test_a_good_pair_has_an_unflagged_record(tmp_path: Path) -> None:
    make_pairs(tmp_path, n_good=1)
    out = _run(tmp_path, tmp_path / "fixed.png", tmp_path / "moving0.png")
    assert out.ok, out.error
    qc = out.qc
    assert qc is not None
    assert set(qc) >= {"score", "flagged", "reasons", "features"}
    assert not qc["flagged"], qc["reasons"]
    assert 0.0 <= qc["score"] <= 1.0
    assert out.to_dict()["qc"] == qc


@pytest.mark.slow
def test_no_tissue_is_failed_or_flagged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blank = np.clip(rng.normal(232, 2, (110, 130)), 0, 255).astype(np.uint8)
    out = _run(tmp_path, _png(tmp_path / "f.png", blank), _png(tmp_path / "m.png", _section(1)))
    assert _failed_or_flagged(out)


def test_unrelated_sections_are_failed_or_flagged(tmp_path: Path) -> None:
    out = _run(tmp_path, _png(tmp_path / "f.png", _section(1)), _png(tmp_path / "m.png", _section(2, (120, 100))))
    assert _failed_or_flagged(out)


def test_noise_is_failed_or_flagged(tmp_path: Path) -> None:
    noise = np.random.default_rng(3).integers(0, 256, (110, 130), dtype=np.uint8)
    out = _run(tmp_path, _png(tmp_path / "f.png", _section(1)), _png(tmp_path / "m.png", noise))
    assert _failed_or_flagged(out)
