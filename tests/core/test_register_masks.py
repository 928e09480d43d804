"""Tissue masks in ``register``: user masks, the automatic mask, the crop to the tissue, bad masks."""

from __future__ import annotations

import numpy as np
import pytest
from _core_data import AFFINE, QUICK, SIZE, corner_error, ihc_source, view_pair, warp_to_moving

from drmime_batch import RegistrationResult, register
from drmime_batch.errors import InputImageError


def _on_canvas(view: np.ndarray, size: int, x0: int, y0: int) -> np.ndarray:
    """``view`` placed at column ``x0``, row ``y0`` of a ``size`` x ``size`` slide of bright glass."""
    glass = np.random.default_rng(x0).normal(0.93, 0.01, (size, size, 1))
    canvas = np.repeat(glass, view.shape[2], axis=2).clip(0, 1)
    canvas[y0 : y0 + view.shape[0], x0 : x0 + view.shape[1]] = view
    return canvas


def _shift(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def small_tissue():
    """A 160-px piece of tissue on a 640-px slide, and the slide moved by AFFINE and a long shift."""
    fixed_view, _ = view_pair(ihc_source(), AFFINE, SIZE)
    fixed = _on_canvas(fixed_view, 640, 100, 150)
    truth = _shift(380, 300) @ AFFINE @ _shift(-100, -150)
    moving = warp_to_moving(fixed, truth, cval=0.93)
    return fixed, moving, truth


def _tissue_error(matrix: np.ndarray, truth: np.ndarray) -> float:
    """Corner error over the fixed tissue square (pixels of the full slide)."""
    to_square = _shift(100, 150)
    return corner_error(matrix @ to_square, truth @ to_square, (SIZE, SIZE))


@pytest.mark.slow
def test_small_tissue_is_cropped_and_registered_at_full_resolution(small_tissue):
    fixed, moving, truth = small_tissue
    # max_size 256 would shrink each slide 2.5x; cropped to the tissue, nothing is shrunk
    result = register(fixed, moving, max_size=256, **QUICK)
    y0, y1, x0, x1 = result.masks["fixed"]["crop"]
    assert y0 <= 150 and y1 >= 310 and x0 <= 100 and x1 >= 260 and (y1 - y0) * (x1 - x0) < 0.25 * 640**2
    assert result.masks["moving"]["crop"] is not None
    assert 0.04 < result.masks["fixed"]["fraction"] < 0.09  # 160**2 / 640**2 = 0.0625
    assert _tissue_error(result.matrix, truth) < 1.0
    back = RegistrationResult.from_json(result.to_json())
    assert back.masks == result.masks


@pytest.mark.slow
def test_user_masks_at_a_lower_resolution_are_used(small_tissue):
    fixed, moving, truth = small_tissue
    fixed_mask = np.zeros((160, 160), np.uint8)  # a quarter of the slide's resolution
    fixed_mask[37:78, 25:65] = 255
    moving_mask = np.zeros((320, 320), bool)
    moving_mask[150:230, 190:270] = True
    result = register(fixed, moving, max_size=256, fixed_mask=fixed_mask, moving_mask=moving_mask, **QUICK)
    assert result.masks["fixed"]["source"] == result.masks["moving"]["source"] == "user"
    assert _tissue_error(result.matrix, truth) < 1.0


@pytest.mark.slow
def test_no_tissue_found_falls_back_to_the_whole_image():
    rng = np.random.default_rng(0)
    texture = rng.random((96, 96))  # tissue everywhere: no background to tell it from
    result = register(texture, np.roll(texture, 3, axis=1), transform="translation", max_iterations=60, device="cpu")
    record = result.masks["fixed"]
    assert record["source"] == "auto" and "whole image" in record["fallback"] and record["crop"] is None


@pytest.mark.parametrize(
    ("mask", "words"),
    [
        (np.ones((40, 90)), "aspect ratio"),
        (np.zeros((64, 64)), "covers no pixel"),
        (np.ones((2, 3, 4, 5)), "2-D"),
    ],
)
@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_bad_masks_are_refused_naming_them(mask, words, role):
    image = np.random.default_rng(1).random((64, 64))
    with pytest.raises(InputImageError, match=words) as info:
        register(image, image, max_iterations=5, device="cpu", **{f"{role}_mask": mask})
    assert str(info.value).startswith(f"{role} mask") and "\n" not in str(info.value)


@pytest.mark.slow
def test_marker_pen_strokes_are_painted_over(small_tissue):
    fixed, moving, truth = small_tissue
    inked = moving.copy()
    for row in (210, 260, 330, 400):  # blue and black strokes across tissue and glass
        inked[row : row + 7, :] = (0.16, 0.27, 0.67) if row % 20 else (0.1, 0.1, 0.18)
    inked[150:520, 470:476] = (0.16, 0.27, 0.67)
    result = register(fixed, inked, max_size=256, **QUICK)
    assert result.masks["moving"]["ink_fraction"] > 0.04 and result.masks["fixed"]["ink_fraction"] == 0.0
    assert _tissue_error(result.matrix, truth) < 1.0
