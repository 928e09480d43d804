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


@pytest.fixture(scope="package")
def section_linear():
    """A ~220 px lung-lesion section, the same section under a known smooth deformation (4 px at
    most, ``test_deformable._deformed``) and the linear registration of the two (``QUICK``, no
    consensus stage).

    One registration for the deformable tests (the linear stage the deformable one starts from)
    and the consensus test (the result a refused fit leaves unchanged): the same call, made once.
    """
    from test_deformable import QUICK, _deformed, _section

    from drmime_batch import register

    fixed = _section()
    moving = _deformed(fixed, amplitude=4.0)
    return fixed, moving, register(fixed, moving, consensus=False, **QUICK)
