"""The series stack writer: a few whole planes per dask computation, same pixels, atomic."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from dask.callbacks import Callback
from PIL import Image

from drmime_batch.errors import InputImageError
from drmime_batch.io import open_image, warp
from drmime_batch.series import _stack
from drmime_batch.series._stack import write_stack

_STORE = _stack._store


def _shift(x: float, y: float) -> np.ndarray:
    return np.array([[1.0, 0.0, x], [0.0, 1.0, y], [0.0, 0.0, 1.0]])


def _slides(tmp_path, n, shape, *, unplaced=(), channels=3):
    rng = np.random.default_rng(n)
    out = []
    for z in range(n):
        path = tmp_path / f"z{z}.png"
        size = shape + ((channels,) if channels > 1 else ())
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(path)
        matrix = None if z in unplaced else _shift(1.5 * z, -0.75 * z) @ np.diag([1.01, 0.99, 1.0])
        out.append((f"z{z}", str(path), matrix))
    return out


def _halve(level: np.ndarray) -> np.ndarray:
    h, w = level.shape[-2:]
    even = level[..., : h - h % 2, : w - w % 2].astype(np.float32)
    means = even.reshape(*even.shape[:-2], h // 2, 2, w // 2, 2).mean(axis=(-3, -1))
    return means.astype(level.dtype)


def test_each_plane_is_the_slides_own_warp_and_each_level_the_mean_of_the_one_above(tmp_path):
    slides = _slides(tmp_path, 4, (1100, 900), unplaced={2})  # 6 chunks a plane, 4 levels
    ref = slides[0][1]
    shapes = write_stack(tmp_path / "stack", slides, reference_path=ref, attributes={"series_id": "S"})
    group = zarr.open_group(str(tmp_path / "stack"), mode="r")
    assert shapes == [(4, 3, 1100, 900), (4, 3, 550, 450), (4, 3, 275, 225), (4, 3, 137, 112)]
    assert [tuple(group[str(i)].shape) for i in range(4)] == shapes
    assert group["0"].chunks == (1, 3, 512, 512) and group["3"].chunks == (1, 3, 137, 112)
    assert group.attrs["drmime_series"] == {"slides": ["z0", "z1", "z2", "z3"],
                                            "placed": [True, True, False, True], "series_id": "S"}
    level = np.asarray(group["0"])
    for z, (_, path, matrix) in enumerate(slides):
        if matrix is None:
            assert not level[z].any()  # an unplaced slide's plane is the fill value
            continue
        own = np.asarray(warp(open_image(path), matrix, like=open_image(ref)).compute())
        np.testing.assert_array_equal(level[z], own.transpose(2, 0, 1))
    for i in range(1, 4):
        level = _halve(level)
        np.testing.assert_array_equal(np.asarray(group[str(i)]), level)


def _record(monkeypatch):
    """Planes (z) stored by each ``_store`` call, and the task count of each dask computation."""
    planes: list[set[int]] = []
    graphs: list[int] = []

    def counted(sources, targets, regions):
        planes.append({r[0].start for r in regions})
        _STORE(sources, targets, regions)

    class Graphs(Callback):
        def _start(self, dsk):
            graphs.append(len(dsk))

    monkeypatch.setattr(_stack, "_store", counted)
    return planes, graphs, Graphs()


def test_one_computation_stores_a_bounded_number_of_planes_whatever_the_series_length(tmp_path, monkeypatch):
    monkeypatch.setattr(_stack, "_CHUNKS_AT_ONCE", 2)  # 1 chunk a plane: 2 planes per computation
    largest = {}
    for n in (3, 8):
        folder = tmp_path / str(n)
        folder.mkdir()
        slides = _slides(folder, n, (40, 48), unplaced={1}, channels=1)
        planes, graphs, callback = _record(monkeypatch)
        with callback:
            write_stack(folder / "stack", slides, reference_path=slides[0][1])
        placed = [z for z in range(n) if z != 1]
        assert sorted(z for p in planes for z in p) == placed  # every placed plane once, the unplaced never
        assert max(len(p) for p in planes) == 2 and len(planes) == -(-len(placed) // 2)
        assert len(graphs) == len(planes)  # one dask computation per call
        largest[n] = max(graphs)
        stack = np.asarray(zarr.open_group(str(folder / "stack"), mode="r")["0"])
        for z, (_, path, matrix) in enumerate(slides):
            if matrix is not None:
                own = np.asarray(warp(open_image(path), matrix, like=open_image(slides[0][1])).compute())
                np.testing.assert_array_equal(stack[z, 0], own)
    assert largest[3] == largest[8]  # the largest graph is two planes', for 3 slides as for 8


def test_planes_per_computation_follow_the_plane_size():
    assert _stack._planes_per_compute(10_000, 10_000) == 1
    assert _stack._planes_per_compute(2000, 2000) == _stack._CHUNKS_AT_ONCE // 16
    assert _stack._planes_per_compute(64, 72) == _stack._CHUNKS_AT_ONCE


def test_a_write_that_fails_midway_leaves_the_previous_stack_whole(tmp_path, monkeypatch):
    slides = _slides(tmp_path, 4, (40, 48))
    write_stack(tmp_path / "stack", slides[:2], reference_path=slides[0][1])
    before = np.asarray(zarr.open_group(str(tmp_path / "stack"), mode="r")["0"])
    monkeypatch.setattr(_stack, "_CHUNKS_AT_ONCE", 1)
    calls = []

    def failing(sources, targets, regions):
        calls.append(regions)
        if len(calls) == 3:
            raise OSError("disk full")
        _STORE(sources, targets, regions)

    monkeypatch.setattr(_stack, "_store", failing)
    with pytest.raises(OSError, match="disk full"):
        write_stack(tmp_path / "stack", slides, reference_path=slides[0][1])
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".png")) == ["stack"]  # no staging left
    assert len(calls) == 3
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(tmp_path / "stack"), mode="r")["0"]), before)


def test_slides_of_different_channel_counts_fail_before_anything_is_written(tmp_path):
    (tmp_path / "gray").mkdir()
    gray = _slides(tmp_path / "gray", 1, (40, 48), channels=1)[0][1]
    slides = [*_slides(tmp_path, 2, (40, 48)), ("gray", gray, np.eye(3))]
    with pytest.raises(InputImageError, match=r"slide 'gray' .* has 1 channel\(s\), the series 3"):
        write_stack(tmp_path / "stack", slides, reference_path=slides[0][1])
    assert not (tmp_path / "stack").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(InputImageError, match="no slide of the series was placed"):
        write_stack(tmp_path / "stack", [(s, p, None) for s, p, _ in slides], reference_path=slides[0][1])
