"""A batch worker's task with tissue masks, called in-process on a small real pair (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _batch_data import SHIFT, make_pairs
from PIL import Image

from drmime_batch.engine import PairTask
from drmime_batch.engine._task import register_pair

#: quick, single-threaded CPU registration of the ~160x180 pair (level 0 at max_size 256)
OPTIONS = {"transform": "translation", "max_size": 256, "max_iterations": 60, "min_iterations": 20,
           "init": "moments", "device": "cpu", "threads": 1, "seed": 3}


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pair")
    make_pairs(folder, n_good=1)
    return folder / "fixed.png", folder / "moving0.png"


def _mask(path: Path, shape: tuple[int, int], box: tuple[float, float, float, float] = (0.1, 0.9, 0.1, 0.9)) -> Path:
    """A 0/255 PNG of ``shape`` (H, W): ones over the fractional box (y0, y1, x0, x1)."""
    h, w = shape
    m = np.zeros(shape, np.uint8)
    m[int(box[0] * h):int(box[1] * h), int(box[2] * w):int(box[3] * w)] = 255
    Image.fromarray(m).save(path)
    return path


def _task(tmp_path: Path, pair: tuple[Path, Path], **masks: object) -> PairTask:
    fixed, moving = pair
    return PairTask(pair_id="p", fixed=str(fixed), moving=str(moving), out=str(tmp_path / "out.zarr"),
                    options=OPTIONS, **masks)  # type: ignore[arg-type]


def test_register_pair_with_a_lower_resolution_user_mask(tmp_path, pair):
    h, w = Image.open(pair[0]).size[::-1]
    mask = _mask(tmp_path / "fixed-mask.png", (h // 2, w // 2))  # half resolution, same aspect ratio
    summary = register_pair(_task(tmp_path, pair, fixed_mask=str(mask))).to_dict()
    assert summary["ok"], summary.get("error")
    masks = summary["masks"]
    assert masks["fixed"]["source"] == "user" and masks["fixed"]["file"] == str(mask)
    assert 0.5 < masks["fixed"]["fraction"] < 0.75  # the 80 % x 80 % box
    assert masks["moving"]["source"] == "auto" and "file" not in masks["moving"]
    json.dumps(summary)  # JSON-ready, as the queue stores it
    matrix = np.asarray(summary["matrix"])
    assert np.allclose(matrix[:2, 2], SHIFT, atol=2.0), matrix  # still the right answer


def test_register_pair_with_masks_at_a_higher_resolution(tmp_path, pair):
    h, w = Image.open(pair[0]).size[::-1]
    fixed_mask = _mask(tmp_path / "f.png", (4 * h, 4 * w))  # read at its level closest to the image's
    moving_mask = _mask(tmp_path / "m.png", (2 * h, 2 * w), box=(0.0, 1.0, 0.0, 1.0))
    summary = register_pair(_task(tmp_path, pair, fixed_mask=str(fixed_mask), moving_mask=str(moving_mask))).to_dict()
    assert summary["ok"], summary.get("error")
    assert summary["masks"]["fixed"]["source"] == summary["masks"]["moving"]["source"] == "user"
    assert summary["masks"]["moving"]["fraction"] == 1.0


def _truncated(folder: Path, shape: tuple[int, int]) -> Path:
    path = folder / "truncated.png"
    path.write_bytes(_mask(folder / "whole.png", shape).read_bytes()[:60])  # a header, no pixels
    return path


@pytest.mark.parametrize(
    ("role", "make", "cause"),
    [
        ("moving", lambda d, shape: d / "no-such-mask.png", "ImageNotFoundError"),
        ("fixed", lambda d, shape: _mask(d / "square.png", (100, 100)), "aspect ratio"),
        ("fixed", lambda d, shape: _mask(d / "empty.png", shape, box=(0, 0, 0, 0)), "covers no pixel"),
        ("moving", _truncated, "CorruptImageError"),
    ],
    ids=["missing", "aspect-ratio", "empty", "truncated"],
)
def test_register_pair_mask_problems_fail_the_pair_naming_the_mask(tmp_path, pair, role, make, cause):
    h, w = Image.open(pair[0]).size[::-1]
    mask = make(tmp_path, (h, w))
    summary = register_pair(_task(tmp_path, pair, **{f"{role}_mask": str(mask)})).to_dict()
    assert summary["ok"] is False
    error = summary["error"]
    assert error.startswith(f"{role} mask {mask}: "), error
    assert cause in error and "\n" not in error
    assert not (tmp_path / "out.zarr" / "p").exists()  # nothing written for a failed pair


@pytest.mark.cluster
def test_driver_carries_the_masks_of_a_queue_to_the_worker(tmp_path, pair):
    """submit (manifest with mask columns) -> run on an in-process cluster -> masks in the queue."""
    import torch
    from distributed import Client

    from drmime_batch.engine import RunOptions, run_queue
    from drmime_batch.queue import Queue, read_manifest

    fixed, moving = pair
    h, w = Image.open(fixed).size[::-1]
    _mask(tmp_path / "fm.png", (h // 2, w // 2))
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(
        "pair_id,fixed,moving,fixed_mask,moving_mask\n"
        f"masked,{fixed},{moving},fm.png,\n"
        f"bad-mask,{fixed},{moving},,no-such-mask.png\n"
    )
    threads = torch.get_num_threads()
    try:
        with Queue.open(tmp_path / "q.sqlite", create=True) as q, \
                Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
            q.add(read_manifest(manifest), out=tmp_path / "out.zarr", options=OPTIONS)
            summary = run_queue(q, client, options=RunOptions(warp=False, max_in_flight=1))
            rows = {r.pair_id: r for r in q.rows()}
    finally:
        torch.set_num_threads(threads)  # the worker ran in this process
    assert summary.done == ("masked",) and summary.failed == ("bad-mask",)
    masked, bad = rows["masked"], rows["bad-mask"]
    assert masked.fixed_mask == str(tmp_path / "fm.png")
    fixed_record = masked.result["masks"]["fixed"]
    assert (fixed_record["source"], fixed_record["file"]) == ("user", str(tmp_path / "fm.png"))
    assert masked.result["masks"]["moving"]["source"] == "auto"
    assert bad.error.startswith(f"moving mask {tmp_path / 'no-such-mask.png'}: ImageNotFoundError"), bad.error


@pytest.mark.slow
def test_small_tissue_on_a_large_slide_is_read_from_a_finer_level(tmp_path):
    # A 256-px piece of tissue on a 1600-px slide of glass: the level that fits max_size 256
    # shows it at 32 px; the task reads the tissue's box from a finer level instead.
    from skimage import data

    tissue = data.immunohistochemistry()[128:384, 128:384]
    rng = np.random.default_rng(0)

    def slide(x0: int, y0: int, name: str) -> Path:
        canvas = rng.normal(236, 2.5, (1600, 1600, 1)).clip(0, 255).repeat(3, axis=2).astype(np.uint8)
        canvas[y0:y0 + 256, x0:x0 + 256] = tissue
        Image.fromarray(canvas).save(tmp_path / name)
        return tmp_path / name

    fixed, moving = slide(300, 500, "fixed.png"), slide(340, 475, "moving.png")
    options = OPTIONS | {"max_iterations": 150, "min_iterations": 60}
    task = PairTask(pair_id="small", fixed=str(fixed), moving=str(moving), out=str(tmp_path / "o.zarr"), options=options)
    summary = register_pair(task).to_dict()
    assert summary["ok"], summary.get("error")
    assert summary["fixed_level"] < 3 and summary["moving_level"] < 3  # finer than the 200-px overview
    y0, y1, x0, x1 = summary["fixed_crop"]
    scale = summary["fixed_downsample"][0]
    assert y0 * scale <= 500 and y1 * scale >= 756 and x0 * scale <= 300 and x1 * scale >= 556
    matrix = np.asarray(summary["matrix"])
    corners = np.array([[300.0, 500.0, 1.0], [556.0, 500.0, 1.0], [300.0, 756.0, 1.0], [556.0, 756.0, 1.0]])
    error = np.linalg.norm(corners @ matrix.T - (corners + [40.0, -25.0, 0.0]), axis=1)
    assert error.max() < 1.0, (error, matrix)  # full-resolution pixels, over the tissue's corners
