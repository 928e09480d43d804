"""Trust at a glance: a landmark-free quality record of one registered pair.

:func:`assess` looks at what a registration knows, at a small pyramid level (about
:data:`QC_SIZE` pixels), and returns a :class:`QualityRecord`: a ``score`` in [0, 1], a ``flagged``
bit and the ``reasons`` behind it, with the measured ``features``:

``dice``
    Dice of the fixed tissue mask and the moving tissue mask mapped into the fixed frame. Two
    sections of one block overlap well when registered; a wrong rotation, flip or scale does not.
``nmi``
    Normalised mutual information ``2 MI / (H_f + H_m)`` of the fixed image and the registered one,
    over the fixed pixels the moving frame covers.
``peak_margin``
    ``1 - max(nmi of small moves) / nmi`` over shifts of 1 and 2 % of the diagonal, turns of 2 and
    5 degrees and 3 % scalings: a registration sits on a peak of the similarity, a near miss does
    not (the strongest feature on the benchmark).
``orientation_margin``
    The same against every other orientation (15-degree steps, mirrored or not) about the fixed
    tissue centre: a wrong rotation or flip.
``sharpness``
    How much ``nmi`` drops when the map is shifted by :data:`SHIFT` of the fixed diagonal (mean of
    the four shifts, relative to ``nmi``): a wrong map sits on a plateau.
``anisotropy``, ``area_change``
    The linear part's singular-value ratio and determinant (shear and scale plausibility;
    ``area_change`` is relative to the ratio of tissue areas, so pixel sizes do not matter).
``local_shift``, ``local_coherence``
    Local consistency, at about :data:`LOCAL_SIZE` px (see :func:`local_consistency`): cells of
    the fixed tissue each find the small shift of the map that suits them best, and an affine field
    is fitted to those shifts. ``local_shift`` is the correction the cells agree on (RMS of that
    field, fraction of the diagonal), ``local_coherence`` how far it stands above their scatter
    (about 1 for the scatter of the tissue's own deformation). A map that aligned one piece of a
    section (a lobe that moved between the cuts) and left the others off sits on a peak of the
    global similarity, so the features above pass it; its cells agree on the correction it lacks.
    Flagged when both exceed their thresholds (``local_shift`` alone is large on rough tissue);
    not judged (None) with fewer than :data:`LOCAL_MIN_CELLS` cells (``local_cells``).
``gain``, ``jacobian_min``
    Recorded, not thresholded: the optimiser's similarity over its start (``init`` record) and the
    deformable stage's smallest Jacobian determinant (a fold when not positive: flagged).

The thresholds (:data:`THRESHOLDS`) were chosen on the robustness benchmark (see
``benchmarks/qc_calibration.py`` and ``benchmarks/RESULTS.md``). Callers hand in levels of at
least :data:`LOCAL_SIZE` px where they have them (the other features are measured on a copy shrunk
to :data:`QC_SIZE`). This module needs numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

__all__ = ["LOCAL_SIZE", "QC_SIZE", "SHIFT", "THRESHOLDS", "QualityRecord", "assess", "local_consistency"]

#: Longer side (pixels) of the copies assessed: masks and histograms need no more.
QC_SIZE = 256
#: The shift probing the similarity peak, as a fraction of the fixed diagonal.
SHIFT = 0.04
#: Flag below / above these (see the module docstring and benchmarks/RESULTS.md).
THRESHOLDS: dict[str, float] = {
    "peak_margin_min": 0.025,
    "orientation_margin_min": 0.10,
    "sharpness_min": 0.30,
    "dice_min": 0.50,
    "anisotropy_max": 1.5,
    "area_change_max": 4.0,
    "jacobian_min": 0.0,
    "local_coherence_max": 2.6,
    "local_shift_min": 0.004,
}
_BINS = 32
#: The local moves and the orientations probed (see :func:`measure`).
LOCAL_SHIFTS = (0.01, 0.02)
LOCAL_TURNS = (-5.0, -2.0, 2.0, 5.0)
LOCAL_SCALES = (0.97, 1.03)
ORIENTATION_STEP = 15
#: Local consistency (``local_shift``, ``local_coherence``; see :func:`local_consistency`): the
#: longer side (px) it is measured at, the cell side and the search reach (fractions of the
#: diagonal), the smoothing (px at that size), the histogram bins and the fewest cells judged.
LOCAL_SIZE = 512
LOCAL_CELL = 0.18
LOCAL_REACH = 0.03
LOCAL_SMOOTH = 2.0
LOCAL_BINS = 16
LOCAL_MIN_CELLS = 6


@dataclass(frozen=True)
class QualityRecord:
    """The quality of one pair: ``score`` in [0, 1], ``flagged`` and why, and the features measured."""

    score: float
    flagged: bool
    reasons: tuple[str, ...] = ()
    features: Mapping[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"score", "flagged", "reasons", "features"}``."""
        return {"score": float(self.score), "flagged": bool(self.flagged), "reasons": list(self.reasons),
                "features": {k: (None if v is None else float(v)) for k, v in self.features.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(score=float(data.get("score", 0.0)), flagged=bool(data.get("flagged", False)),
                   reasons=tuple(str(r) for r in data.get("reasons") or ()),
                   features=dict(data.get("features") or {}))


def _gray(image: np.ndarray) -> np.ndarray:
    """Float64 (H, W): the mean over channels (the first three), any dtype."""
    a = np.asarray(image, dtype=np.float64)
    return a[..., :3].mean(axis=2) if a.ndim == 3 else a


def _shrink(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """An area-averaged copy of at most ``size`` px on its longer side, and its downsample factor."""
    f = max(1, -(-max(image.shape[:2]) // size))
    if f == 1:
        return np.asarray(image), 1.0
    h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    a = np.asarray(image[:h, :w], dtype=np.float64)
    a = a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))
    return a, float(f)


def _to_small(matrix: np.ndarray, f_ds: float, m_ds: float) -> np.ndarray:
    """``matrix`` (fixed -> moving pixels) between the shrunk copies (pixel centres kept)."""
    def level(s: float) -> np.ndarray:
        return np.array([[s, 0.0, 0.5 * (s - 1.0)], [0.0, s, 0.5 * (s - 1.0)], [0.0, 0.0, 1.0]])

    out: np.ndarray = np.linalg.inv(level(m_ds)) @ matrix @ level(f_ds)
    return out


def _warp(image: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], order: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` sampled at ``matrix @ p`` for every pixel ``p`` of ``shape``; and where that is inside."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    x = matrix[0, 0] * xx + matrix[0, 1] * yy + matrix[0, 2]
    y = matrix[1, 0] * xx + matrix[1, 1] * yy + matrix[1, 2]
    w = matrix[2, 0] * xx + matrix[2, 1] * yy + matrix[2, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = x / w, y / w
    h, wd = image.shape[:2]
    inside = np.isfinite(x) & np.isfinite(y) & (x >= -0.5) & (x <= wd - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    x, y = np.where(inside, x, -1.0), np.where(inside, y, -1.0)
    out = np.asarray(ndimage.map_coordinates(image.astype(np.float64), [y, x], order=order, mode="nearest"))
    return out, inside


def _ranks(a: np.ndarray) -> np.ndarray:
    """Bin indices of ``a`` by its own 1-99 % range (robust to glare and padding)."""
    lo, hi = np.percentile(a, [1.0, 99.0]) if a.size else (0.0, 1.0)
    bins: np.ndarray = np.clip(((a - lo) / max(hi - lo, 1e-12) * _BINS).astype(int), 0, _BINS - 1)
    return bins


def _nmi(fixed: np.ndarray, warped: np.ndarray, valid: np.ndarray) -> float:
    """``2 MI / (H_f + H_m)`` over ``valid`` pixels (0 with fewer than 64 of them)."""
    if valid.sum() < 64:
        return 0.0
    return max(0.0, _nmi_bins(_ranks(fixed[valid]), _ranks(warped[valid]), _BINS))


def _shifted(matrix: np.ndarray, dx: float, dy: float) -> np.ndarray:
    t = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])
    out: np.ndarray = matrix @ t
    return out


def _centre(mask: np.ndarray) -> tuple[float, float]:
    yy, xx = np.nonzero(mask)
    return float(xx.mean()), float(yy.mean())


def _about(centre: tuple[float, float], linear: np.ndarray) -> np.ndarray:
    """The fixed-frame map ``linear`` (2x2) about ``centre``, as a 3x3 matrix."""
    cx, cy = centre
    c = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    a = np.eye(3)
    a[:2, :2] = linear
    out: np.ndarray = c @ a @ np.linalg.inv(c)
    return out


def _rotation(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])


def _local_moves(diag: float, centre: tuple[float, float]) -> list[np.ndarray]:
    """Small changes of a map: shifts of 1 and 2 % of the diagonal, turns of 2 and 5 degrees, 3 % scale."""
    out = []
    for f in LOCAL_SHIFTS:
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            out.append(np.array([[1.0, 0.0, dx * f * diag], [0.0, 1.0, dy * f * diag], [0.0, 0.0, 1.0]]))
    out += [_about(centre, _rotation(a)) for a in LOCAL_TURNS]
    out += [_about(centre, np.eye(2) * s) for s in LOCAL_SCALES]
    return out


def _orientations(centre: tuple[float, float]) -> list[np.ndarray]:
    """Other orientations of a map about the fixed tissue centre: every 15 degrees, mirrored or not."""
    out = []
    for flip in (False, True):
        for a in range(0, 360, ORIENTATION_STEP):
            if a == 0 and not flip:
                continue
            lin = _rotation(a) @ (np.diag([-1.0, 1.0]) if flip else np.eye(2))
            out.append(_about(centre, lin))
    return out


def _cells(mask: np.ndarray, side: float) -> list[tuple[slice, slice]]:
    """A grid of cells of about ``side`` px over the bounding box of ``mask``."""
    yy, xx = np.nonzero(mask)
    y0, y1, x0, x1 = int(yy.min()), int(yy.max()) + 1, int(xx.min()), int(xx.max()) + 1
    ny, nx = max(1, round((y1 - y0) / side)), max(1, round((x1 - x0) / side))
    ys, xs = np.linspace(y0, y1, ny + 1).astype(int), np.linspace(x0, x1, nx + 1).astype(int)
    return [(slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1])) for i in range(ny) for j in range(nx)]


def _nmi_bins(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    """``2 MI / (H_a + H_b)`` of two arrays of bin indices in ``[0, bins)``."""
    p = np.bincount(a * bins + b, minlength=bins * bins).astype(np.float64)
    p /= p.sum()
    pa, pb = p.reshape(bins, bins).sum(1), p.reshape(bins, bins).sum(0)

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    ha, hb = entropy(pa), entropy(pb)
    return 0.0 if ha + hb <= 0 else 2.0 * (ha + hb - entropy(p)) / (ha + hb)


def _binned(a: np.ndarray, ref: np.ndarray, bins: int) -> np.ndarray:
    """Bin indices of ``a`` by the 1-99 % range of ``ref``."""
    lo, hi = np.percentile(ref, [1.0, 99.0]) if ref.size else (0.0, 1.0)
    out: np.ndarray = np.clip(((a - lo) / max(hi - lo, 1e-12) * bins).astype(int), 0, bins - 1)
    return out


def _best_shift(score: Any, reach: int) -> tuple[float, float]:
    """The shift ``(dx, dy)`` (integers within ``reach``, then sub-pixel) maximising ``score(dx, dy)``.

    A grid of step ``reach / 4``, then around its best at half the step down to 1 px (where it
    climbs until no neighbour within 2 px is better), then a parabola through the best's
    neighbours on each axis.
    """
    cache: dict[tuple[int, int], float] = {}

    def s(dx: int, dy: int) -> float:
        if max(abs(dx), abs(dy)) > reach:
            return -math.inf
        if (dx, dy) not in cache:
            cache[(dx, dy)] = float(score(dx, dy))
        return cache[(dx, dy)]

    step = max(1, round(reach / 4))
    grid = range(-(reach // step) * step, reach + 1, step)
    # ties go to the smaller shift: a cell without texture stays where the map put it
    bx, by = max(((dx, dy) for dy in grid for dx in grid), key=lambda d: (s(*d), -(d[0] ** 2 + d[1] ** 2)))
    while True:  # halve the step around the best; at 1 px, climb until no neighbour is better
        step = max(1, step // 2)
        best = max(((bx + i * step, by + j * step) for j in (-2, -1, 0, 1, 2) for i in (-2, -1, 0, 1, 2)),
                   key=lambda d: s(*d))
        if s(*best) > s(bx, by):
            bx, by = best
        elif step == 1:
            break

    def vertex(a: float, b: float, c: float) -> float:
        den = a - 2.0 * b + c
        return 0.0 if not (math.isfinite(a) and math.isfinite(c)) or den >= 0 else 0.5 * (a - c) / den

    b0 = s(bx, by)
    return bx + vertex(s(bx - 1, by), b0, s(bx + 1, by)), by + vertex(s(bx, by - 1), b0, s(bx, by + 1))


def local_consistency(fixed: np.ndarray, moving: np.ndarray, matrix: np.ndarray,
                      mask: np.ndarray) -> dict[str, float | None]:
    """Whether parts of the tissue agree on a correction of the map (``local_shift``, ``local_coherence``).

    The fixed tissue's bounding box is cut into cells of about :data:`LOCAL_CELL` of the diagonal
    (cells under 30 % tissue are skipped); each cell finds the translation of the map (within
    :data:`LOCAL_REACH` of the diagonal, sub-pixel) that maximises its own normalised MI with the
    registered image (both smoothed by :data:`LOCAL_SMOOTH` px, :data:`LOCAL_BINS` bins). A least-squares
    affine field (tissue-weighted) is fitted to those shifts: ``local_shift`` is its RMS (fraction of
    the diagonal), the correction the cells agree on; ``local_coherence`` is that RMS over the RMS of
    what the field leaves, scaled by the degrees of freedom (``sqrt((2n - 6) / 6)`` for ``n``
    cells) so that shifts scattered at random score about 1. A correct map leaves the cells only the
    scatter of the tissue's own deformation; a map that aligned one piece of the tissue (a lobe)
    leaves the others a shift that an affine correction explains.

    Parameters
    ----------
    fixed, moving : ndarray, shape (H, W)
        Grey images (at about :data:`LOCAL_SIZE` px).
    matrix : ndarray, shape (3, 3)
        Fixed -> moving in their pixels.
    mask : ndarray of bool, shape (H, W)
        The fixed tissue.

    Returns
    -------
    dict
        ``local_shift``, ``local_coherence`` (None with fewer than :data:`LOCAL_MIN_CELLS` cells) and
        ``local_cells``.
    """
    h, w = fixed.shape
    diag = math.hypot(h, w)
    out: dict[str, float | None] = {"local_shift": None, "local_coherence": None, "local_cells": 0.0}
    if not mask.any():
        return out
    reach = max(1, math.ceil(LOCAL_REACH * diag))
    pad = np.array([[1.0, 0.0, -reach], [0.0, 1.0, -reach], [0.0, 0.0, 1.0]])
    warped, inside = _warp(moving, matrix @ pad, (h + 2 * reach, w + 2 * reach), order=1)
    if not inside.any():
        return out
    warped = ndimage.gaussian_filter(np.where(inside, warped, np.median(warped[inside])), LOCAL_SMOOTH)
    f_smooth = ndimage.gaussian_filter(fixed, LOCAL_SMOOTH)
    # pixels that stay inside the moving image at every shift searched
    steady = ndimage.minimum_filter(inside.astype(np.uint8), size=2 * reach + 1, mode="constant", cval=0)
    steady = steady[reach:reach + h, reach:reach + w] > 0
    rows = []
    for cy, cx in _cells(mask, LOCAL_CELL * diag):
        ok = steady[cy, cx]
        if mask[cy, cx].mean() < 0.3 or ok.mean() < 0.5:
            continue
        values = f_smooth[cy, cx][ok]
        f_bins = _binned(values, values, LOCAL_BINS)
        # the moving side binned by the range of the same pixels at no shift: identical images are
        # then binned alike, and their NMI peaks at no shift (with ranges of different regions a
        # tissue edge would prefer a shift)
        slab = warped[cy.start:cy.stop + 2 * reach, cx.start:cx.stop + 2 * reach]
        hc, wc = ok.shape
        m_bins = _binned(slab, slab[reach:reach + hc, reach:reach + wc][ok], LOCAL_BINS)

        def score(dx: int, dy: int, ok: np.ndarray = ok, f_bins: np.ndarray = f_bins,
                  m_bins: np.ndarray = m_bins, hc: int = hc, wc: int = wc) -> float:
            window = m_bins[reach + dy:reach + dy + hc, reach + dx:reach + dx + wc]
            return _nmi_bins(f_bins, window[ok], LOCAL_BINS)

        dx, dy = _best_shift(score, reach)
        rows.append((float((mask[cy, cx] & ok).sum()), (cx.start + cx.stop) / 2.0, (cy.start + cy.stop) / 2.0, dx, dy))
    out["local_cells"] = float(len(rows))
    if len(rows) < LOCAL_MIN_CELLS:
        return out
    a = np.asarray(rows) / np.array([1.0, diag, diag, diag, diag])
    wt = a[:, 0] / a[:, 0].sum()
    centred = a[:, 1:3] - wt @ a[:, 1:3]
    design = np.column_stack([centred, np.ones(len(a))])
    sw = np.sqrt(wt)[:, None]
    coef = np.linalg.lstsq(design * sw, a[:, 3:5] * sw, rcond=None)[0]
    fit = design @ coef
    agreed = math.sqrt(float(wt @ (fit ** 2).sum(1)))
    left = math.sqrt(float(wt @ ((a[:, 3:5] - fit) ** 2).sum(1)))
    out["local_shift"] = agreed
    # a residual under 0.05 % of the diagonal (a fraction of a pixel) is counted as that much
    out["local_coherence"] = agreed / max(left, 5e-4) * math.sqrt((2 * len(a) - 6) / 6.0)
    return out


def measure(fixed: Any, moving: Any, matrix: Any, *, size: int = QC_SIZE,
            local_size: int = LOCAL_SIZE) -> dict[str, float | None]:
    """The image features of a pair (``dice``, ``nmi``, ``sharpness``, ``anisotropy``, ``area_change``, ...).

    Parameters
    ----------
    fixed, moving : array_like, shape (H, W) or (H, W, C)
        The two images (any level: they are shrunk to at most ``size`` px).
    matrix : array_like, shape (3, 3)
        Fixed -> moving in the pixels of the arrays given (``registered(p) = moving(M @ p)``).
    size : int
    local_size : int
        The size ``local_shift`` and ``local_coherence`` are measured at (see
        :func:`local_consistency`; hand in images of at least this size for them to be as calibrated).

    Returns
    -------
    dict
        Features; ``dice`` and ``area_change`` are None when a mask found no tissue, ``local_shift``
        and ``local_coherence`` when the tissue holds too few cells.
    """
    from drmime_batch.core._mask import tissue_mask

    m = np.asarray(matrix, dtype=np.float64)
    f_small, f_ds = _shrink(np.asarray(fixed), size)
    m_small, m_ds = _shrink(np.asarray(moving), size)
    small = _to_small(m, f_ds, m_ds)
    shape = (int(f_small.shape[0]), int(f_small.shape[1]))
    f_mask = tissue_mask(f_small)
    m_mask = tissue_mask(m_small)
    f_gray, m_gray = _gray(f_small), _gray(m_small)
    warped, inside = _warp(m_gray, small, shape, order=1)
    nmi = _nmi(f_gray, warped, inside)
    diag = math.hypot(*shape)
    d = SHIFT * diag
    shifted = [_nmi(f_gray, *_warp(m_gray, _shifted(small, dx, dy), shape, order=1))
               for dx, dy in ((d, 0.0), (-d, 0.0), (0.0, d), (0.0, -d))]
    sharpness = 0.0 if nmi <= 0 else 1.0 - float(np.mean(shifted)) / nmi
    centre = _centre(f_mask) if f_mask.any() else ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    local = max(_nmi(f_gray, *_warp(m_gray, small @ p, shape, order=1)) for p in _local_moves(diag, centre))
    orient = max(_nmi(f_gray, *_warp(m_gray, small @ p, shape, order=1)) for p in _orientations(centre))
    # margins: how far (relative) the result's similarity stands above its best neighbour / orientation
    peak_margin = 0.0 if nmi <= 0 else 1.0 - local / nmi
    orientation_margin = 0.0 if nmi <= 0 else 1.0 - orient / nmi
    lin = m[:2, :2]
    sv = np.linalg.svd(lin, compute_uv=False)
    anisotropy = float(sv[0] / sv[1]) if sv[1] > 0 else math.inf
    det = float(abs(np.linalg.det(lin)))
    features: dict[str, float | None] = {
        "nmi": nmi, "sharpness": sharpness, "peak_margin": peak_margin, "orientation_margin": orientation_margin, "anisotropy": anisotropy, "determinant": det,
        "fixed_tissue": float(f_mask.mean()), "moving_tissue": float(m_mask.mean()),
        "dice": None, "area_change": None, "coverage": float(inside.mean()),
    }
    if f_mask.any() and m_mask.any():
        m_warped, m_inside = _warp(m_mask.astype(np.float64), small, shape, order=0)
        mw = (m_warped > 0.5) & m_inside
        features["dice"] = float(2.0 * (f_mask & mw).sum() / max(1, f_mask.sum() + mw.sum()))
        # moving tissue area (full-resolution px) over fixed tissue area times det: 1 when consistent
        f_area = f_mask.sum() * f_ds * f_ds
        m_area = m_mask.sum() * m_ds * m_ds
        ratio = det * f_area / m_area if m_area > 0 and det > 0 else math.inf
        features["area_change"] = float(max(ratio, 1.0 / ratio)) if ratio > 0 else math.inf
    f_local, f_lds = _shrink(np.asarray(fixed), local_size)
    m_local, m_lds = _shrink(np.asarray(moving), local_size)
    features.update(local_consistency(_gray(f_local), _gray(m_local), _to_small(m, f_lds, m_lds),
                                      tissue_mask(f_local)))
    return features


def _ramp(value: float, bad: float, good: float) -> float:
    """0 at ``bad``, 1 at ``good``, linear between (either order)."""
    t = (value - bad) / (good - bad)
    return float(min(1.0, max(0.0, t)))


def judge(features: Mapping[str, float | None], *, init: Mapping[str, Any] | None = None,
          deformation: Mapping[str, Any] | None = None) -> QualityRecord:
    """The :class:`QualityRecord` of measured ``features`` (and the registration's own records).

    ``score`` is the smallest of a few ramps, each 1 well inside its threshold and 0 well beyond,
    so it reads as "the weakest evidence"; a pair is flagged when any threshold is crossed.
    """
    t = THRESHOLDS
    reasons: list[str] = []
    parts: list[float] = []
    feats = dict(features)
    dice, sharp = feats.get("dice"), feats.get("sharpness")
    aniso, area = feats.get("anisotropy"), feats.get("area_change")
    if dice is None:
        reasons.append("no tissue found in one of the images: the overlap cannot be checked")
        parts.append(0.0)
    else:
        parts.append(_ramp(dice, t["dice_min"], t["dice_min"] + 0.2))
        if dice < t["dice_min"]:
            reasons.append(f"tissue masks overlap poorly (Dice {dice:.2f} < {t['dice_min']:.2f})")
    peak, orient = feats.get("peak_margin"), feats.get("orientation_margin")
    if peak is not None:
        parts.append(_ramp(peak, t["peak_margin_min"], 4 * t["peak_margin_min"]))
        if peak < t["peak_margin_min"]:
            reasons.append(f"a slightly moved map is as similar (peak margin {peak:.3f} < {t['peak_margin_min']:.3f})")
    if orient is not None:
        parts.append(_ramp(orient, t["orientation_margin_min"], 2 * t["orientation_margin_min"]))
        if orient < t["orientation_margin_min"]:
            reasons.append(f"another orientation is as similar (margin {orient:.2f} < {t['orientation_margin_min']:.2f})")
    if sharp is not None:
        parts.append(_ramp(sharp, t["sharpness_min"], t["sharpness_min"] + 0.1))
        if sharp < t["sharpness_min"]:
            reasons.append(f"the similarity is not at a peak (drop {sharp:.2f} < {t['sharpness_min']:.2f} "
                           f"when shifted by {SHIFT:.0%} of the diagonal)")
    if aniso is not None:
        parts.append(_ramp(aniso, t["anisotropy_max"], 1.0))
        if not aniso <= t["anisotropy_max"]:
            reasons.append(f"implausible shear (singular-value ratio {aniso:.2f} > {t['anisotropy_max']:.2f})")
    if area is not None:
        parts.append(_ramp(area, t["area_change_max"], 1.0))
        if not area <= t["area_change_max"]:
            reasons.append(f"implausible area change ({area:.2f}x the tissue-area ratio > {t['area_change_max']:.0f}x)")
    coherence, agreed = feats.get("local_coherence"), feats.get("local_shift")
    if coherence is not None and agreed is not None:
        cmax = t["local_coherence_max"]
        parts.append(1.0 if agreed < t["local_shift_min"] else _ramp(coherence, cmax, cmax - 1.0))
        if coherence > cmax and agreed >= t["local_shift_min"]:
            reasons.append(f"parts of the tissue agree on a correction of the map ({agreed:.1%} of the diagonal, "
                           f"coherence {coherence:.1f} > {cmax:.1f}): one piece aligned, others off")
    jmin = (deformation or {}).get("jacobian_min")
    if jmin is not None and (deformation or {}).get("kept", True):
        feats["jacobian_min"] = float(jmin)
        if not float(jmin) > t["jacobian_min"]:
            reasons.append(f"the deformation folds (Jacobian minimum {float(jmin):.2f} <= 0)")
            parts.append(0.0)
    start, final = (init or {}).get("start_score"), (init or {}).get("final_score")
    if start is not None and final is not None:
        feats["gain"] = float(final) - float(start)
    score = min(parts) if parts else 0.0
    return QualityRecord(score=round(score, 4), flagged=bool(reasons), reasons=tuple(reasons), features=feats)


def assess(fixed: Any, moving: Any, matrix: Any, *, init: Mapping[str, Any] | None = None,
           deformation: Mapping[str, Any] | None = None, size: int = QC_SIZE) -> QualityRecord:
    """The quality of a registration of ``moving`` onto ``fixed`` by ``matrix``, without landmarks.

    Parameters
    ----------
    fixed, moving : array_like, shape (H, W) or (H, W, C)
        The two images at any level (shrunk to at most ``size`` px here).
    matrix : array_like, shape (3, 3)
        Fixed -> moving in the pixels of the arrays given (the linear part of a deformable map).
    init, deformation : mapping, optional
        The registration's ``init`` (``start_score``, ``final_score``) and ``deformation``
        (``jacobian_min``) records.
    size : int

    Returns
    -------
    QualityRecord

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = np.full((96, 96), 230.0)
    >>> img[20:70, 25:80] = rng.normal(110, 35, (50, 55))
    >>> assess(img, img, np.eye(3)).flagged
    False
    >>> assess(img, img, [[1, 0, 30], [0, 1, 0], [0, 0, 1]]).flagged
    True
    """
    return judge(measure(fixed, moving, matrix, size=size), init=init, deformation=deformation)
