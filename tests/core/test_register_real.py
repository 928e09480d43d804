"""Real serial sections: two CIMA lung-lesion-3 pairs registered with the default options.

``pairs.csv`` is an ANHIR cover table: *Target* is the fixed image, *Source* the moving one, and
the landmark files pair up line by line. A registration must beat the identity by far and come
within a factor 2 of the best affine fit of the landmarks (the floor of any affine registration:
the landmarks' own noise and the tissue's non-rigid deformation).
"""

from __future__ import annotations

import pytest
from _core_data import lung_pair

from drmime_batch import register
from drmime_batch.evaluation import best_fit_matrix, evaluate_matrix

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("row", "fixed_name", "moving_name"),
    [
        (6, "29-041-Izd2-w35-Cc10-5-les3.jpg", "29-041-Izd2-w35-proSPC-4-les3.jpg"),
        (9, "29-041-Izd2-w35-Ki67-7-les3.jpg", "29-041-Izd2-w35-proSPC-4-les3.jpg"),
    ],
)
def test_lung_lesion_pair_with_default_options(row, fixed_name, moving_name):
    pair = lung_pair(row)
    assert (pair["fixed_name"], pair["moving_name"]) == (fixed_name, moving_name)
    fixed, moving = pair["fixed"], pair["moving"]
    fixed_lm, moving_lm = pair["fixed_landmarks"], pair["moving_landmarks"]

    result = register(fixed, moving, device="cpu")  # every other option at its default

    scores = evaluate_matrix(result.matrix, fixed_lm, moving_lm, fixed_shape=fixed.shape)
    floor = evaluate_matrix(best_fit_matrix(fixed_lm, moving_lm), fixed_lm, moving_lm, fixed_shape=fixed.shape)
    print(
        f"row {row}: rTRE median {scores.rtre_median:.5f} (identity {scores.identity_rtre_median:.4f}, "
        f"affine floor {floor.rtre_median:.5f}), robustness {scores.robustness:.2f}, "
        f"{result.iterations} iterations, {result.timings['total_s']:.1f} s"
    )
    assert scores.rtre_median < scores.identity_rtre_median / 4, scores
    assert scores.rtre_median < 2 * floor.rtre_median, (scores, floor)
    assert scores.robustness > 0.8, scores  # most landmarks are closer than before
