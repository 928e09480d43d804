"""``drmime-batch register`` end to end, as a subprocess, on two bundled lung-lesion-3 images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _batch_data import EXAMPLE, cli
from PIL import Image

from drmime_batch.core import RegistrationResult
from drmime_batch.evaluation import best_fit_matrix, evaluate_matrix, read_landmarks

# pairs.csv, data row 6 (ANHIR columns: Target = fixed, Source = moving)
FIXED = EXAMPLE / "images" / "29-041-Izd2-w35-Cc10-5-les3.jpg"
MOVING = EXAMPLE / "images" / "29-041-Izd2-w35-proSPC-4-les3.jpg"
FIXED_LM = EXAMPLE / "landmarks-5pc-user-PS" / "29-041-Izd2-w35-Cc10-5-les3.csv"
MOVING_LM = EXAMPLE / "landmarks-5pc-user-PS" / "29-041-Izd2-w35-proSPC-4-les3.csv"
#: a quick registration: the 223x165 level of the 892x661 images, 100 iterations, one thread
QUICK = ["--max-size", "256", "--max-iterations", "100", "--seed", "3", "--device", "cpu", "--option", "threads=1"]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("drmime-batch register: error: "), stderr
    return lines[0]


@pytest.mark.slow
def test_register_writes_a_full_resolution_record(tmp_path):
    out = tmp_path / "results" / "pair.json"  # the folder does not exist yet
    proc = cli("register", FIXED, MOVING, *QUICK, "--out", out, timeout=120)
    assert "final MI" in proc.stdout and "nats" in proc.stdout
    assert "level 2 (223x165 of 892x661)" in proc.stdout  # registered on the level <= 256 px

    result = RegistrationResult.from_json(out.read_text())
    m = np.asarray(result.matrix)
    assert m.shape == (3, 3) and m[2, 2] == 1.0 and np.all(np.isfinite(m))
    assert np.allclose(m[2, :2], 0.0)  # affine by default
    assert result.transform == "affine" and result.metric == "mine" and result.seed == 3
    assert result.config["max_size"] == 256 and result.final_mi > 0.1
    # the record describes the files at full resolution, not the level registered
    assert tuple(result.fixed_shape[:2]) == (661, 892)
    for row, line in zip(m, proc.stdout.split("matrix")[1].splitlines()[2:5], strict=True):
        assert f"{row[2]:.6f}" in line  # the printed matrix is the written one
    assert sorted(p.name for p in out.parent.iterdir()) == ["pair.json"]  # no temporary left over

    # the matrix really is at full resolution: the landmarks of the full-size files agree with it
    fixed_lm, moving_lm = read_landmarks(FIXED_LM), read_landmarks(MOVING_LM)
    shape = Image.open(FIXED).size[::-1]
    scores = evaluate_matrix(m, fixed_lm, moving_lm, fixed_shape=shape)
    floor = evaluate_matrix(best_fit_matrix(fixed_lm, moving_lm), fixed_lm, moving_lm, fixed_shape=shape)
    assert scores.rtre_median < scores.identity_rtre_median / 5, scores
    assert scores.rtre_median < 2 * floor.rtre_median, (scores, floor)


def test_register_missing_file_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "no-such-slide.tif"
    proc = cli("register", FIXED, missing, *QUICK, check=1)
    line = _one_error_line(proc.stderr)
    assert str(missing) in line and "moving" in line
    assert proc.stdout == ""


@pytest.mark.slow
def test_register_bad_images_are_one_line_naming_them(tmp_path):
    constant = tmp_path / "constant.png"
    Image.fromarray(np.full((120, 150, 3), 200, np.uint8)).save(constant)
    proc = cli("register", constant, MOVING, *QUICK, check=1)
    line = _one_error_line(proc.stderr)
    assert str(constant) in line and "constant" in line

    truncated = tmp_path / "truncated.jpg"
    data = FIXED.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    proc = cli("register", FIXED, truncated, *QUICK, check=1)
    line = _one_error_line(proc.stderr)
    assert str(truncated) in line and "truncated" in line

    out = tmp_path / "never.json"
    proc = cli("register", FIXED, MOVING, "--transform", "spline", "--out", out, check=1)
    assert "spline" in _one_error_line(proc.stderr)
    assert not out.exists()


@pytest.mark.slow
def test_register_reads_and_writes_s3(tmp_path):
    from _s3_support import moto_s3

    with moto_s3() as s3:
        fixed, moving = s3.upload(FIXED, "slides/fixed.jpg"), s3.upload(MOVING, "slides/moving.jpg")
        out = s3.url("results/pair.json")
        proc = cli("register", fixed, moving, *QUICK, "--max-iterations", "20", "--out", out, env=s3.env,
                   timeout=120)
        assert "final MI" in proc.stdout
        result = RegistrationResult.from_json(s3.fs.cat_file(f"{s3.bucket}/results/pair.json").decode())
        assert np.asarray(result.matrix).shape == (3, 3) and tuple(result.fixed_shape[:2]) == (661, 892)
        assert s3.keys("results") == ["results/pair.json"]  # one object, written whole

        missing = s3.url("slides/no-such.jpg")
        proc = cli("register", fixed, missing, *QUICK, env=s3.env, check=1)
        assert missing in _one_error_line(proc.stderr)


def _half_resolution_mask(path, image):
    """A 0/255 PNG at half the image's resolution: tissue over the central 80 % x 80 %."""
    w, h = Image.open(image).size
    m = np.zeros((h // 2, w // 2), np.uint8)
    m[h // 20:h // 2 - h // 20, w // 20:w // 2 - w // 20] = 255
    Image.fromarray(m).save(path)
    return path


@pytest.mark.slow
def test_register_with_a_fixed_mask(tmp_path):
    mask = _half_resolution_mask(tmp_path / "fixed-mask.png", FIXED)
    out = tmp_path / "pair.json"
    proc = cli("register", FIXED, MOVING, *QUICK, "--max-iterations", "60", "--option", "min_iterations=20",
               "--fixed-mask", mask, "--out", out, timeout=120)
    assert f"fixed mask {mask}:" in proc.stdout and "% tissue" in proc.stdout
    record = RegistrationResult.from_json(out.read_text())
    assert record.masks["fixed"]["source"] == "user" and record.masks["moving"]["source"] == "auto"
    assert np.all(np.isfinite(np.asarray(record.matrix)))
    assert json.loads(out.read_text())["fixed_mask"] == str(mask)


@pytest.mark.slow
def test_register_mask_problems_are_one_line_naming_the_mask(tmp_path):
    missing = tmp_path / "no-such-mask.png"
    proc = cli("register", FIXED, MOVING, *QUICK, "--moving-mask", missing, check=1)
    line = _one_error_line(proc.stderr)
    assert str(missing) in line and "moving mask" in line
    assert proc.stdout == ""

    square = tmp_path / "square.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(square)
    proc = cli("register", FIXED, MOVING, *QUICK, "--fixed-mask", square, check=1)
    line = _one_error_line(proc.stderr)
    assert str(square) in line and "aspect ratio" in line


def test_register_and_a_batch_worker_give_the_same_matrix(tmp_path):
    """One function registers two files for both: the command's record equals the worker's outcome."""
    from drmime_batch.engine import PairTask
    from drmime_batch.engine._task import register_pair

    out = tmp_path / "pair.json"
    # 30 iterations, not QUICK's 100: the same calls in the same order give the same bits after any number
    cli("register", FIXED, MOVING, *QUICK, "--max-iterations", "30", "--out", out, timeout=120)
    record = json.loads(out.read_text())
    assert record["config"]["max_iterations"] == 30
    task = PairTask(pair_id="p", fixed=str(FIXED), moving=str(MOVING), out=str(tmp_path / "out.zarr"),
                    options={"max_size": 256, "max_iterations": 30, "seed": 3, "device": "cpu", "threads": 1})
    outcome = register_pair(task)
    assert outcome.ok, outcome.error
    assert np.allclose(outcome.matrix, record["matrix"], atol=1e-9)  # deterministic on the CPU
    assert (outcome.fixed.level, outcome.moving.level) == (record["fixed_level"], record["moving_level"]) == (2, 2)


def test_a_user_mistake_is_one_line_and_its_traceback_comes_with_verbose(tmp_path):
    missing = tmp_path / "no-such-slide.tif"
    quiet = cli("register", FIXED, missing, *QUICK, check=1)
    assert _one_error_line(quiet.stderr) == (
        f"drmime-batch register: error: moving image {missing}: no such file or directory")
    loud = cli("-v", "register", FIXED, missing, *QUICK, check=1)
    assert "Traceback (most recent call last)" in loud.stderr and "ImageNotFoundError" in loud.stderr
    assert loud.stderr.rstrip().splitlines()[-1] == _one_error_line(quiet.stderr)


def test_an_invalid_option_is_refused_before_anything_is_read(tmp_path):
    proc = cli("register", tmp_path / "never-opened.tif", MOVING, "--option", "lr_transform=abc", check=1)
    line = _one_error_line(proc.stderr)
    assert "lr_transform must be a number, got 'abc'" in line and "never-opened" not in line
