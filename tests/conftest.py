import dask
import pytest


@pytest.fixture(autouse=True)
def _no_dask_config_leak(request):
    before = dask.config.get("scheduler", None)
    yield
    after = dask.config.get("scheduler", None)
    assert after == before, f"{request.node.nodeid} leaked dask scheduler {after!r}"
