"""The consensus stage: the linear result replaced by the family's robust fit to a coarse
deformation over the fixed tissue, kept only when it keeps a quarter of the similarity gained."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_deformable import QUICK

from drmime_batch import register
from drmime_batch.core import _optimise
from drmime_batch.core._bases import basis
from drmime_batch.core._consensus import fit_transform_to_map, tissue_points

F64 = torch.float64


def _points(n: int = 400, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 2, dtype=F64, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> torch.Tensor:
    a = math.radians(angle_deg)
    m = torch.eye(3, dtype=F64)
    m[:2, :2] = scale * torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=F64)
    m[:2, 2] = torch.tensor(shift, dtype=F64)
    return m


def _apply(m: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    h = torch.cat([p, torch.ones_like(p[:, :1])], 1) @ m.T
    return h[:, :2] / h[:, 2:3]


def test_fit_recovers_a_map_of_its_family_and_stays_in_a_smaller_family():
    target = _similarity(7.0, 1.08, (0.05, -0.03))
    pts = _points()
    eye = torch.eye(3, dtype=F64)
    sim, _, rms = fit_transform_to_map(lambda p: _apply(target, p), pts, eye, basis("similarity", dtype=F64),
                                       torch.zeros(4, dtype=F64))
    assert rms < 1e-6 and torch.allclose(sim, target, atol=1e-6)
    rigid, _, rms_rigid = fit_transform_to_map(lambda p: _apply(target, p), pts, eye, basis("rigid", dtype=F64),
                                               torch.zeros(3, dtype=F64))
    lin = rigid[:2, :2]
    assert torch.allclose(lin @ lin.T, torch.eye(2, dtype=F64), atol=1e-9)  # no scale in a rigid fit
    assert math.degrees(math.atan2(float(lin[1, 0]), float(lin[0, 0]))) == pytest.approx(7.0, abs=0.05)
    assert rms_rigid > 0.01  # the 8 % scale it cannot follow


def _pieces(split: float):
    """Points left of ``split`` shifted by +0.04, the others by -0.02 (frame units)."""

    def pieces(p: torch.Tensor) -> torch.Tensor:
        dx = torch.where(p[:, 0] < split, torch.tensor(0.04, dtype=F64), torch.tensor(-0.02, dtype=F64))
        return p + torch.stack([dx, torch.zeros_like(dx)], 1)

    return pieces


def test_least_squares_fit_of_two_pieces_moving_apart_is_their_mean_motion():
    """Without reweighting, the translation closest to two pieces' motions is their mean."""
    pts = _points(2000)
    m, _, _ = fit_transform_to_map(_pieces(0.0), pts, torch.eye(3, dtype=F64), basis("translation", dtype=F64),
                                   torch.zeros(2, dtype=F64), reweights=0)
    share_left = float((pts[:, 0] < 0).double().mean())
    assert float(m[0, 2]) == pytest.approx(0.04 * share_left - 0.02 * (1 - share_left), abs=1e-9)


def test_robust_fit_follows_the_tissue_that_agrees_not_a_piece_that_moved_on_its_own():
    """Three quarters of the tissue moved by +0.04, a quarter by -0.02: least squares lands between
    (+0.025), the default robust fit on the majority's motion; with two equal pieces it stays between."""
    pts = _points(2000)
    eye, trans, zero = torch.eye(3, dtype=F64), basis("translation", dtype=F64), torch.zeros(2, dtype=F64)
    plain, _, _ = fit_transform_to_map(_pieces(0.5), pts, eye, trans, zero, reweights=0)
    robust, _, rms = fit_transform_to_map(_pieces(0.5), pts, eye, trans, zero)
    assert float(plain[0, 2]) == pytest.approx(0.025, abs=0.003)
    assert float(robust[0, 2]) == pytest.approx(0.04, abs=1e-3) and abs(float(robust[1, 2])) < 1e-6
    assert rms == pytest.approx(0.06 * 0.25**0.5, rel=0.1)  # the rms is over every point, the piece included
    halves, _, _ = fit_transform_to_map(_pieces(0.0), pts, eye, trans, zero)
    assert -0.01 < float(halves[0, 2]) < 0.03  # no majority: no piece wins outright


def test_tissue_points_follow_the_mask_and_the_limit():
    mask = torch.zeros(200, 300)
    mask[50:150, 100:250] = 1
    to_frame = torch.eye(3, dtype=F64)
    pts = tissue_points(mask, (200, 300), to_frame, limit=1000)
    assert 500 <= len(pts) <= 1000
    assert float(pts[:, 0].min()) >= 100 and float(pts[:, 0].max()) < 250
    assert float(pts[:, 1].min()) >= 50 and float(pts[:, 1].max()) < 150
    everywhere = tissue_points(torch.zeros(200, 300), (200, 300), to_frame, limit=1000)  # no tissue: every pixel
    assert float(everywhere[:, 0].max()) > 250 and float(everywhere[:, 1].min()) < 50


def test_consensus_is_recorded_and_a_refused_fit_leaves_the_linear_result_unchanged(section_linear, monkeypatch):
    fixed, moving, plain = section_linear  # register(fixed, moving, consensus=False, **QUICK), shared
    quick = {k: v for k, v in QUICK.items() if k != "deformable_iterations"} | {"consensus_iterations": 80}
    assert "consensus" not in plain.init

    monkeypatch.setattr(_optimise, "CONSENSUS_MIN_MOVE_PX", 0.0)  # this small deformation moves < 1 px
    fitted = register(fixed, moving, **quick)
    record = fitted.init["consensus"]
    assert record["kept"] is True and record["reason"] is None
    assert record["iterations"] <= 80 and record["points"] > 1000
    assert record["kept_share"] >= _optimise.CONSENSUS_KEEP and 0 < record["moved_px"] < 2.0
    assert fitted.init["final_score"] == pytest.approx(record["score"])
    assert fitted.timings["consensus_s"] > 0
    h, w = fixed.shape[:2]  # both land on the same section, a fraction of a pixel apart
    grid = np.array([[x, y] for x in (0.25 * w, 0.75 * w) for y in (0.25 * h, 0.75 * h)])
    assert 0 < np.abs(fitted.map_points(grid) - plain.map_points(grid)).max() < 2.0

    monkeypatch.setattr(_optimise, "CONSENSUS_KEEP", 2.0)  # no fit keeps twice the gain
    refused = register(fixed, moving, **quick)
    assert refused.init["consensus"]["kept"] is False and "of the similarity gained" in refused.init["consensus"]["reason"]
    np.testing.assert_array_equal(refused.matrix, plain.matrix)

    monkeypatch.setattr(_optimise, "CONSENSUS_KEEP", 0.25)
    monkeypatch.setattr(_optimise, "CONSENSUS_MIN_MOVE_PX", 50.0)  # a change below the deformation's resolution
    still = register(fixed, moving, **quick)
    assert still.init["consensus"]["kept"] is False and "linear optimum stands" in still.init["consensus"]["reason"]
    np.testing.assert_array_equal(still.matrix, plain.matrix)


def test_only_tissue_mapped_inside_the_moving_image_counts(section_linear, monkeypatch):
    """Tissue that a shift sends past the moving image's edge has no evidence behind its
    displacement: it is left out of the fit, and the record says how much was."""
    from drmime_batch.core._consensus import inside_moving

    pts = _points(1000)
    shifted = inside_moving(lambda p: p + torch.tensor([0.5, 0.0], dtype=F64), pts, torch.eye(3, dtype=F64))
    assert bool(shifted[pts[:, 0] < 0.5].all()) and not bool(shifted[pts[:, 0] > 0.5].any())

    fixed, moving, _ = section_linear
    w = fixed.shape[1]
    quick = {k: v for k, v in QUICK.items() if k != "deformable_iterations"} | {"consensus_iterations": 80}
    monkeypatch.setattr(_optimise, "CONSENSUS_MIN_MOVE_PX", 0.0)
    whole = register(fixed, moving, **quick)
    assert whole.init["consensus"]["points_outside"] == 0
    cut = register(fixed, moving[:, w // 6:], **quick)  # the moving section's left sixth is not on its slide
    record = cut.init["consensus"]
    assert record["points_outside"] > 0.01 * (record["points"] + record["points_outside"])
    centre = np.array([[w / 2, fixed.shape[0] / 2]])
    assert cut.map_points(centre)[0, 0] == pytest.approx(whole.map_points(centre)[0, 0] - w // 6, abs=3.0)
