"""``register`` refuses unusable images up front, with a ValueError naming the image."""

from __future__ import annotations

import numpy as np
import pytest

from drmime_batch import register
from drmime_batch.errors import DrmimeError, InputImageError

GOOD = np.random.default_rng(0).random((32, 32))

BAD = {
    "empty": (np.zeros((0, 0)), "empty"),
    "empty rows": (np.zeros((0, 32, 3)), "empty"),
    "too small": (np.random.default_rng(1).random((5, 40)), "smaller than 8x8"),
    "all NaN": (np.full((32, 32), np.nan), "no finite values"),
    "all inf": (np.full((32, 32, 3), np.inf), "no finite values"),
    "constant": (np.full((32, 32), 7, np.uint8), "constant"),
    "constant RGB": (np.full((32, 32, 3), 0.25), "constant"),
    "4-D": (np.random.default_rng(2).random((4, 32, 32, 3)), "2-D"),
    "1-D": (np.arange(64.0), "2-D"),
    "too many channels": (np.random.default_rng(3).random((32, 32, 12)), "channels"),
    "strings": (np.full((32, 32), "a"), "numeric"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("role", ["fixed", "moving"])
def test_bad_image_is_refused_naming_it(case, role):
    bad, words = BAD[case]
    fixed, moving = (bad, GOOD) if role == "fixed" else (GOOD, bad)
    with pytest.raises(InputImageError, match=words) as info:
        register(fixed, moving, max_iterations=5, device="cpu")
    assert isinstance(info.value, ValueError) and isinstance(info.value, DrmimeError)
    message = str(info.value)
    assert message.startswith(f"{role} image"), message
    other = "moving" if role == "fixed" else "fixed"
    assert other not in message and "\n" not in message


def test_some_nan_pixels_are_background_with_a_warning():
    yy, xx = np.mgrid[:40, :40]
    fixed = np.exp(-((xx - 18.0) ** 2 + (yy - 21.0) ** 2) / 60.0)
    moving = np.exp(-((xx - 20.0) ** 2 + (yy - 20.0) ** 2) / 60.0)
    moving[:3, :] = np.nan  # e.g. a masked strip
    with pytest.warns(UserWarning, match="moving image has 120 non-finite values"):
        res = register(fixed, moving, transform="translation", metric="ncc", max_iterations=20, min_iterations=10,
                       device="cpu")
    assert np.all(np.isfinite(res.matrix))


def test_bool_and_integer_images_are_accepted():
    rng = np.random.default_rng(4)
    mask = rng.random((40, 40)) > 0.5
    res = register(mask, mask.astype(np.uint16) * 1000, transform="translation", metric="ncc", init="none",
                   max_iterations=10, min_iterations=5, device="cpu")
    assert res.fixed_shape == (40, 40) and np.all(np.isfinite(res.matrix))
