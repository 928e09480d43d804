"""The landmark-free quality record: features and flags on small generated images."""

from __future__ import annotations

import numpy as np
import pytest

from drmime_batch.outcome import PairOutcome
from drmime_batch.quality import THRESHOLDS, QualityRecord, assess, judge


def _section(seed: int = 0, shape: tuple[int, int] = (120, 140)) -> np.ndarray:
    """A grey 'slide': bright glass, an irregular dark textured section off centre."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    blob = ((xx - 0.45 * w) / (0.3 * w)) ** 2 + ((yy - 0.5 * h) / (0.33 * h)) ** 2 < 1.0
    blob &= ~((xx > 0.55 * w) & (yy < 0.35 * h))  # a notch: no symmetry to hide a wrong orientation
    from scipy import ndimage

    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2.0)
    img = np.full(shape, 230.0) + rng.normal(0, 2, shape)
    img[blob] = 120 + 60 * texture[blob] / texture.std()
    return np.clip(img, 0, 255).astype(np.uint8)


def _shift(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def test_aligned_pair_scores_high_and_is_not_flagged() -> None:
    img = _section()
    q = assess(img, img, np.eye(3))
    assert not q.flagged, q.reasons
    assert 0.5 < q.score <= 1.0
    assert q.features["dice"] == pytest.approx(1.0)
    assert q.features["peak_margin"] > THRESHOLDS["peak_margin_min"]


@pytest.mark.parametrize("matrix", [
    _shift(12.0, 0.0),  # a near miss: a small shift is better
    np.array([[-1.0, 0.0, 139.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),  # mirrored
    np.array([[0.0, -1.0, 119.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),  # turned a quarter
])
def test_wrong_maps_are_flagged_with_reasons(matrix: np.ndarray) -> None:
    img = _section()
    moving = img if matrix[0, 1] == 0 else np.ascontiguousarray(img)  # same image, wrong map
    q = assess(img, moving, matrix)
    assert q.flagged
    assert q.reasons and all(isinstance(r, str) for r in q.reasons)
    assert q.score < 0.5


def test_no_tissue_is_flagged() -> None:
    rng = np.random.default_rng(1)
    blank = np.clip(rng.normal(230, 2, (100, 100)), 0, 255).astype(np.uint8)
    q = assess(blank, _section(), np.eye(3))
    assert q.flagged
    assert any("no tissue" in r for r in q.reasons)
    assert q.score == 0.0


def test_noise_is_flagged() -> None:
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, (120, 140), dtype=np.uint8)
    assert assess(_section(), noise, np.eye(3)).flagged


def test_unrelated_sections_are_flagged() -> None:
    assert assess(_section(0), _section(7, (130, 120)), np.eye(3)).flagged


def test_implausible_transforms_are_flagged_by_judge() -> None:
    good = {"dice": 0.95, "peak_margin": 0.3, "orientation_margin": 0.6, "sharpness": 0.6,
            "anisotropy": 1.02, "area_change": 1.05}
    assert not judge(good).flagged
    assert judge(good | {"anisotropy": 2.5}).flagged
    assert judge(good | {"area_change": 6.0}).flagged
    folded = judge(good, deformation={"kept": True, "jacobian_min": -0.2})
    assert folded.flagged and any("folds" in r for r in folded.reasons)
    assert not judge(good, deformation={"kept": True, "jacobian_min": 0.4}).flagged
    assert judge(good, init={"start_score": 1.0, "final_score": 1.2}).features["gain"] == pytest.approx(0.2)


def test_record_round_trips_through_the_outcome() -> None:
    q = QualityRecord(score=0.25, flagged=True, reasons=("x",), features={"dice": 0.4})
    assert QualityRecord.from_dict(q.to_dict()) == q
    out = PairOutcome(pair_id="p", ok=True, matrix=np.eye(3), qc=q.to_dict())
    back = PairOutcome.from_dict(out.to_dict())
    assert back.qc == q.to_dict() and back.flagged
    assert not PairOutcome.from_dict({**out.to_dict(), "qc": None}).flagged  # rows written before


def test_overlay_stretches_a_faint_stain() -> None:
    from drmime_batch.io._overlay import overlay, stain_density

    faint = np.full((40, 40, 3), 250, np.uint8)
    faint[10:30, 10:30] = 235  # a pale stain: 15 grey levels under the glass
    out = stain_density(faint)
    assert out[20, 20] > 0.8 and out[0, 0] < 0.1
    # in the QC overlay the faint registered stain is as green as a dark one would be, and the
    # black fill outside a warped image is glass (white), not the densest stain
    dark = np.full((40, 40, 3), 250, np.uint8)
    dark[10:30, 10:30] = 60
    registered = faint.copy()
    registered[:, :4] = 0
    picture = overlay(dark, registered)
    assert picture[20, 20].tolist() == [0, 0, 0]  # both have tissue there
    assert picture[35, 35].tolist() == [255, 255, 255] and picture[35, 1].tolist() == [255, 255, 255]


def _two_pieces(shift_b: float = 0.0, shape: tuple[int, int] = (220, 170)) -> tuple[np.ndarray, np.ndarray]:
    """Two separate textured pieces (lobes), one above the other; the lower one moved ``shift_b`` px right.

    Returns the image and, for every tissue pixel of the unmoved layout, whether it is in the lower piece.
    """
    from scipy import ndimage

    rng = np.random.default_rng(5)
    h, w = shape
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (h + 40, w + 40)), 2.0)
    texture = 120 + 60 * texture / texture.std()
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    img = np.full(shape, 230.0) + rng.normal(0, 2, shape)

    def piece(cy: float, dx: float) -> np.ndarray:
        out: np.ndarray = ((xx - 0.5 * w - dx) / (0.38 * w)) ** 2 + ((yy - cy) / (0.2 * h)) ** 2 < 1.0
        return out

    for cy, dx in ((0.27 * h, 0.0), (0.73 * h, shift_b)):
        moved = ndimage.map_coordinates(texture, [yy + 20, xx - dx + 20], order=1)  # the texture moves along
        img[piece(cy, dx)] = moved[piece(cy, dx)]
    return np.clip(img, 0, 255).astype(np.uint8), piece(0.73 * h, 0.0)


def test_a_map_aligning_one_piece_is_flagged_by_local_consistency() -> None:
    # between the sections the lower piece moved 2.5 % of the diagonal: no affine map aligns both,
    # the best one (least squares over the tissue: a shear) is the correct registration
    fixed, lower = _two_pieces()
    d = 0.025 * np.hypot(*fixed.shape)
    moving, _ = _two_pieces(d)
    yy, xx = np.nonzero(fixed < 200)
    design = np.column_stack([xx, yy, np.ones(len(xx))])
    best = np.eye(3)
    best[0] = np.linalg.lstsq(design, xx + d * lower[yy, xx], rcond=None)[0]
    correct = assess(fixed, moving, best)
    assert not correct.flagged, correct.reasons
    assert correct.features["local_coherence"] < THRESHOLDS["local_coherence_max"] / 2
    for one_piece in (np.eye(3), _shift(d, 0.0)):  # the upper piece aligned, or the lower one
        q = assess(fixed, moving, one_piece)
        feats = q.features
        assert feats["local_coherence"] > THRESHOLDS["local_coherence_max"]
        assert feats["local_shift"] > THRESHOLDS["local_shift_min"]
        assert feats["peak_margin"] > THRESHOLDS["peak_margin_min"]  # on a peak: the other features pass it
        assert q.flagged and len(q.reasons) == 1 and "parts of the tissue agree" in q.reasons[0]


def test_local_consistency_needs_enough_cells() -> None:
    img = _section()
    feats = assess(img, img, np.eye(3)).features
    assert feats["local_shift"] is not None and feats["local_shift"] < 1e-3
    tiny = np.full((60, 60), 230, np.uint8)
    tiny[25:35, 25:35] = 90  # one cell of tissue: not judged
    assert assess(tiny, tiny, np.eye(3)).features["local_coherence"] is None
