"""Helpers of the core tests: known warps under the project's convention and recovery errors.

The convention (``drmime_batch.core._convention``): a fixed pixel ``p`` shows the same tissue as
the moving pixel ``M @ p``; ``registered(p) = moving(M @ p)``. To *make* a moving image from a
fixed one with a known ``M`` we therefore need ``moving(q) = fixed(inv(M) @ q)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

EXAMPLE = Path(__file__).resolve().parents[2] / "drmime_batch" / "examples" / "cima-lung-lesion3"


def about_centre(linear: np.ndarray, shape: tuple[int, ...], shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """3x3 matrix applying ``linear`` (2x2, or a 3x3 projective part) about the image centre, then ``shift``."""
    h, w = shape[:2]
    c = np.array([[1.0, 0.0, (w - 1) / 2], [0.0, 1.0, (h - 1) / 2], [0.0, 0.0, 1.0]])
    lin = np.eye(3)
    a = np.asarray(linear, dtype=np.float64)
    if a.shape == (2, 2):
        lin[:2, :2] = a
    else:
        lin = a.copy()
    t = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]], [0.0, 0.0, 1.0]])
    m = t @ c @ lin @ np.linalg.inv(c)
    return m / m[2, 2]


def rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


def _resample(source: np.ndarray, to_source: np.ndarray, shape: tuple[int, int], *, cval: float, order: int) -> np.ndarray:
    """``out(q) = source(to_source @ q)`` for the pixels ``q`` of an ``shape`` grid (projective divide)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    hom = to_source @ np.stack([xx.ravel(), yy.ravel(), np.ones(h * w)])
    coords = np.stack([hom[1] / hom[2], hom[0] / hom[2]])  # map_coordinates wants (row, col); centres at integers

    def one(plane: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(plane, coords, order=order, mode="constant", cval=cval).reshape(h, w)

    if source.ndim == 2:
        return one(source.astype(np.float64))
    return np.stack([one(source[..., c].astype(np.float64)) for c in range(source.shape[2])], axis=-1)


def warp_to_moving(fixed: np.ndarray, matrix: np.ndarray, *, cval: float = 0.0, order: int = 1) -> np.ndarray:
    """The moving image of ``fixed`` under the fixed→moving ``matrix``: ``moving(q) = fixed(inv(M) q)``.

    ``fixed`` is ``(H, W)`` or ``(H, W, C)`` float; the moving image has the same shape, and shows
    ``cval`` where ``inv(M) q`` falls outside ``fixed``.
    """
    return _resample(fixed, np.linalg.inv(matrix), fixed.shape[:2], cval=cval, order=order)


def view_pair(source: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two ``size`` x ``size`` views of one larger picture, related by the fixed→moving ``matrix``.

    The fixed image is the centre crop of ``source``; the moving image shows at its pixel ``q``
    what the fixed crop shows at ``inv(M) q``, taken from ``source`` so that it has real content
    everywhere (no padding: serial sections are views of the same tissue, not pictures with
    empty corners). ``matrix`` is in the crops' pixel coordinates.

    Raises ``ValueError`` when ``source`` is too small for ``matrix`` (the moving view would need
    pixels outside it).
    """
    h0, w0 = source.shape[:2]
    oy, ox = (h0 - size) // 2, (w0 - size) // 2
    offset = np.array([[1.0, 0.0, ox], [0.0, 1.0, oy], [0.0, 0.0, 1.0]])
    to_source = offset @ np.linalg.inv(matrix)
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], dtype=np.float64)
    hom = corners @ to_source.T
    xy = hom[:, :2] / hom[:, 2:3]
    if xy.min() < 0 or xy[:, 0].max() > w0 - 1 or xy[:, 1].max() > h0 - 1:
        raise ValueError(f"a {w0}x{h0} source is too small for a {size}px moving view under this matrix")
    fixed = np.ascontiguousarray(source[oy : oy + size, ox : ox + size]).astype(np.float64)
    moving = _resample(source, to_source, (size, size), cval=0.0, order=1)
    return fixed, moving


def corner_error(estimated: np.ndarray, truth: np.ndarray, shape: tuple[int, ...]) -> float:
    """Mean distance (moving pixels) between where the two matrices send the fixed image's corners."""
    h, w = shape[:2]
    corners = np.array([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]])

    def apply(m: np.ndarray) -> np.ndarray:
        hom = np.c_[corners, np.ones(4)] @ np.asarray(m, dtype=np.float64).T
        return hom[:, :2] / hom[:, 2:3]

    return float(np.mean(np.linalg.norm(apply(estimated) - apply(truth), axis=1)))


def ihc() -> np.ndarray:
    """scikit-image's bundled immunohistochemistry picture (512x512 RGB) as float in [0, 1]."""
    from skimage import data

    return data.immunohistochemistry().astype(np.float64) / 255.0


def retina(size: int = 512) -> np.ndarray:
    """scikit-image's bundled retina photograph (1411x1411 RGB) shrunk to ``size`` pixels, float in [0, 1]."""
    from skimage import data
    from skimage.transform import resize

    return resize(data.retina().astype(np.float64) / 255.0, (size, size), anti_aliasing=True)


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The hematoxylin channel of colour deconvolution (a different 'modality' than the RGB picture)."""
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., 0]


#: Options of the synthetic registrations: the defaults with fewer points and iterations (160-pixel
#: images need less than slides: every case still ends well under 0.3 px), on the CPU.
QUICK = {"max_iterations": 200, "points": 2000, "fine_points": 2000, "device": "cpu"}

#: ``pairs.csv`` uses the ANHIR columns: the *Target* image is the fixed one, the *Source* the moving.
PAIRS_CSV = EXAMPLE / "pairs.csv"


def lung_pair(row: int) -> dict:
    """Data row ``row`` (0-based) of the bundled ``pairs.csv``: arrays, landmarks and names.

    Returns a dict with ``fixed``/``moving`` (uint8 RGB arrays), ``fixed_landmarks`` /
    ``moving_landmarks`` ((N, 2) x, y arrays) and ``fixed_name``/``moving_name``.
    """
    import csv

    from PIL import Image

    from drmime_batch.evaluation import read_landmarks

    with PAIRS_CSV.open(newline="") as fh:
        rec = list(csv.DictReader(fh))[row]
    return {
        "fixed": np.asarray(Image.open(EXAMPLE / rec["Target image"]).convert("RGB")),
        "moving": np.asarray(Image.open(EXAMPLE / rec["Source image"]).convert("RGB")),
        "fixed_landmarks": read_landmarks(EXAMPLE / rec["Target landmarks"]),
        "moving_landmarks": read_landmarks(EXAMPLE / rec["Source landmarks"]),
        "fixed_name": Path(rec["Target image"]).name,
        "moving_name": Path(rec["Source image"]).name,
    }


#: The synthetic pairs: 160x160 views (see :func:`view_pair`) of a 256x256 picture.
SIZE = 160
SHAPE = (SIZE, SIZE)
#: rotation 10 degrees, isotropic scale 1.05, shear 0.08, shift (4, -3) px
AFFINE = about_centre(np.diag([1.05, 1.05]) @ rotation(10) @ np.array([[1.0, 0.08], [0.0, 1.0]]), SHAPE, (4.0, -3.0))
#: rotation -6 degrees with a keystone: the projective divisor w varies by about +-4 % across the image
_PROJ = np.eye(3)
_PROJ[:2, :2] = rotation(-6)
_PROJ[2, :2] = [4e-4, -3e-4]
HOMOGRAPHY = about_centre(_PROJ, SHAPE, (-3.0, 2.0))
ROTATION_150 = about_centre(rotation(150), SHAPE, (2.0, 3.0))


def ihc_source() -> np.ndarray:
    """The immunohistochemistry picture at 256x256 (RGB, float in [0, 1]): the source of the views."""
    from skimage.transform import resize

    return resize(ihc(), (256, 256), anti_aliasing=True)
