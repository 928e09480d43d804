"""Automatic tissue (foreground) masks of slide images, computed at low resolution.

:func:`tissue_mask` works on an area-downsampled copy whose longer side is at most ``max_size``:

1. **Padding.** Exact-constant regions (3x3 px at least) of a value frequent on the image border
   (black or white padding, saturated glass) are never tissue and take no part in what follows.
2. **Background colour.** The mode (densest colour cluster; not the median, as tissue often covers
   half the border of a crop) of the border of the slide region (next to the image edge or to the
   padding). Where that border deviates from it both ways it is tissue, and the padding value is
   the glass (saturated or noise-free).
3. **Polarity.** Tissue is darker than the background in brightfield (H&E, IHC, grey scans) and
   brighter in fluorescence / SHG / IF: the longer tail of the deviations says which. Only that
   side counts, so glare in brightfield (or dark dust in fluorescence) is ignored.
4. **Feature.** With ``d`` the one-sided distance from the background colour (largest over
   channels), ``F = sqrt(var_local(d) + (0.3 mean_local(d)) ** 2)`` (Gaussian window). Texture
   weighs most: scanner tiles a few grey levels off the background are flat and count at 0.3 of
   their offset, while even pale lacy tissue (lung) is rough; smooth tissue counts by its mean.
5. **Threshold.** Otsu on ``log F`` (tissue spans a decade of ``F``, from lacy parenchyma to dense
   tumour, and Otsu on ``F`` itself splits it in two), kept between 4 and 6 background-noise
   sigmas, or 5-10 % of the strongest tissue when the noise is tiny. The upper bound matters for
   crops that are nearly all tissue (Otsu then separates dense from lacy tissue); the lower bound
   keeps a tissue-free image tissue-free.
6. **Clean-up** (``scipy.ndimage``): a closing (radius 4 px) joins lacy tissue; an opening (5 px,
   1 % of a 512 px copy) drops lines widened by the smoothing (tile seams, bubble outlines), and
   the same on the unsmoothed ``d > threshold`` (opening 2 px) drops pen strokes; components under
   2 % of the largest go (speckle) while several pieces stay (sections, lobes); holes under 1 % of
   the image are filled.

A mask under 0.5 % of the image is reported as no tissue (all ``False``): the caller decides the
fallback. Not handled: pen strokes wider than about 5 px of the copy, and slide labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from drmime_batch.errors import InputImageError

__all__ = ["CROP_BELOW", "ink_mask", "mask_fraction", "resize_mask", "tissue_box", "tissue_mask"]

_SIGMA = 1.5  # feature smoothing, in working-copy pixels
_MEAN_WEIGHT = 0.3  # weight of the local mean distance against the local std (texture) in F
_MIN_FRACTION = 0.005  # a smaller mask is reported as empty


def _disk(r: int) -> np.ndarray:
    x = np.arange(-r, r + 1) ** 2
    return np.add.outer(x, x) <= r * r + r


def _area_downsample(image: np.ndarray, max_size: int) -> tuple[np.ndarray, int]:
    """(C, h, w) float64 means over ``f x f`` blocks (partial blocks at the far edges), and ``f``."""
    a = image[..., None] if image.ndim == 2 else image
    h, w, c = a.shape
    f = max(1, -(-max(h, w) // max_size))
    rows = np.zeros((-(-h // f), w, c))
    for i in range(f):  # strided sums: one pass over the data, no full-size float copy
        rows[: -(-(h - i) // f)] += a[i::f]
    out = np.zeros((rows.shape[0], -(-w // f), c))
    for j in range(f):
        out[:, : -(-(w - j) // f)] += rows[:, j::f]
    counts = np.outer(np.minimum(f, h - np.arange(0, h, f)), np.minimum(f, w - np.arange(0, w, f)))
    return np.ascontiguousarray((out / counts[..., None]).transpose(2, 0, 1)), f


def _ring(shape: tuple[int, int], width: int) -> np.ndarray:
    ring = np.ones(shape, bool)
    ring[width:-width, width:-width] = False
    return ring


def _padding(a: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Exact-constant regions (3x3 at least) of a value covering 5 % of the border ring, and the
    most frequent such value. Block means of constant pixels stay exactly constant."""
    flat = np.logical_and.reduce([ndi.maximum_filter(x, 3) == ndi.minimum_filter(x, 3) for x in a])
    pad, value = np.zeros(flat.shape, bool), None
    if flat[ring].sum() >= 0.05 * ring.sum():
        vals, counts = np.unique(a[:, ring & flat].T, axis=0, return_counts=True)
        for v in vals[counts >= 0.05 * ring.sum()]:
            pad |= flat & np.logical_and.reduce([x == vc for x, vc in zip(a, v, strict=True)])
        value = vals[np.argmax(counts)] if pad.any() else None
    return ndi.binary_dilation(pad, np.ones((3, 3), bool)), value  # 3x3 around the centres


def _background(a: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Colour mode of the ``where`` pixels: median colour of the densest luminance bin (+-1 bin)."""
    px = a[:, where]
    lum = px.mean(0)
    hist, edges = np.histogram(lum, bins=64)
    k = int(np.argmax(hist))
    near = (lum >= edges[max(k - 1, 0)]) & (lum <= edges[min(k + 2, 64)])
    colour: np.ndarray = np.median(px[:, near], axis=1)
    return colour


def _noise(a: np.ndarray, valid: np.ndarray, bg: np.ndarray, block: int = 8) -> float:
    """Background noise: robust std of neighbour differences, first in the 10 % smoothest blocks,
    then (three rounds) among background-coloured pixels only, as a crop that is nearly all tissue
    has few smooth blocks and, at a coarse scale, their "noise" is tissue texture."""
    diff = np.abs(a[:, :, 1:] - a[:, :, :-1]).max(0)
    pairs = valid[:, 1:] & valid[:, :-1]
    nb, mb = diff.shape[0] // block, diff.shape[1] // block
    ok = pairs[: nb * block, : mb * block].reshape(nb, block, mb, block).all(axis=(1, 3))
    if not ok.any():
        return 0.0
    blocks = diff[: nb * block, : mb * block].reshape(nb, block, mb, block).transpose(0, 2, 1, 3)
    sigma = float(np.percentile(np.median(blocks[ok].reshape(-1, block * block), axis=1), 10))
    near = np.abs(a - bg[:, None, None]).max(0)
    for _ in range(3):
        sel = pairs & (near[:, 1:] <= 3 * sigma) & (near[:, :-1] <= 3 * sigma)
        if sel.sum() < 64:
            break
        sigma = float(np.median(diff[sel]))
    return float(sigma * 1.4826 / np.sqrt(2))


def _close_open(raw: np.ndarray, radius: int) -> np.ndarray:
    """Closing (radius 4 px, reflected at the edges) joins lacy tissue; opening drops lines."""
    closed = ndi.binary_closing(np.pad(raw, 4, mode="reflect"), _disk(4))[4:-4, 4:-4] | raw
    opened: np.ndarray = ndi.binary_opening(closed, _disk(radius))
    return opened


def _otsu(x: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(x, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    m0 = np.cumsum(hist * centres)[:-1]
    between = (m0 * x.size - w0 * (hist * centres).sum()) ** 2 / np.maximum(w0 * (x.size - w0), 1)
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(image: np.ndarray, *, max_size: int = 512) -> np.ndarray:
    """Boolean (H, W) tissue mask of a slide image, computed on a copy at most ``max_size`` px.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        Any numeric dtype (integers, or floats in any range); brightfield (bright background) or
        fluorescence (dark background) alike.
    max_size : int
        Longer side of the area-downsampled working copy; the mask is upsampled (nearest) back.

    Returns
    -------
    ndarray of bool, shape (H, W)
        ``True`` on tissue. All ``False`` when none is found (constant image, empty background, or
        a mask under 0.5 % of the image).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.normal(230, 3, (200, 300)).clip(0, 255).astype(np.uint8)
    >>> img[50:150, 60:160] = rng.normal(120, 40, (100, 100)).clip(0, 255)  # rough, dark tissue
    >>> m = tissue_mask(img)
    >>> m.shape, bool(m[55:145, 65:155].all()), bool(m[:, 170:].any())
    ((200, 300), True, False)
    >>> bool(tissue_mask(np.full((64, 64), 7, np.uint8)).any())
    False
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or max_size < 1:
        raise InputImageError(f"need an (H, W) or (H, W, C) image and max_size >= 1: {image.shape}, {max_size}")
    H, W = image.shape[:2]
    empty = np.zeros((H, W), bool)
    a, f = _area_downsample(image.astype(np.uint8) if image.dtype == bool else image, max_size)
    h, w = a.shape[1:]
    width = max(2, min(h, w) // 50)
    pad, pad_value = _padding(a, _ring((h, w), width))
    if pad.all():
        return empty
    border = ndi.maximum_filter(pad | _ring((h, w), 1), size=2 * width + 1) & ~pad
    bg = _background(a, border if border.sum() >= 16 else ~pad)
    low, high = np.percentile((a - bg[:, None, None]).mean(0)[~pad], [1, 99])
    flat_glass = pad_value is not None and min(-low, high) > 0.5 * max(-low, high)
    if flat_glass:  # deviations both ways: the slide region's border is tissue; the constant is glass
        assert pad_value is not None  # flat_glass says so
        bg = pad_value
        low, high = np.percentile((a - bg[:, None, None]).mean(0)[~pad], [1, 99])
    dev = a - bg[:, None, None]
    d = np.clip(dev if high >= -low else -dev, 0, None).max(0)  # the longer tail is tissue
    d[ndi.binary_dilation(pad)] = 0  # blocks mixing padding and background at the padding edge
    if not d.any():
        return empty
    mean = ndi.gaussian_filter(d, _SIGMA)
    var = np.maximum(ndi.gaussian_filter(d * d, _SIGMA) - mean**2, 0)
    feat = np.sqrt(var + (_MEAN_WEIGHT * mean) ** 2)
    noise = 0.0 if flat_glass else _noise(a, ~ndi.binary_dilation(pad, iterations=2), bg)
    top = float(np.percentile(feat, 90))
    lo, hi = max(4 * noise, 0.05 * top), max(6 * noise, 0.1 * top)
    eps = max(lo, 1e-3 * float(feat.max()))  # log(F + eps): exact zeros share one bin
    t = min(max(np.exp(_otsu(np.log(feat + eps))) - eps, lo), hi)
    # smoothed (free of tile offsets, but widening thin pen strokes) within 4 px of unsmoothed
    # structures that are not thin lines (lacy tissue closes into a solid region, a stroke does not)
    region, core = _close_open(feat > t, 5), _close_open(d > t, 2)
    labels, _ = ndi.label(region & ndi.binary_dilation(core, _disk(4)))
    sizes = np.bincount(labels.ravel())[1:]
    mask = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.02 * sizes.max(initial=0)))
    holes, n = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
    if n:
        mask |= np.isin(holes, 1 + np.flatnonzero(np.bincount(holes.ravel())[1:] < 0.01 * h * w))
    if mask.mean() < _MIN_FRACTION:
        return empty
    return mask[(np.arange(H) // f)[:, None], (np.arange(W) // f)[None, :]]


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask to ``shape`` (H, W); non-zero is tissue.

    Parameters
    ----------
    mask : ndarray, shape (h, w) or (h, w, C)
        Any dtype; for 3-D input a pixel is tissue where any channel is non-zero.
    shape : tuple of int
        Output (H, W).

    Returns
    -------
    ndarray of bool, shape ``shape``
        Output pixel ``i`` takes the input pixel under its centre, ``floor((i + 0.5) h / H)``.

    Examples
    --------
    >>> resize_mask(np.array([[0, 3], [0, 0]], np.uint8), (4, 4)).astype(int)
    array([[0, 0, 1, 1],
           [0, 0, 1, 1],
           [0, 0, 0, 0],
           [0, 0, 0, 0]])
    """
    m = np.asarray(mask)
    if m.ndim == 3:
        m = (m != 0).any(axis=2)
    elif m.ndim != 2:
        raise InputImageError(f"mask must be (H, W) or (H, W, C), got shape {m.shape}")
    m = m != 0
    H, W = int(shape[0]), int(shape[1])
    rows = np.minimum(((np.arange(H) + 0.5) * m.shape[0] / H).astype(np.intp), m.shape[0] - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * m.shape[1] / W).astype(np.intp), m.shape[1] - 1)
    resized: np.ndarray = m[rows[:, None], cols[None, :]]
    return resized


def mask_fraction(mask: np.ndarray) -> float:
    """Fraction of tissue (non-zero) pixels in ``mask``; 0.0 for an empty array.

    Examples
    --------
    >>> mask_fraction(np.array([[True, False], [False, False]]))
    0.25
    """
    m = np.asarray(mask)
    return float((m != 0).mean()) if m.size else 0.0


def ink_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of marker-pen ink (blue, green, black) on a brightfield RGB image.

    Pathologists circle and strike through slides with blue, green and black markers; their ink
    is a colour no stain has (blue with little red, green above red and blue) or nearly black.
    The thresholds follow the colour rules of slide QC tools (HistoQC's pen module): on the bundled
    H&E and IHC slides they flag under 0.2 % of the pixels.

    Parameters
    ----------
    image : ndarray, shape (H, W, C) with C >= 3
        RGB(A) with uint8, uint16 or float (in [0, 1]) values; anything else gives an all-False
        mask (grey and fluorescence images carry no ink colour).

    Returns
    -------
    ndarray of bool, shape (H, W)

    Examples
    --------
    >>> img = np.full((4, 4, 3), 235, np.uint8)
    >>> img[1] = (40, 70, 170)  # a blue marker stroke
    >>> ink_mask(img).sum(axis=1).tolist()
    [0, 4, 0, 0]
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] < 3:
        return np.zeros(a.shape[:2], bool)
    if a.dtype == np.uint8:
        scale = 1.0
    elif a.dtype == np.uint16:
        scale = 255.0 / 65535.0
    elif np.issubdtype(a.dtype, np.floating) and np.nanmax(a[..., :3]) <= 1.0:
        scale = 255.0
    else:
        return np.zeros(a.shape[:2], bool)
    r, g, b = (a[..., i].astype(np.float32) * scale for i in range(3))
    blue = (r < 90) & (b - r > 60) & (b - g > 20)
    green = (g - r > 40) & (g > b)
    black = np.maximum(np.maximum(r, g), b) < 70
    marks: np.ndarray = blue | green | black
    return marks


#: Crop to the tissue only when its box (with margin) covers less than this share of the image.
CROP_BELOW = 0.6


def tissue_box(mask: np.ndarray | None) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the tissue in ``mask`` with a margin, or None when a crop gains little.

    The margin is a tenth of the tissue's longer side plus 8 pixels (clipped to the image); None
    when there is no mask, or the box covers ``CROP_BELOW`` of the image or more.

    Examples
    --------
    >>> m = np.zeros((200, 300), bool)
    >>> m[50:70, 100:140] = True
    >>> tissue_box(m)
    (39, 81, 89, 151)
    >>> tissue_box(np.ones((200, 300), bool)) is None
    True
    """
    if mask is None or not np.any(mask):
        return None
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    margin = int(0.1 * max(rows[-1] - rows[0], cols[-1] - cols[0])) + 8
    y0, y1 = max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)
    x0, x1 = max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)
    if (y1 - y0) * (x1 - x0) >= CROP_BELOW * h * w or min(y1 - y0, x1 - x0) < 16:
        return None
    return int(y0), int(y1), int(x0), int(x1)
