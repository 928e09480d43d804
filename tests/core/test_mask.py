"""Automatic tissue masks: real slides, and hard cases built from them (scanner tiles, padding,
inverted contrast, a pen stroke, other dtypes, no tissue at all)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from drmime_batch.core._mask import mask_fraction, resize_mask, tissue_mask

LESION = Path(__file__).resolve().parents[2] / "drmime_batch" / "examples" / "cima-lung-lesion3" / "images"
#: Not in the repository: a CI clone has the shared data next to it, a user's clone does not.
LOBES = Path(__file__).resolve().parents[3] / "shared" / "data" / "cima-lung-lobes1" / "images"
HE = "29-041-Izd2-w35-He-les3.jpg"
CC10 = "29-041-Izd2-w35-Cc10-5-les3.jpg"  # the palest stain of the set


@cache
def lesion(name: str) -> np.ndarray:
    img = np.asarray(Image.open(LESION / name).convert("RGB"))
    img.flags.writeable = False
    return img


@cache
def lesion_mask(name: str) -> np.ndarray:
    return tissue_mask(lesion(name))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def glass_colour(img: np.ndarray) -> np.ndarray:
    """The empty-glass colour of a brightfield crop: median of its brightest quarter."""
    lum = img.mean(2)
    return np.median(img[lum >= np.percentile(lum, 75)], axis=0)


def paste(img: np.ndarray, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``img`` in the middle of ``canvas`` (float, clipped to uint8); its footprint; the footprint
    grown by 3 % of the canvas (the smoothing halo of tissue cut straight at the crop's edges)."""
    out = canvas.copy()
    y0, x0 = (canvas.shape[0] - img.shape[0]) // 2, (canvas.shape[1] - img.shape[1]) // 2
    out[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]] = img
    inside = np.zeros(canvas.shape[:2], bool)
    inside[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]] = True
    near = ndimage.binary_dilation(inside, iterations=int(0.03 * max(canvas.shape)))
    return np.clip(out, 0, 255).astype(np.uint8), inside, near


def canvas_for(img: np.ndarray, grow: float = 1.5) -> tuple[int, int, int]:
    return int(img.shape[0] * grow), int(img.shape[1] * grow), 3


def tiled_glass(shape: tuple[int, int, int], colour: np.ndarray, seed: int) -> np.ndarray:
    """A scanner background: 96 px tiles each up to 6 grey levels off ``colour`` (a 12-level spread;
    the lung-lobes scans show about 5), 1 px seams 12 levels darker, pixel noise of 2 levels."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    offsets = rng.uniform(-6, 6, (h // 96 + 1, w // 96 + 1))
    grey = offsets[np.arange(h)[:, None] // 96, np.arange(w)[None, :] // 96]
    grey[::96, :] -= 12
    grey[:, ::96] -= 12
    return colour + (grey + rng.normal(0, 2, (h, w)))[..., None]


# -- real slides ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in LESION.glob("*.jpg")))
def test_lesion_crops_are_nearly_all_tissue(name):
    # Hand-checked on overlays of image and mask: each lesion-3 crop is lung parenchyma throughout
    # except the large airway and vessel lumina open to the border and the gap at the bottom left,
    # about 6 % of the area: tissue fraction 0.94 (measured 0.92-0.96 over the five stains).
    mask = lesion_mask(name)
    h, w = mask.shape
    assert mask.shape == lesion(name).shape[:2]
    assert abs(mask_fraction(mask) - 0.94) < 0.04
    # the dense lesion in the middle is solid tissue
    assert mask[int(0.4 * h) : int(0.6 * h), int(0.25 * w) : int(0.42 * w)].all()


def test_lung_lobes_on_a_tiled_scanner_background():
    if not LOBES.is_dir():
        pytest.skip(f"shared data not found: {LOBES}")
    for path in sorted(LOBES.glob("*.png")):
        img = np.asarray(Image.open(path))
        assert img.dtype == np.uint16 and img.ndim == 2
        mask = tissue_mask(img)
        # Hand-checked: the lobes cover 0.55 of the 400x800 frame (measured 0.53-0.57, with a
        # few-pixel rim of the smoothing); the tiles around them stay out.
        assert abs(mask_fraction(mask) - 0.55) < 0.03, path.name
        assert not mask[-60:, :40].any() and not mask[-20:, -20:].any(), path.name


def test_ihc_crop_is_tissue_but_its_lumen():
    skdata = pytest.importorskip("skimage.data")
    img = skdata.immunohistochemistry()
    mask = tissue_mask(img)
    # Hand-checked: epithelium and stroma fill the crop; only the lumen at the left edge
    # (rows 280-390, columns 0-45) and a few specks are empty: 0.98.
    assert abs(mask_fraction(mask) - 0.98) < 0.015
    assert mask[300:380, :30].mean() < 0.1


def test_dark_background_photograph():
    skdata = pytest.importorskip("skimage.data")
    img = skdata.retina()  # a bright, smooth disc on black: the fluorescence situation
    disc = img.mean(axis=2) > 20
    assert iou(tissue_mask(img), disc) > 0.95


# -- synthetic hard cases ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "seed"), [(HE, 0), (CC10, 0), (CC10, 3)])
def test_tile_steps_and_seams_are_not_tissue(name, seed):
    img = lesion(name)
    canvas, inside, near = paste(img, tiled_glass(canvas_for(img), glass_colour(img), seed))
    mask = tissue_mask(canvas)
    assert mask[~near].mean() < 0.005  # no tile (one is 1.5 % of this glass), no seam
    assert iou(mask[inside].reshape(img.shape[:2]), lesion_mask(name)) > 0.85


@pytest.mark.parametrize("value", [0, 255])
@pytest.mark.parametrize("name", [HE, CC10])
def test_constant_padding_is_not_tissue(name, value):
    # a slide (the crop on a margin of noisy glass) padded with a constant, as a common canvas does
    img = lesion(name)
    glass = glass_colour(img) + np.random.default_rng(4).normal(0, 2, canvas_for(img, 1.4))
    slide, in_slide, _ = paste(img, glass)
    canvas, in_canvas, _ = paste(slide, np.full(canvas_for(slide, 1.3), float(value)))
    inside = np.zeros_like(in_canvas)
    inside[in_canvas] = in_slide.ravel()
    near = ndimage.binary_dilation(inside, iterations=int(0.03 * max(canvas.shape)))
    mask = tissue_mask(canvas)
    assert not mask[~near].any()  # neither the padding nor the glass
    assert iou(mask[inside].reshape(img.shape[:2]), lesion_mask(name)) > 0.85


@pytest.mark.parametrize("name", [HE, CC10])
def test_inverted_grey_is_the_same_tissue(name):
    dark_background = 1.0 - lesion(name).mean(axis=2) / 255.0  # bright tissue on black, float
    assert iou(tissue_mask(dark_background), lesion_mask(name)) > 0.8


@pytest.mark.parametrize("ink", [(20, 120, 40), (40, 40, 40)], ids=["green", "black"])
def test_pen_stroke_across_the_glass(ink):
    img = lesion(HE)
    shape = canvas_for(img, 1.6)
    glass = glass_colour(img) + np.random.default_rng(1).normal(0, 2, shape)
    canvas, inside, near = paste(img, glass)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    stroke = np.abs(yy - 0.1 * shape[0] - 0.5 * xx) < 4  # 7 px wide, corner to corner
    canvas[stroke] = ink
    mask = tissue_mask(canvas)
    on_glass = stroke & ~near
    assert on_glass.sum() > 3000
    assert mask[on_glass].mean() < 0.1
    assert (mask & on_glass).sum() < 0.01 * mask.sum()
    assert iou(mask[inside].reshape(img.shape[:2]), lesion_mask(HE)) > 0.85


@pytest.mark.parametrize("name", [HE, CC10])
def test_saturated_glass(name):
    # brighter exposure: the glass clips to exactly 255 (over half of the crop), as in many scans
    img = lesion(name)
    clipped = np.clip(img * (1.05 * 255 / glass_colour(img)), 0, 255).astype(np.uint8)
    assert (clipped == 255).all(axis=2).mean() > 0.4
    assert iou(tissue_mask(clipped), lesion_mask(name)) > 0.9


def test_dtypes_give_the_same_mask():
    img = lesion(CC10)
    reference = lesion_mask(CC10)
    for other in (img.astype(np.uint16) * 257, img / 255.0, (img / 255.0).astype(np.float32)):
        assert (tissue_mask(other) != reference).mean() < 1e-3, other.dtype


def test_several_pieces_specks_and_holes():
    rng = np.random.default_rng(2)
    img = rng.normal(235, 2, (400, 600))
    img[60:300, 40:260] = rng.normal(130, 40, (240, 220))  # section 1
    img[100:260, 360:520] = rng.normal(150, 40, (160, 160))  # section 2, smaller
    img[150:162, 120:132] = 235 + rng.normal(0, 2, (12, 12))  # a small hole in section 1
    for y, x in [(350, 100), (30, 400), (350, 550)]:
        img[y : y + 3, x : x + 3] = 60  # dust specks
    mask = tissue_mask(img.clip(0, 255).astype(np.uint8))
    labels, n = ndimage.label(mask)
    assert n == 2
    assert mask[70:290, 50:250].all() and mask[110:250, 370:510].all()  # hole filled
    assert not mask[340:360, 90:110].any() and not mask[:40, 390:410].any()
    assert not mask[:, 275:345].any()  # the gap between the sections


def test_no_tissue_gives_an_empty_mask():
    rng = np.random.default_rng(3)
    cases = [
        np.full((300, 400, 3), 200, np.uint8),
        np.zeros((50, 70)),
        np.full((600, 800), 0.9),
        rng.normal(230, 3, (600, 800, 3)).clip(0, 255).astype(np.uint8),  # empty glass
        rng.normal(1000, 30, (700, 500)).astype(np.uint16),
    ]
    for img in cases:
        mask = tissue_mask(img)
        assert mask.shape == img.shape[:2] and mask.dtype == bool
        assert not mask.any(), (img.dtype, img.shape)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        tissue_mask(np.zeros(10))
    with pytest.raises(ValueError):
        resize_mask(np.zeros((2, 2, 2, 2)), (4, 4))


# -- resize_mask ------------------------------------------------------------------------------


def test_resize_mask_non_zero_is_tissue():
    m = np.array([[0, 2], [-1.5, 0]])
    up = resize_mask(m, (4, 6))
    assert up.dtype == bool and up.shape == (4, 6)
    np.testing.assert_array_equal(up, np.kron(m != 0, np.ones((2, 3), bool)))
    np.testing.assert_array_equal(resize_mask(up, (2, 2)), m != 0)  # nearest: exact round trip
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0, 2] = 255
    np.testing.assert_array_equal(resize_mask(rgb, (2, 2)), [[True, False], [False, False]])


def test_resize_mask_keeps_the_tissue_fraction():
    mask = lesion_mask(HE)
    small = resize_mask(mask, (97, 131))
    assert small.shape == (97, 131)
    assert abs(mask_fraction(small) - mask_fraction(mask)) < 0.02
    assert mask_fraction(np.zeros((0, 3))) == 0.0


def test_ink_mask_flags_marker_colours_not_stains():
    from drmime_batch.core._mask import ink_mask

    for path in sorted(LESION.glob("*.jpg")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        assert ink_mask(rgb).mean() < 0.002, path.name  # H&E and IHC stains are not ink
        inked = rgb.copy()
        inked[100:108] = (40, 70, 170)  # blue marker
        inked[200:208] = (30, 140, 60)  # green marker
        inked[300:308] = (25, 25, 45)  # black marker
        flagged = ink_mask(inked)
        assert flagged[100:108].mean() > 0.99 and flagged[200:208].mean() > 0.99 and flagged[300:308].mean() > 0.99
    assert not ink_mask(np.zeros((8, 8), np.uint8)).any()  # grey images carry no ink colour
