"""The core tests run torch on one thread: small problems gain nothing from more, and two threads
on a busy two-core machine spin against each other (many times slower)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="package")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
