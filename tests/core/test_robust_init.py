"""The start can only help: candidates, the margin for far rotations, and the fall back to the start.

Round tissue cores look alike at every rotation; a search that picks a rotated or mirrored basin
there ends far worse than no registration at all. These tests pin the rules that prevent it: the
identity and the centre-of-mass alignment always compete, a far candidate needs a margin, and a
result that scores worse than its start is replaced by the start.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _core_data import QUICK, SHAPE, SIZE, about_centre, corner_error, ihc_source, rotation, view_pair

from drmime_batch import register
from drmime_batch.core._init import FAR_MARGIN, NEAR_IDENTITY_DEG
from drmime_batch.core._optimise import never_worse


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return ihc_source()


def _round_core(image: np.ndarray, radius: float) -> np.ndarray:
    """The image inside a centred disc, white (empty glass) outside: a tissue-microarray core."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    inside = (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 <= radius**2
    return np.where(inside[..., None], image, 1.0)


@pytest.mark.slow
def test_round_core_stays_in_the_near_identity_basin(source):
    truth = about_centre(rotation(8), SHAPE, (3.0, -2.0))
    fixed, moving = view_pair(source, truth, SIZE)
    fixed, moving = _round_core(fixed, 70), _round_core(moving, 70)
    result = register(fixed, moving, **QUICK)
    init = result.init
    assert not init["flip"] and min(init["angle_deg"], 360 - init["angle_deg"]) <= NEAR_IDENTITY_DEG, init
    assert corner_error(result.matrix, truth, SHAPE) < 2.0


@pytest.mark.slow
def test_every_candidate_is_recorded_and_the_rule_holds(source):
    truth = about_centre(rotation(150), SHAPE, (2.0, 3.0))
    fixed, moving = view_pair(source, truth, SIZE)
    result = register(fixed, moving, **QUICK)
    init = json.loads(result.to_json())["init"]  # the record survives JSON
    names = [c["name"] for c in init["candidates"]]
    assert names[:2] == ["identity", "moments"] and "rotation" in names
    assert all(np.isfinite(c["score"]) for c in init["candidates"])
    near = [c["score"] for c in init["candidates"] if not c["flip"] and min(c["grid_angle_deg"], 360 - c["grid_angle_deg"]) <= 20]
    # a 150-degree turn is far: it may win only by the stated margin over the best near candidate
    assert abs(init["angle_deg"] - 150.0) <= 10.0 and init["chosen"] == "rotation"
    assert init["score"] > max(near) * (1 + FAR_MARGIN)
    assert init["fallback"] is False and init["final_score"] >= init["start_score"] * 0.99
    assert corner_error(result.matrix, truth, SHAPE) < 1.0


def test_a_result_worse_than_its_start_falls_back_to_it(source):
    # Inverted contrast at the true pose: the start is right, and MSE (which wants equal
    # intensities) can only make it worse. The record says the start was kept.
    fixed, _ = view_pair(source, np.eye(3), SIZE)
    gray = fixed.mean(-1)
    result = register(gray, 1.0 - gray, metric="mse", init="none", max_iterations=300, lr_transform=0.01, device="cpu")
    init = result.init
    assert init["fallback"] is True, init
    assert init["final_score"] < init["start_score"]
    assert corner_error(result.matrix, np.eye(3), SHAPE) < 0.5


def test_never_worse_keeps_the_better_of_two():
    start = torch.eye(3, dtype=torch.float64)
    better = start.clone()
    better[0, 2] = 1.0
    scorer = lambda m: -(m[:, 0, 2] - 1.0).abs()  # noqa: E731 - best at a shift of one pixel
    kept, verdict = never_worse(start, better, scorer)
    assert torch.equal(kept, better) and verdict["fallback"] is False
    worse = start.clone()
    worse[0, 2] = 9.0
    kept, verdict = never_worse(start, worse, scorer)
    assert torch.equal(kept, start) and verdict["fallback"] is True
    nan = start.clone()
    nan[0, 2] = float("nan")
    assert never_worse(start, nan, scorer)[1]["fallback"] is True
