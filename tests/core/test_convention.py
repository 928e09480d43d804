"""The coordinate convention: level <-> full-resolution matrices, physical units, point mapping."""

from __future__ import annotations

import numpy as np
import pytest

from drmime_batch.core import (
    apply_matrix,
    level_to_full_matrix,
    matrix_from_level,
    matrix_from_physical,
    matrix_to_level,
    matrix_to_physical,
    normalised_frame_matrix,
)
from drmime_batch.io import MultiscaleImage


def _random_matrix(seed: int, projective: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.eye(3)
    m[:2, :2] += 0.2 * rng.normal(size=(2, 2))
    m[:2, 2] = 30 * rng.normal(size=2)
    if projective:
        m[2, :2] = 1e-4 * rng.normal(size=2)
    return m


def test_level_pixel_edges_coincide_with_full_resolution_edges():
    for ds in (2.0, 4.0, (3.0, 2.5)):
        sx, sy = (ds, ds) if np.isscalar(ds) else ds
        lvl = level_to_full_matrix(ds)
        # the top-left edge of level pixel 0 is the top-left edge of full-resolution pixel 0
        assert np.allclose(apply_matrix(lvl, np.array([[-0.5, -0.5]])), [[-0.5, -0.5]])
        # the centre of level pixel (i, j) is the centre of the block it pools
        assert np.allclose(apply_matrix(lvl, np.array([[2.0, 1.0]])), [[sx * 2.5 - 0.5, sy * 1.5 - 0.5]])
    assert np.array_equal(level_to_full_matrix(1.0), np.eye(3))
    with pytest.raises(ValueError, match="downsample"):
        level_to_full_matrix((1.0, 2.0, 3.0))


@pytest.mark.parametrize("projective", [False, True])
def test_level_and_full_resolution_matrices_round_trip(projective):
    for seed, (fds, mds) in enumerate([(4.0, 4.0), ((2.0, 2.0), (8.0, 8.0)), ((3.98, 4.02), (1.0, 1.0))]):
        full = _random_matrix(seed, projective)
        level = matrix_to_level(full, fixed_downsample=fds, moving_downsample=mds)
        back = matrix_from_level(level, fixed_downsample=fds, moving_downsample=mds)
        assert np.allclose(back, full, rtol=1e-12, atol=1e-9)
        # and the two describe the same correspondence of points
        pts_full = np.array([[0.0, 0.0], [891.0, 0.0], [0.0, 660.0], [400.5, 300.25]])
        pts_level = apply_matrix(np.linalg.inv(level_to_full_matrix(fds)), pts_full)
        via_level = apply_matrix(level_to_full_matrix(mds), apply_matrix(level, pts_level))
        assert np.allclose(via_level, apply_matrix(full, pts_full), atol=1e-9)


def test_a_shift_found_on_a_level_is_scaled_to_full_resolution():
    shift = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])
    full = matrix_from_level(shift, fixed_downsample=4, moving_downsample=4)
    assert np.allclose(full, [[1, 0, 8.0], [0, 1, -12.0], [0, 0, 1]])
    # a level of the moving image at another resolution than the fixed one: identity becomes a scale
    full = matrix_from_level(np.eye(3), fixed_downsample=2, moving_downsample=4)
    assert np.allclose(full[:2, :2], 2.0 * np.eye(2)) and np.allclose(apply_matrix(full, [[-0.5, -0.5]]), [[-0.5, -0.5]])


def test_multiscale_downsamples_give_the_same_full_resolution_matrix():
    # an odd-sized image halved twice: downsamples are not exactly 2 and 4, and the convention uses
    # the actual ratios, as the batch task and the register command do
    img = MultiscaleImage.from_array(np.zeros((661, 893), np.uint8))
    level = img.level_for(max_size=256)
    sx, sy = img.downsamples[level]
    assert level == 2 and (sx, sy) != (4.0, 4.0) and max(img.levels[level].shape) <= 256
    assert np.allclose(img.level_matrix(level), level_to_full_matrix((sx, sy)))
    full = _random_matrix(3, False)
    at_level = matrix_to_level(full, fixed_downsample=(sx, sy), moving_downsample=(sx, sy))
    assert np.allclose(matrix_from_level(at_level, fixed_downsample=(sx, sy), moving_downsample=(sx, sy)), full)


def test_physical_units_round_trip():
    full = _random_matrix(5, True)
    um = matrix_to_physical(full, fixed_pixel_size=(0.5, 0.25), moving_pixel_size=2.0)
    assert np.allclose(matrix_from_physical(um, fixed_pixel_size=(0.5, 0.25), moving_pixel_size=2.0), full)
    # a fixed point at p pixels is at p * size micrometres, and maps to the moving point in micrometres
    p = np.array([[120.0, 80.0]])
    assert np.allclose(apply_matrix(um, p * [0.5, 0.25]), apply_matrix(full, p) * 2.0)


def test_apply_matrix_and_frame():
    h = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.01, 0.0, 1.0]])
    assert np.allclose(apply_matrix(h, np.array([[100.0, 50.0]])), [[50.0, 25.0]])  # projective divide
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        apply_matrix(np.eye(3), np.zeros((3, 3)))
    frame = normalised_frame_matrix((101, 201, 3), scale=100.0)
    assert np.allclose(apply_matrix(frame, np.array([[100.0, 50.0], [200.0, 50.0]])), [[0.0, 0.0], [1.0, 0.0]])
