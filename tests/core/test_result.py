"""The result record and the configuration: JSON round trips, refusals of bad fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drmime_batch import RegistrationConfig, RegistrationResult, register


def _result(**overrides) -> RegistrationResult:
    fields = {
        "matrix": np.array([[1.0 / 3.0, 0.1, 12.345678901234567], [-0.1, 1.05, -7.0], [1e-7, -2e-7, 1.0]]),
        "transform": "homography",
        "metric": "mine",
        "parameters": [0.1, -0.2, 1.0 / 7.0],
        "level_scores": [0.5, 0.7],
        "loss_history": [0.1, 0.3, 0.6],
        "iterations": 321,
        "init": {"angle_deg": 150.0, "flip": True, "score": 0.8, "method": "search"},
        "timings": {"init_s": 0.5, "optimise_s": 4.25, "total_s": 4.75},
        "device": "cpu",
        "seed": 7,
        "config": RegistrationConfig(transform="homography", seed=7, max_size=512, extra={"note": "x"}).to_dict(),
        "versions": {"drmime_batch": "0.1", "torch": "2.x", "numpy": "2.x"},
        "fixed_shape": (661, 892, 3),
        "moving_shape": (660, 895),
    }
    return RegistrationResult(**(fields | overrides))


def test_json_round_trip_is_exact(tmp_path):
    res = _result()
    text = res.to_json(tmp_path / "r.json")
    back = RegistrationResult.from_json(text)
    assert back == res
    assert np.array_equal(back.matrix, res.matrix) and back.matrix.dtype == np.float64  # bit for bit
    assert back.config == res.config and RegistrationConfig.from_dict(back.config) == RegistrationConfig.from_dict(res.config)
    assert back.fixed_shape == (661, 892, 3) and back.init["flip"] is True
    assert RegistrationResult.from_json((tmp_path / "r.json").read_text()) == res
    data = json.loads(text)
    assert data["matrix"] == res.matrix.tolist() and "fixed->moving" in data["convention"]
    assert res != _result(seed=8) and res != _result(matrix=np.eye(3))
    assert back.final_mi == pytest.approx(0.6)
    assert np.isnan(_result(level_scores=[]).final_mi)


def _quick_result(**options) -> RegistrationResult:
    yy, xx = np.mgrid[:48, :48]
    fixed = np.exp(-((xx - 22.0) ** 2 + (yy - 25.0) ** 2) / 60.0)
    moving = np.exp(-((xx - 24.0) ** 2 + (yy - 24.0) ** 2) / 60.0)
    return register(fixed, moving, transform="translation", metric="ncc", max_iterations=30, min_iterations=10,
                    device="cpu", seed=4, **options)


def test_result_of_a_real_registration_round_trips():
    res = _quick_result()
    text = res.to_json()
    back = RegistrationResult.from_json(text)
    assert back == res and np.array_equal(back.matrix, res.matrix)
    assert back.config["seed"] == 4 and back.config["metric"] == "ncc" and back.seed == 4
    assert tuple(back.fixed_shape) == (48, 48) and back.init["method"] == "search"
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON record"))  # strict JSON


def test_result_without_init_search_round_trips():
    res = _quick_result(init="none")
    text = res.to_json()
    assert "NaN" not in text
    assert RegistrationResult.from_json(text) == res


def test_result_refuses_a_matrix_that_is_not_3x3_and_is_immutable():
    with pytest.raises(ValueError, match="3x3"):
        _result(matrix=np.eye(2))
    res = _result()
    with pytest.raises(ValueError):
        res.matrix[0, 0] = 2.0  # read-only array
    with pytest.raises(AttributeError):
        res.seed = 3  # frozen


def test_config_round_trip_and_refusals():
    cfg = RegistrationConfig(transform="rigid", metric="ncc", seed=3, points=500, threads=2, extra={"a": 1})
    assert RegistrationConfig.from_dict(cfg.to_dict()) == cfg
    assert RegistrationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(TypeError, match="no_such_knob"):
        RegistrationConfig.from_dict({"no_such_knob": 1, "seed": 2})
    with pytest.raises(TypeError, match="no_such_knob"):
        register(np.zeros((16, 16)), np.zeros((16, 16)), no_such_knob=1)
    for bad in ({"transform": "spline"}, {"metric": "ssd"}, {"init": "random"}, {"sampling": "grid"}, {"points": 0},
                {"max_size": -5}, {"lr_transform": "abc"}, {"points": 2.5}, {"symmetric": "yes"}, {"threads": "x"},
                {"mask": "everything"}):
        (key, value), = bad.items()
        with pytest.raises(ValueError, match=repr(value) if isinstance(value, str) else key):
            RegistrationConfig(**bad)
