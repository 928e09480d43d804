"""warp: against scipy and torch's grid_sample, seams, homography, nearest, distributed workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from drmime_batch.io import open_image, warp, warp_array
from drmime_batch.io._warp import _kernel_nb, resample_window

SWAP = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (x, y) <-> (row, col)


def rotation(theta: float, tx: float, ty: float, scale: float = 1.0) -> np.ndarray:
    c, s = np.cos(theta) * scale, np.sin(theta) * scale
    return np.array([[c, -s, tx], [s, c, ty], [0.0, 0.0, 1.0]])


def scipy_reference(image: np.ndarray, m: np.ndarray, out_shape: tuple[int, int], order: int = 1) -> np.ndarray:
    rc = SWAP @ m @ SWAP  # the same map in (row, col)
    planes = image[..., None] if image.ndim == 2 else image
    out = np.stack(
        [
            ndimage.affine_transform(planes[..., c].astype(np.float64), rc[:2, :2], rc[:2, 2], output_shape=out_shape,
                                     order=order, mode="grid-constant", cval=0.0)
            for c in range(planes.shape[2])
        ],
        axis=-1,
    )  # fmt: skip
    return out[..., 0] if image.ndim == 2 else out


def test_affine_matches_scipy_affine_transform(ome_tiff: Path, rgb_slide: np.ndarray) -> None:
    moving = open_image(ome_tiff)
    m = rotation(0.07, 12.3, -7.9, scale=1.03)
    got = warp(moving, m, like=moving, chunks=(64, 96)).compute()
    ref = scipy_reference(rgb_slide, m, rgb_slide.shape[:2])
    assert got.dtype == np.uint8 and got.shape == rgb_slide.shape
    assert np.abs(got.astype(float) - ref).max() <= 0.5 + 1e-6  # rounding only


def test_no_seams_chunking_invariant(ome_tiff: Path) -> None:
    moving = open_image(ome_tiff)
    m = rotation(-0.2, 30.0, 5.0)
    a = warp(moving, m, like=moving, chunks=37).compute()
    b = warp(moving, m, like=moving, chunks=(300, 420)).compute()  # one chunk: no borders at all
    np.testing.assert_array_equal(a, b)


def test_homography_matches_dense_map_coordinates(gray_slide: np.ndarray) -> None:
    img = gray_slide.astype(np.float32)
    h = np.array([[1.02, 0.03, 4.0], [-0.02, 0.98, 6.0], [2e-4, -1e-4, 1.0]])
    got = warp_array(img, h, img.shape, chunks=50).compute()
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]].astype(np.float64)
    hom = np.stack([xx, yy, np.ones_like(xx)], -1) @ h.T
    xs, ys = hom[..., 0] / hom[..., 2], hom[..., 1] / hom[..., 2]
    ref = ndimage.map_coordinates(img.astype(np.float64), [ys, xs], order=1, mode="grid-constant")
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_matches_torch_grid_sample(gray_slide: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    img = gray_slide.astype(np.float32)
    hgt, wid = img.shape
    m = rotation(0.05, -3.3, 2.2)
    got = warp_array(img, m, img.shape, chunks=64).compute()
    yy, xx = np.mgrid[0:hgt, 0:wid].astype(np.float64)
    xs = m[0, 0] * xx + m[0, 1] * yy + m[0, 2]
    ys = m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
    grid = np.stack([(2 * xs + 1) / wid - 1, (2 * ys + 1) / hgt - 1], -1)[None]
    ref = torch.nn.functional.grid_sample(
        torch.from_numpy(img)[None, None].double(), torch.from_numpy(grid), mode="bilinear", padding_mode="zeros", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_nearest_for_labels_keeps_values(gray_slide: np.ndarray) -> None:
    labels = (gray_slide // 64).astype(np.uint16)
    m = rotation(0.3, 10.0, -4.0)
    got = warp_array(labels, m, labels.shape, order=0, chunks=41).compute()
    assert set(np.unique(got)) <= set(np.unique(labels)) | {0}
    ref = scipy_reference(labels, m, labels.shape, order=0)
    assert (got != ref).mean() < 1e-3  # ties at exactly .5 may round differently


def test_numba_and_scipy_paths_agree(rgb_slide: np.ndarray) -> None:
    if _kernel_nb is None:
        pytest.skip("numba not installed: only the scipy path exists")
    m = rotation(0.11, 3.5, -20.25)
    for order in (0, 1):
        a = resample_window(rgb_slide, m, (200, 250), origin=(10, 20), order=order, use_numba=True)
        b = resample_window(rgb_slide, m, (200, 250), origin=(10, 20), order=order, use_numba=False)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_outside_is_zero_and_identity_is_exact(ome_tiff: Path, rgb_slide: np.ndarray) -> None:
    moving = open_image(ome_tiff)
    np.testing.assert_array_equal(warp(moving, np.eye(3), like=moving, chunks=128).compute(), rgb_slide)
    far = np.array([[1.0, 0, 10_000], [0, 1, 0], [0, 0, 1]])
    assert not warp(moving, far, like=moving).compute().any()


def test_warp_onto_other_grid_and_validation(ome_tiff: Path, tmp_path: Path) -> None:
    from drmime_batch.io import MultiscaleImage

    moving = open_image(ome_tiff)
    like = MultiscaleImage.from_array(np.zeros((50, 70), np.uint8))
    out = warp(moving, np.eye(3), like=like)
    assert out.shape == (50, 70, 3)
    with pytest.raises(ValueError, match="order must be 0"):
        warp(moving, np.eye(3), like=like, order=3)
    with pytest.raises(ValueError, match="3x3"):
        warp(moving, np.eye(4), like=like)
    with pytest.raises(ValueError, match="not stored in the file"):
        warp(like, np.eye(3), like=moving)


def test_reads_only_needed_windows(ome_tiff: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drmime_batch.io import _sources

    moving = open_image(ome_tiff)
    areas: list[int] = []
    real = _sources.TiffSource._read

    def counting(self: _sources.TiffSource, key: tuple[slice, ...]) -> np.ndarray:
        out = real(self, key)
        areas.append(out.shape[0] * out.shape[1])
        return out

    monkeypatch.setattr(_sources.TiffSource, "_read", counting)
    warp(moving, rotation(0.0, 2.0, 1.0), like=moving, chunks=100).compute()
    assert len(areas) == 3 * 5 and max(areas) < 110 * 110  # one small window per output chunk


@pytest.mark.cluster
def test_runs_on_distributed_process_workers(ome_tiff: Path, rgb_slide: np.ndarray) -> None:
    distributed = pytest.importorskip("distributed")
    m = rotation(0.05, 3.0, 2.0)
    moving = open_image(ome_tiff)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as client:
            got = client.compute(warp(moving, m, like=moving, chunks=128)).result()
    ref = scipy_reference(rgb_slide, m, rgb_slide.shape[:2])
    assert np.abs(got.astype(float) - ref).max() <= 0.5 + 1e-6


def test_compiled_block_displacement_is_on_grid_bit_for_bit() -> None:
    from drmime_batch.core._field import DisplacementField
    from drmime_batch.io._warp import _grid_disp_nb, _grid_disp_py

    rng = np.random.default_rng(7)
    forward = rng.normal(0, 3, (2, 9, 12))
    field = DisplacementField(forward, -forward, origin=(-5.0, 3.0), spacing=(37.5, 41.0))
    xs, ys = np.arange(-20, 480, dtype=np.float64), np.arange(10, 370, dtype=np.float64)  # past the grid too
    want = field.on_grid(xs, ys).transpose(1, 2, 0)
    rows, ix, fx = field.grid_rows(xs, ys)
    for kernel in (_grid_disp_py, _grid_disp_nb):
        if kernel is None:
            continue
        got = np.empty(want.shape)
        kernel(np.ascontiguousarray(rows), ix, fx, got)
        np.testing.assert_array_equal(got, want)
