import dask
import pytest

# --doctest-modules would import every conftest.py again as a module named "conftest" (they have
# no package): the second one clashes with the first. They hold no doctests; pytest still loads
# them as conftests.
collect_ignore_glob = ["conftest.py", "*/conftest.py"]


@pytest.fixture(autouse=True)
def _no_dask_config_leak(request):
    before = dask.config.get("scheduler", None)
    yield
    after = dask.config.get("scheduler", None)
    assert after == before, f"{request.node.nodeid} leaked dask scheduler {after!r}"
