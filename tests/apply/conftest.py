"""Fixtures of the apply/export tests (helpers in ``_apply_support``)."""

from __future__ import annotations

import pytest
from _apply_support import Store, make_store


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A shared output store with known matrices; tests only read it (they write under tmp_path)."""
    return make_store(tmp_path_factory.mktemp("apply-store"))
