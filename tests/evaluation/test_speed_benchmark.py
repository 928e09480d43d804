"""benchmarks/speed.py: the re-implemented seed stays runnable and finds a known shift; the summary's checks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("bench_speed", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_speed"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_speed", None)


def _shifted_pair(dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random RGB image (64 px) and the same scene seen ``(dx, dy)`` pixels further on."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    base = ndimage.gaussian_filter(rng.random((96, 96)), 2.5)
    base = 255 * (base - base.min()) / np.ptp(base)
    scene = np.stack([base, 255 - base, np.sqrt(base * 255)], axis=-1)  # three unlike channels
    fixed = scene[16:80, 16:80]
    moving = scene[16 + dy:80 + dy, 16 + dx:80 + dx]
    return fixed.astype(np.float32), moving.astype(np.float32)


def test_seed_moves_the_transform_towards_a_known_shift(speed) -> None:
    import torch

    torch.set_num_threads(1)
    fixed, moving = _shifted_pair(3, -2)
    # fixed pixel p shows the scene point that the moving image holds at p - (dx, dy)
    truth = np.array([-3.0, 2.0])
    res = speed.seed_register(fixed, moving, speed.SeedSettings(levels=3, iterations=300), seed=0)
    assert res.matrix.shape == (3, 3) and res.iterations == 300
    assert len(res.points) == 3 and all(n > 0 for n in res.points)
    before = np.linalg.norm(truth)
    after = np.linalg.norm(res.matrix[:2, 2] - truth)
    assert after < 0.4 * before, (res.matrix, after)
    np.testing.assert_allclose(res.matrix[:2, :2], np.eye(2), atol=0.06)


def test_seed_basis_and_exponential(speed) -> None:
    import torch

    transform = speed.SeedTransform(terms=10)
    with torch.no_grad():
        transform.vL[0, 0, 0] = 0.2  # x translation on every level
        transform.v1[1, 0, 0] = -0.1  # y translation on the finest level only
    np.testing.assert_allclose(transform(1).detach().numpy(), [[1, 0, 0.2], [0, 1, 0], [0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(transform(0).detach().numpy(), [[1, 0, 0.2], [0, 1, -0.1], [0, 0, 1]], atol=1e-6)


def _run(speed, pair_id: str, ours_s: float, seed_s: float, ours: float, floor: float):
    return speed.PairRun(
        pair_id=pair_id, ours_s=ours_s, seed_s=seed_s, seed_extrapolated=True, seed_points=[1], seed_iteration_s=0.1,
        ours_iterations=100, ours_timings={}, rtre={"ours": ours, "seed": None, "identity": 0.04, "floor": floor},
        ours_matrix=np.eye(3).tolist(), seed_matrix=None,
    )


def test_summary_checks_the_issue_targets(speed) -> None:
    runs = [_run(speed, "a", 10.0, 100.0, 0.0060, 0.0050), _run(speed, "b", 20.0, 100.0, 0.0070, 0.0060)]
    s = speed.summarise_runs(runs)
    assert s["ratio"]["median"] == pytest.approx(0.15) and s["ratio_max"] == pytest.approx(0.2)
    assert s["within_floor"] == [2, 2] and s["rtre_seed"]["n"] == 0
    assert list(s["checks"].values()) == [True, True, True]  # median rTRE 0.0065 <= 0.0066
    slow = speed.summarise_runs(runs + [_run(speed, "c", 40.0, 100.0, 0.0200, 0.0060)])
    assert list(slow["checks"].values()) == [False, False, False]


def test_bad_arguments_are_refused(speed) -> None:
    with pytest.raises(SystemExit):
        speed.parse_args(["--repeat", "0"])
