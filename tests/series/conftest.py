"""Fixtures of the series tests (helpers in ``_series_support``)."""

from __future__ import annotations

import pytest
from _series_support import make_series


@pytest.fixture()
def series(tmp_path):
    """``(queue, plan, tmp_path)`` of a series of four slides whose links are all pending."""
    queue, plan = make_series(tmp_path)
    yield queue, plan, tmp_path
    queue.close()
