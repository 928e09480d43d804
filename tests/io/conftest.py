"""Fixtures of the IO tests (helpers in ``_io_support``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _io_support import slide, write_pyramid_tiff


@pytest.fixture(scope="session")
def rgb_slide() -> np.ndarray:
    return slide(300, 420, 3)


@pytest.fixture(scope="session")
def gray_slide() -> np.ndarray:
    return slide(260, 300, None, seed=1)


@pytest.fixture(scope="session")
def ome_tiff(tmp_path_factory: pytest.TempPathFactory, rgb_slide: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("tiff") / "rgb.ome.tif"
    write_pyramid_tiff(path, rgb_slide, levels=3)
    return path
