"""The deformable stage: a known smooth deformation of a real section recovered, inverse, folds, fallback,
storage and the chunked warp."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from drmime_batch import register
from drmime_batch.core._deformable import VelocityField, jacobian_stats
from drmime_batch.core._field import DisplacementField, map_points

HE = files("drmime_batch") / "examples/cima-lung-lesion3/images/29-041-Izd2-w35-He-les3.jpg"
#: quick single-threaded runs on a ~220 px section
QUICK = {"max_iterations": 250, "min_iterations": 60, "init": "none", "device": "cpu", "threads": 1, "seed": 1,
         "deformable_iterations": 300}


def _section() -> np.ndarray:
    img = Image.open(HE).convert("RGB")
    return np.asarray(img.resize((img.width // 4, img.height // 4), Image.LANCZOS), dtype=np.float64)


def _bump(xy: np.ndarray, shape: tuple[int, int], amplitude: float) -> np.ndarray:
    """A smooth displacement (pixels) vanishing at the image border."""
    h, w = shape
    sx = np.sin(np.pi * xy[:, 0] / (w - 1))
    sy = np.sin(np.pi * xy[:, 1] / (h - 1))
    return amplitude * np.stack([sx * sy * np.cos(np.pi * xy[:, 1] / (h - 1)), 0.7 * sx * sy], 1)


def _deformed(image: np.ndarray, amplitude: float) -> np.ndarray:
    """``moving`` with ``moving(p + d(p)) = fixed(p)``: sampled at the inverse map, by fixed-point iteration."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    q = np.c_[xx.ravel(), yy.ravel()].astype(np.float64)
    r = q.copy()
    for _ in range(20):
        r = q - _bump(r, (h, w), amplitude)
    return np.stack([ndimage.map_coordinates(image[..., c], [r[:, 1], r[:, 0]], order=3, mode="nearest").reshape(h, w)
                     for c in range(image.shape[2])], -1)


@pytest.fixture(scope="module")
def recovered(section_linear):
    fixed, moving, linear = section_linear  # linear: the stage the deformable one starts from
    deformable = register(fixed, moving, deformable=True, **QUICK)
    return fixed, linear, deformable


def _tissue_points(shape: tuple[int, int], margin: int = 12) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[margin:h - margin:4, margin:w - margin:4]
    return np.c_[xx.ravel(), yy.ravel()].astype(np.float64)


@pytest.mark.slow
def test_a_known_smooth_deformation_is_recovered_below_a_pixel(recovered):
    fixed, linear, deformable = recovered
    assert deformable.field is not None and deformable.deformation["kept"], deformable.deformation
    pts = _tissue_points(fixed.shape[:2])
    truth = pts + _bump(pts, fixed.shape[:2], 4.0)
    err = np.linalg.norm(deformable.map_points(pts) - truth, axis=1)
    err_linear = np.linalg.norm(linear.map_points(pts) - truth, axis=1)
    assert np.median(err) < 1.0, (np.median(err), np.median(err_linear))
    assert np.median(err) < 0.6 * np.median(err_linear)  # the deformation, not the matrix, did it
    assert deformable.deformation["jacobian_min"] > 0 and deformable.deformation["score"] > \
        deformable.deformation["linear_score"]


@pytest.mark.slow
def test_the_inverse_map_undoes_the_forward_map(recovered):
    fixed, _, deformable = recovered
    pts = _tissue_points(fixed.shape[:2])
    back = deformable.map_points(deformable.map_points(pts), inverse=True)
    assert np.abs(back - pts).max() < 0.1


@pytest.mark.slow
def test_the_record_round_trips_with_its_field(recovered):
    from drmime_batch import RegistrationResult

    _, _, deformable = recovered
    again = RegistrationResult.from_json(deformable.to_json())
    assert again.field is not None and np.allclose(again.field.forward, deformable.field.forward)
    pts = np.array([[30.0, 40.0], [100.0, 80.0]])
    assert np.allclose(again.map_points(pts), deformable.map_points(pts))


def test_scaling_and_squaring_does_not_fold_where_the_velocity_itself_would():
    field = VelocityField((-1.0, -1.0), (1.0, 1.0), cells=16)
    _, gh, gw = field.velocity.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, gh, dtype=torch.float64), torch.linspace(-1, 1, gw,
                                                                                           dtype=torch.float64),
                            indexing="ij")
    with torch.no_grad():  # a strong squeeze towards x = 0: dv/dx = -2.5 at the centre
        field.velocity[0] = -2.5 * xx * torch.exp(-(xx**2 + yy**2) / 0.5)
    u = field.displacement()
    assert jacobian_stats(u, field.lower, field.upper)["jacobian_min"] > 0
    from drmime_batch.core._deformable import DisplacementGrid

    naive = DisplacementGrid(field.velocity.detach(), field.lower, field.upper)  # p + v(p): folds
    assert jacobian_stats(naive, field.lower, field.upper)["jacobian_min"] < 0


@pytest.mark.slow
def test_a_deformation_that_does_not_help_leaves_the_linear_result(recovered):
    fixed = _section()
    moving = _deformed(fixed, amplitude=4.0)
    result = register(fixed, moving, deformable=True, lr_deformable=0.0,
                      **(QUICK | {"deformable_iterations": 20, "deformable_points": 1234}))
    assert result.field is None
    assert result.deformation["kept"] is False and "did not raise" in result.deformation["reason"]
    # the stage samples its own number of points at the finest level, not the linear stage's 4500
    assert result.deformation["points"][0] == 1234
    # a grid cell spans 223 / 16 = 14 px at the finest level, 7 at the next, 3.5 at the third:
    # the stage keeps the two levels whose cells span at least deformable_min_cell = 4 px
    assert result.deformation["levels"] == 2 < len(result.level_scores)
    assert len(result.deformation["points"]) == 2
    assert np.allclose(result.matrix, recovered[1].matrix)  # the same linear stage, untouched


def test_the_chunked_warp_equals_an_in_memory_warp():
    from drmime_batch.io import warp_array

    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    field = DisplacementField(rng.normal(0, 2, (2, 4, 5)), rng.normal(0, 2, (2, 4, 5)), origin=(-3, -2),
                              spacing=(30, 28))
    m = np.array([[1.02, 0.05, 3.0], [-0.04, 0.98, -2.0], [0, 0, 1.0]])
    chunked = warp_array(src, m, (80, 110), field=field, chunks=(23, 37)).compute()
    yy, xx = np.mgrid[:80, :110]
    q = map_points(m, field, np.c_[xx.ravel(), yy.ravel()])
    whole = np.stack([ndimage.map_coordinates(src[..., c].astype(float), [q[:, 1], q[:, 0]], order=1,
                                              mode="grid-constant") for c in range(3)], -1).reshape(80, 110, 3)
    assert chunked.dtype == np.uint8
    assert np.abs(chunked.astype(int) - np.clip(np.rint(whole), 0, 255).astype(int)).max() <= 1


def test_a_field_is_stored_beside_the_transform_and_read_back(tmp_path):
    from drmime_batch.io import pair_is_complete, read_field, read_transform, write_transform

    rng = np.random.default_rng(1)
    field = DisplacementField(rng.normal(0, 1, (2, 5, 6)), rng.normal(0, 1, (2, 5, 6)), origin=(0, 0), spacing=(16, 16))
    out = tmp_path / "out.zarr"
    write_transform(out, "p", np.eye(3), attrs={"transform": "affine"}, field=field)
    assert pair_is_complete(out, "p", warp=False)
    back = read_field(out, "p")
    assert np.array_equal(back.forward, field.forward) and np.array_equal(back.inverse, field.inverse)
    assert back.origin == field.origin and back.spacing == field.spacing
    _, attrs = read_transform(out, "p")
    assert attrs["coordinateTransformations"][0]["type"] == "sequence"
    write_transform(out, "p", np.eye(3), attrs={"transform": "affine"})  # a linear retry drops the field
    assert read_field(out, "p") is None and not (out / "p" / "field").exists()


@pytest.mark.slow
def test_the_field_corrects_a_stretch_the_linear_stage_left():
    """A 4 % stretch that the (frozen) linear stage did not make is recovered by the field to a small
    fraction of a pixel (the penalty leaves a global affine part of the velocity free; that it costs
    nothing is checked in ``VelocityField.roughness``'s example)."""
    fixed = _section()
    h, w = fixed.shape[:2]
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    scale = 1.04

    def truth(xy: np.ndarray) -> np.ndarray:  # fixed pixel -> moving pixel
        return centre + scale * (xy - centre)

    # moving(truth(p)) = fixed(p): sample fixed at the inverse of the stretch
    yy, xx = np.mgrid[:h, :w]
    src = centre + (np.c_[xx.ravel(), yy.ravel()] - centre) / scale
    moving = np.stack([ndimage.map_coordinates(fixed[..., c], [src[:, 1], src[:, 0]], order=3, mode="nearest")
                       .reshape(h, w) for c in range(3)], -1)
    result = register(fixed, moving, deformable=True, lr_transform=0.0, **QUICK)
    assert np.allclose(result.matrix, np.eye(3))  # the linear stage did not move
    assert result.deformation["kept"], result.deformation
    pts = _tissue_points((h, w))
    err = np.linalg.norm(result.map_points(pts) - truth(pts), axis=1)
    err_linear = np.linalg.norm(pts - truth(pts), axis=1)
    assert np.median(err) < 0.3 and np.median(err) < 0.1 * np.median(err_linear), (np.median(err),
                                                                                    np.median(err_linear))
