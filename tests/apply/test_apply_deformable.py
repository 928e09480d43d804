"""``apply`` on a deformable transform: points both ways, the slide into the other frame, the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from drmime_batch import open_transform
from drmime_batch.core._deformable import VelocityField
from drmime_batch.core._field import DisplacementField
from drmime_batch.io import write_transform

MATRIX = np.array([[1.01, 0.02, 6.0], [-0.015, 0.99, -4.0], [0.0, 0.0, 1.0]])


def _field() -> DisplacementField:
    """A smooth, invertible field (the flow of a velocity) over a 120 x 160 image, in pixels."""
    vf = VelocityField((-1.0, -0.75), (1.0, 0.75), cells=6)
    _, gh, gw = vf.velocity.shape
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, gh, dtype=torch.float64), torch.linspace(-1, 1, gw,
                                                                                           dtype=torch.float64),
                            indexing="ij")
    with torch.no_grad():
        vf.velocity[0] = 0.06 * torch.sin(3 * yy)
        vf.velocity[1] = 0.05 * torch.cos(2 * xx)
    scale = 80.0  # pixels per frame unit: the frame spans 160 px along x
    fwd, inv = vf.displacement(1.0, refine=4), vf.displacement(-1.0, refine=4)
    origin = (float(vf.lower[0]) * scale + 79.5, float(vf.lower[1]) * scale + 59.5)
    return DisplacementField(fwd.values.detach().numpy() * scale, inv.values.detach().numpy() * scale, origin=origin,
                             spacing=(vf.spacing / 4 * scale, vf.spacing / 4 * scale))


@pytest.fixture()
def deformable_store(tmp_path):
    out = tmp_path / "out.zarr"
    write_transform(out, "pair", MATRIX, attrs={"transform": "affine"}, field=_field())
    return out


def test_points_go_there_and_back_through_the_field(deformable_store):
    t = open_transform(deformable_store, "pair")
    assert t.kind == "deformable" and np.allclose(t.matrix, MATRIX)
    rng = np.random.default_rng(0)
    fixed_pts = rng.uniform([10, 10], [150, 110], (50, 2))
    moving_pts = t.map_points(fixed_pts, inverse=True)  # fixed frame -> moving section
    plain = (np.c_[fixed_pts, np.ones(50)] @ MATRIX.T)[:, :2]
    assert np.abs(moving_pts - plain).max() > 1.0  # the field moves points by pixels
    back = t.map_points(moving_pts)  # moving section -> fixed frame, the default direction
    assert np.abs(back - fixed_pts).max() < 0.1


def test_a_slide_goes_into_the_fixed_frame_and_back(deformable_store, tmp_path):
    from drmime_batch.transforms._stored import FieldTransform

    t = open_transform(deformable_store, "pair")
    assert isinstance(t, FieldTransform)
    yy, xx = np.mgrid[:120, :160]
    moving = (128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint8)[..., None]
    into_fixed = t._resampled(moving, (120, 160), into_fixed=True, order=1, chunks=64).compute()
    back = t._resampled(into_fixed, (120, 160), into_fixed=False, order=1, chunks=64).compute()
    inner = (slice(20, 100), slice(25, 135))
    diff = np.abs(back[inner].astype(int) - moving[inner].astype(int))
    assert np.median(diff) <= 3, np.median(diff)


def test_apply_points_command_uses_the_field(deformable_store, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text(",X,Y,label\n0,40.0,30.0,a\n1,120.5,90.25,b\n")
    out = tmp_path / "out.csv"
    proc = subprocess.run([sys.executable, "-m", "drmime_batch", "apply", "points", str(deformable_store), "pair",
                           str(src), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",") for line in out.read_text().splitlines()[1:]]
    got = np.array([[float(r[1]), float(r[2])] for r in rows])
    want = open_transform(deformable_store, "pair").map_points(np.array([[40.0, 30.0], [120.5, 90.25]]))
    assert np.allclose(got, want, atol=1e-6) and [r[3] for r in rows] == ["a", "b"]
