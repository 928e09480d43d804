"""Landmark evaluation: ANHIR landmark files, TRE / rTRE / NAED / robustness, the affine floor, reports.

Everything here is plain numpy on small arrays and knows nothing of the engine.

Examples
--------
>>> import numpy as np
>>> from drmime_batch.evaluation import best_fit_matrix, evaluate_matrix
>>> f = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 40.0], [30.0, 40.0]])
>>> m = f * 1.1 + [2.0, -1.0]
>>> s = evaluate_matrix(best_fit_matrix(f, m), f, m, fixed_shape=(40, 30))
>>> round(s.rtre_max, 12), s.n_points
(0.0, 4)
"""

from __future__ import annotations

from drmime_batch.evaluation._batch import SUMMARY_KEYS, evaluate_rows, image_shape, summarise_rows
from drmime_batch.evaluation._fit import best_fit_matrix
from drmime_batch.evaluation._landmarks import pair_landmarks, read_landmarks, write_landmarks
from drmime_batch.evaluation._machine import machine_info, machine_summary
from drmime_batch.evaluation._report import write_html_report
from drmime_batch.evaluation._scores import (
    LandmarkScores,
    evaluate_matrix,
    image_diagonal,
    landmark_errors,
    summarise,
)

__all__ = [
    "SUMMARY_KEYS",
    "LandmarkScores",
    "best_fit_matrix",
    "evaluate_matrix",
    "evaluate_rows",
    "image_diagonal",
    "image_shape",
    "landmark_errors",
    "machine_info",
    "machine_summary",
    "pair_landmarks",
    "read_landmarks",
    "summarise",
    "summarise_rows",
    "write_html_report",
    "write_landmarks",
]
