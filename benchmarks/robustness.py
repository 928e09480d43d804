"""Robustness benchmark: real stain pairs as they are, and generated hard cases with a known answer.

Usage::

    python benchmarks/robustness.py [--data DIR] [--cases all|real|generated|NAME,...]
                                    [--methods drmime,identity,sitk,elastix] [--threads 2]
                                    [--max-iterations K] [--json [OUT]] [--size 512] [--device auto]

Examples::

    python benchmarks/robustness.py --cases generated --methods drmime,identity
    python benchmarks/robustness.py --cases 'lobes1/*' --methods identity,elastix
    python benchmarks/robustness.py --cases rot180,core --max-iterations 30 --json

Convention (``drmime_batch.register``): the 3x3 matrix maps a FIXED pixel ``(x, y)`` (x = column,
origin at the centre of the top-left pixel) to the MOVING pixel showing the same tissue; a fixed
landmark ``p`` should land on the moving landmark ``M @ p``. rTRE = landmark distance / diagonal
of the fixed image. Scores come from :func:`drmime_batch.evaluation.evaluate_matrix`; the affine
*floor* of a case is :func:`drmime_batch.evaluation.best_fit_matrix` on its landmarks.

Cases (``--cases`` takes ``all``, ``real``, ``generated``, ``lesion3``, ``lobes1``, case names or
shell patterns such as ``lobes1/*``, comma-separated):

real, ``lesion3/<pair>``
    the 10 pairs of the bundled CIMA lung-lesion-3 (``drmime_batch/examples/cima-lung-lesion3``,
    RGB JPEG), as they are.
real, ``lobes1/<pair>``
    the 10 pairs of ``DATA/cima-lung-lobes1`` (16-bit grey PNG, its own ``pairs.csv`` layout), as
    they are; its table's identity / floor columns are carried along as a check.
generated (``rot90``, ``rot180``, ``rot-arbitrary``, ``mirror``, ``pad-black``, ``pad-white``,
``tile-seams``, ``core``, ``modality``, ``pen``, ``small-tissue``)
    built from three lung-lesion-3 pairs (round robin), both images first shrunk so that their
    longer side is ``--size`` pixels. The moving image is warped by a KNOWN matrix ``W``
    (``moving'(q) = moving(W^-1 q)``), so moving landmarks become ``W·m``; the fixed image is
    unchanged except in ``core`` (cropped: ``fixed'(p) = fixed(Φ^-1 p)``). The reference answer is
    ``T = W · B · Φ^-1`` with ``B`` the least-squares affine fit of the base pair's landmarks, and
    a method's *error* is the mean distance ``|M p - T p|`` over the case's fixed landmarks,
    divided by the fixed diagonal (the same over the four fixed corners is stored too).
    *Recovered* = error < 1 % of the diagonal; *worse than start* = error above the identity's.
    The rTRE against the warped landmarks and the floor are reported as for real cases.

Methods: ``drmime`` (``register(fixed, moving)`` with the library defaults, ``--threads``, and
``--max-iterations`` when given), ``identity``, ``sitk`` and ``elastix`` (the peers of
``benchmarks/accuracy.py``, with the same settings; skipped with a message when not importable).
Peers see a float grey image in [0, 1], background dark: ``1 - luminance`` for RGB, and for a
single-channel image its own 0.5/99.5 percentiles scaled to [0, 1] and inverted. DRMIME gets the
native arrays (uint8 RGB, uint16 grey, uint8 grey). A method failing on a case is recorded and
the run goes on. Seconds are wall-clock of the registration call alone, after one untimed warm-up.

Printed: one table per case group and summary lines (real sets: median ratio to the floor,
cases within 1.3x and 1.5x of it, cases worse than identity; generated: cases recovered, cases
ending worse than their start; median seconds). ``--json`` writes everything, including the
DRMIME result's ``init`` record, to OUT (default ``benchmarks/results/robustness-cpu.json``).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import logging
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from drmime_batch.evaluation import best_fit_matrix, evaluate_matrix, image_diagonal, read_landmarks

REPO = Path(__file__).resolve().parents[1]
LESION3 = REPO / "drmime_batch" / "examples" / "cima-lung-lesion3"
LOBES1_NAME = "cima-lung-lobes1"
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "robustness-cpu.json"
ALL_METHODS = ("drmime", "identity", "sitk", "elastix")
#: methods run only when named (``--methods drmime-d,elastix-b``): the deformable stages
EXTRA_METHODS = ("drmime-d", "elastix-b")
GENERATED = ("rot90", "rot180", "rot-arbitrary", "mirror", "pad-black", "pad-white", "tile-seams",
             "core", "modality", "pen", "small-tissue")
#: lung-lesion-3 cover-table rows the generated cases are built from (round robin over GENERATED)
BASE_ROWS = (0, 1, 6)
RECOVERED = 0.01  # error below this fraction of the fixed diagonal = recovered
FLOOR_FACTORS = (1.3, 1.5)
SEED = 20240617

logger = logging.getLogger("benchmarks.robustness")


# benchmarks/ is not a package: its scripts import one another from their folder
sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy as acc  # noqa: E402


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One registration problem with its landmarks (and, when generated, the reference answer).

    Attributes
    ----------
    name, group : str
        ``group`` is ``"lesion3"``, ``"lobes1"`` or ``"generated"``.
    fixed, moving : ndarray
        The images handed to the methods.
    fixed_lm, moving_lm : ndarray, shape (N, 2)
        Paired ``(x, y)`` landmarks in the pixels of ``fixed`` / ``moving``.
    truth : ndarray, shape (3, 3), optional
        The reference fixed -> moving matrix (generated cases).
    base : str, optional
        The real pair a generated case was made from.
    recipe : str
        How the case was made.
    extra : dict
        Anything else worth keeping (table reference values, the warp ``W``...).
    """

    name: str
    group: str
    fixed: np.ndarray
    moving: np.ndarray
    fixed_lm: np.ndarray
    moving_lm: np.ndarray
    truth: np.ndarray | None = None
    base: str | None = None
    recipe: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseSpec:
    """A case by name, built only when it runs (images stay out of memory until then)."""

    name: str
    group: str
    build: Callable[[], Case]


def load_gray16(path: Path) -> np.ndarray:
    """A 16-bit grey PNG as a uint16 array (never through ``convert("RGB")``, which clips at 255)."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.dtype != np.uint16:  # mode "I" (int32) holding 16-bit values
        arr = np.clip(arr, 0, 65535).astype(np.uint16)
    return arr


def peer_gray_any(image: np.ndarray) -> np.ndarray:
    """Float32 grey in [0, 1] with a dark background, for the peers.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C)
        RGB(A) -> ``1 - luminance`` (``accuracy.peer_gray``); a single channel (any dtype) ->
        scaled by its own 0.5/99.5 percentiles to [0, 1], clipped and inverted.

    Returns
    -------
    ndarray, float32, shape (H, W)
    """
    if image.ndim == 3 and image.shape[2] >= 3:
        return acc.peer_gray(image)
    grey = (image[..., 0] if image.ndim == 3 else image).astype(np.float32)
    return (1.0 - acc.unit_range(grey)).astype(np.float32)


def lesion3_specs() -> list[CaseSpec]:
    """The bundled lung-lesion-3 pairs (ANHIR cover table, RGB JPEG)."""
    specs = []
    for pair in acc.read_cover_table(LESION3):
        def build(pair: Any = pair) -> Case:
            return Case(f"lesion3/{pair.pair_id}", "lesion3", acc.load_rgb(pair.fixed), acc.load_rgb(pair.moving),
                        read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks),
                        recipe="real pair, as it is")
        specs.append(CaseSpec(f"lesion3/{pair.pair_id}", "lesion3", build))
    return specs


def lobes1_specs(folder: Path) -> list[CaseSpec]:
    """The lung-lobes-1 pairs: ``pairs.csv`` with ``fixed_image, fixed_landmarks, moving_image, ...``.

    Parameters
    ----------
    folder : Path
        ``DATA/cima-lung-lobes1``; paths in its table are relative to it.

    Returns
    -------
    list of CaseSpec
        Each carries the table's ``initial_median_rTRE`` / ``best_affine_median_rTRE`` in ``extra``.
    """
    with (folder / "pairs.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ids = acc._short_ids([(Path(r["fixed_image"]).stem, Path(r["moving_image"]).stem) for r in rows])
    specs = []
    for pid, row in zip(ids, rows, strict=True):
        def build(row: dict[str, str] = row, pid: str = pid) -> Case:
            ref = {k: float(row[k]) for k in ("initial_median_rTRE", "best_affine_median_rTRE") if row.get(k)}
            return Case(f"lobes1/{pid}", "lobes1", load_gray16(folder / row["fixed_image"]),
                        load_gray16(folder / row["moving_image"]), read_landmarks(folder / row["fixed_landmarks"]),
                        read_landmarks(folder / row["moving_landmarks"]), recipe="real pair, as it is (16-bit grey)",
                        extra={"table": ref, "fixed_path": row["fixed_image"], "moving_path": row["moving_image"]})
        specs.append(CaseSpec(f"lobes1/{pid}", "lobes1", build))
    return specs


# ---- geometry helpers for the generated cases
def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(N, 2)`` points through a 3x3 matrix (with the projective divide)."""
    hom = np.c_[np.asarray(points, dtype=np.float64), np.ones(len(points))] @ np.asarray(matrix, dtype=np.float64).T
    return hom[:, :2] / hom[:, 2:3]


def translation(dx: float, dy: float) -> np.ndarray:
    """The 3x3 matrix of ``p -> p + (dx, dy)``."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def rotation_about(deg: float, centre_in: Sequence[float], centre_out: Sequence[float]) -> np.ndarray:
    """Rotate by ``deg`` (clockwise on screen, y down) about ``centre_in``, which lands on ``centre_out``."""
    t = math.radians(deg)
    c, s = round(math.cos(t), 12), round(math.sin(t), 12)  # exact quarter turns
    r = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return translation(*centre_out) @ r @ translation(-centre_in[0], -centre_in[1])


def warp(image: np.ndarray, w: np.ndarray, out_hw: tuple[int, int], fill: Sequence[float] | float) -> np.ndarray:
    """``out(q) = image(W^-1 q)`` (bilinear), pixels outside the input set to ``fill``.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, C), uint8
    w : ndarray, shape (3, 3)
        Input pixel -> output pixel, ``(x, y)`` with x = column.
    out_hw : (int, int)
        Output height and width.
    fill : float or sequence of float
        Value (per channel) outside the input.

    Returns
    -------
    ndarray, uint8, shape ``out_hw`` (+ channels)
    """
    from scipy import ndimage

    inv = np.linalg.inv(w)
    a = inv[:2, :2][::-1, ::-1]  # (x, y) -> (row, col) index order
    off = inv[:2, 2][::-1]
    chans = image[..., None] if image.ndim == 2 else image
    fills = np.broadcast_to(np.asarray(fill, dtype=np.float64), (chans.shape[2],))
    out = np.stack([
        ndimage.affine_transform(chans[..., k].astype(np.float32), a, offset=off, output_shape=out_hw,
                                 order=1, mode="constant", cval=float(fills[k]))
        for k in range(chans.shape[2])
    ], axis=-1)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[..., 0] if image.ndim == 2 else out


def background_colour(image: np.ndarray) -> np.ndarray:
    """Median colour of the image's border pixels (the slide background)."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).reshape(-1, image.shape[-1])
    return np.median(border, axis=0)


def _shrink(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the longer side is ``size`` (no-op when already smaller); return image and pixel map."""
    from PIL import Image

    h, w = image.shape[:2]
    if size <= 0 or max(h, w) <= size:
        return image, np.eye(3)
    f = size / max(h, w)
    nw, nh = max(8, round(w * f)), max(8, round(h * f))
    small = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    sx, sy = nw / w, nh / h  # PIL: pixel centre x + 0.5 scales by sx
    return small, np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


@dataclass
class Base:
    """A real lung-lesion-3 pair at the generated cases' working size."""

    pair_id: str
    fixed: np.ndarray
    moving: np.ndarray
    fixed_lm: np.ndarray
    moving_lm: np.ndarray
    fit: np.ndarray  # least-squares affine fixed -> moving of all its landmarks: the reference


_BASES: dict[tuple[int, int], Base] = {}


def load_base(row: int, size: int) -> Base:
    """Cover-table row ``row`` of lung-lesion-3, both images shrunk to ``size`` (cached)."""
    if (row, size) not in _BASES:
        pair = acc.read_cover_table(LESION3)[row]
        f, sf = _shrink(acc.load_rgb(pair.fixed), size)
        m, sm = _shrink(acc.load_rgb(pair.moving), size)
        lf = apply(sf, read_landmarks(pair.fixed_landmarks))
        lm = apply(sm, read_landmarks(pair.moving_landmarks))
        n = min(len(lf), len(lm))
        lf, lm = lf[:n], lm[:n]
        _BASES[(row, size)] = Base(pair.pair_id, f, m, lf, lm, best_fit_matrix(lf, lm))
    return _BASES[(row, size)]


def _tile_field(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A multiplicative background of slightly different grey tiles with 1-px darker seams."""
    h, w = hw
    tile = max(16, round(0.12 * max(h, w)))
    levels = rng.uniform(0.90, 0.99, size=(h // tile + 1, w // tile + 1))
    field_ = levels[np.arange(h)[:, None] // tile, np.arange(w)[None, :] // tile]
    field_[::tile, :] *= 0.82
    field_[:, ::tile] *= 0.82
    return field_.astype(np.float32)


def _pen_strokes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark / blue marker stripes across the whole image (tissue and background) and one circled area."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    h, w = image.shape[:2]
    width = max(3, round(0.02 * min(h, w)))
    colours = [(20, 30, 120), (25, 25, 45), (40, 70, 170), (20, 30, 120)]
    for colour in colours:
        angle = rng.uniform(0, math.pi)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        dx, dy = math.cos(angle) * 2 * (h + w), math.sin(angle) * 2 * (h + w)
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour, width=width)
    box = [0.55 * w, 0.1 * h, 0.9 * w, 0.45 * h]
    draw.ellipse(box, outline=(30, 50, 150), width=width)
    return np.asarray(im)


def generated_case(name: str, size: int) -> Case:
    """Build one generated case (see the module docstring); deterministic."""
    row = BASE_ROWS[GENERATED.index(name) % len(BASE_ROWS)]
    b = load_base(row, size)
    rng = np.random.default_rng(SEED + GENERATED.index(name))
    f, m, lf, lm = b.fixed, b.moving, b.fixed_lm, b.moving_lm
    h, w = m.shape[:2]
    cm = ((w - 1) / 2.0, (h - 1) / 2.0)
    bg = background_colour(m)
    phi = np.eye(3)  # fixed original -> fixed' (only "core" changes the fixed image)
    extra: dict[str, Any] = {}

    def pad(scale: float, fx: float, fy: float) -> tuple[np.ndarray, tuple[int, int]]:
        hw = (round(scale * h), round(scale * w))
        return translation(round(fx * (hw[1] - w)), round(fy * (hw[0] - h))), hw

    if name == "rot90":
        W, hw = rotation_about(90, cm, ((h - 1) / 2.0, (w - 1) / 2.0)), (w, h)
        moving, recipe = warp(m, W, hw, bg), "moving turned a quarter (90 deg), canvas swapped"
    elif name == "rot180":
        W = rotation_about(180, cm, cm)
        moving, recipe = warp(m, W, (h, w), bg), "moving turned 180 deg"
    elif name == "rot-arbitrary":
        deg = 37.0
        t = math.radians(deg)
        hw = (math.ceil(abs(math.sin(t)) * w + abs(math.cos(t)) * h), math.ceil(abs(math.cos(t)) * w + abs(math.sin(t)) * h))
        W = rotation_about(deg, cm, ((hw[1] - 1) / 2.0, (hw[0] - 1) / 2.0))
        moving, recipe = warp(m, W, hw, bg), f"moving turned {deg:g} deg, canvas grown to hold it, background fill"
    elif name == "mirror":
        W = np.array([[-1.0, 0.0, w - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        moving, recipe = warp(m, W, (h, w), bg), "moving flipped left-right"
    elif name in ("pad-black", "pad-white"):
        W, hw = pad(1.6, 0.25, 0.6)
        fill = 0.0 if name == "pad-black" else 255.0
        moving, recipe = warp(m, W, hw, fill), f"moving placed off-centre on a 1.6x {name[4:]} canvas"
    elif name == "tile-seams":
        W, hw = pad(1.6, 0.25, 0.6)
        placed = warp(m, W, hw, 255.0).astype(np.float32)
        moving = np.clip(np.rint(placed * _tile_field(hw, rng)[..., None]), 0, 255).astype(np.uint8)
        recipe = "moving on a 1.6x canvas of grey tiles (0.90-0.99) with 1-px seams (x0.82), seams over tissue too"
    elif name == "small-tissue":
        W, hw = pad(4.0, 0.3, 0.55)
        moving, recipe = warp(m, W, hw, 255.0), "moving placed off-centre on a white canvas 4x as large"
    elif name == "modality":
        deg = 10.0
        W = rotation_about(deg, cm, cm)
        grey = acc.peer_gray(warp(m, W, (h, w), bg))  # 1 - luminance
        g = 1.0 - grey
        moving = np.rint(255 * np.abs(np.sin(3.0 * g))).astype(np.uint8)
        recipe = f"moving turned {deg:g} deg, then grey g -> |sin(3 g)| (non-monotonic), one channel vs RGB fixed"
    elif name == "pen":
        W = translation(0.04 * w, -0.03 * h) @ rotation_about(-10.0, cm, cm)
        moving = _pen_strokes(warp(m, W, (h, w), bg), rng)
        recipe = "moving turned -10 deg and shifted (4 %, -3 %), then 4 marker stripes and one circle drawn over it"
    elif name == "core":
        deg = 8.0
        hf, wf = f.shape[:2]
        c = lf.mean(axis=0)
        r = min(0.38 * min(hf, wf), c[0], c[1], wf - 1 - c[0], hf - 1 - c[1])
        side = 2 * math.ceil(1.08 * r) + 1
        o = np.round(c) - (side - 1) / 2.0
        phi = translation(-o[0], -o[1])
        cf = apply(phi, c[None])[0]
        yy, xx = np.mgrid[:side, :side]
        fixed = warp(f, phi, (side, side), 255.0)
        fixed[(xx - cf[0]) ** 2 + (yy - cf[1]) ** 2 > r * r] = 255
        cm_disc = apply(b.fit, c[None])[0]
        scale = math.sqrt(abs(np.linalg.det(b.fit[:2, :2])))
        rm, side_m = r * scale, 2 * math.ceil(1.08 * r * scale) + 1
        mid = (side_m - 1) / 2.0
        W = rotation_about(deg, cm_disc, (mid, mid))
        moving = warp(m, W, (side_m, side_m), 255.0)
        yy, xx = np.mgrid[:side_m, :side_m]
        moving[(xx - mid) ** 2 + (yy - mid) ** 2 > rm * rm] = 255
        keep = np.hypot(*(lf - c).T) < 0.95 * r
        lf, lm = lf[keep], lm[keep]
        extra.update(disc_radius_px=float(r), landmarks_in_disc=int(keep.sum()))
        recipe = (f"round tissue crop (radius {r:.0f} px) on white in both images; moving disc turned {deg:g} deg "
                  "(answer near identity, a 180 deg / mirror basin is wrong)")
    else:
        raise ValueError(f"unknown generated case {name!r}")
    if name != "core":
        fixed = f
    truth = W @ b.fit @ np.linalg.inv(phi)
    extra.update(warp_W=W.tolist(), base_fit=b.fit.tolist(), size=size)
    return Case(name, "generated", fixed, moving, apply(phi, lf), apply(W, lm), truth=truth,
                base=f"lesion3/{b.pair_id}", recipe=recipe, extra=extra)


def generated_specs(size: int) -> list[CaseSpec]:
    """The generated hard cases, in :data:`GENERATED` order."""
    return [CaseSpec(n, "generated", lambda n=n: generated_case(n, size)) for n in GENERATED]


def select_cases(specs: list[CaseSpec], selector: str) -> list[CaseSpec]:
    """Cases named by ``--cases`` (``all``, ``real``, ``generated``, a group, names or patterns)."""
    out: list[CaseSpec] = []
    for token in [t.strip() for t in selector.split(",") if t.strip()]:
        if token == "all":
            hits = specs
        elif token == "real":
            hits = [s for s in specs if s.group != "generated"]
        elif token in ("generated", "lesion3", "lobes1"):
            hits = [s for s in specs if s.group == token]
        else:
            hits = [s for s in specs if fnmatch.fnmatchcase(s.name, token)]
        if not hits:
            names = ", ".join(s.name for s in specs)
            raise SystemExit(f"robustness.py: no case matches {token!r}; cases: {names}")
        out.extend(s for s in hits if s not in out)
    return out


# --------------------------------------------------------------------------- scoring
def truth_errors(matrix: np.ndarray, case: Case, field: Any = None) -> dict[str, float]:
    """Mean ``|M p - T p|`` / fixed diagonal over the fixed landmarks and over the fixed corners."""
    from drmime_batch.core._field import map_points

    assert case.truth is not None
    diag = image_diagonal(case.fixed.shape)
    h, w = case.fixed.shape[:2]
    corners = np.array([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]])
    err = {}
    for key, pts in (("landmarks", case.fixed_lm), ("corners", corners)):
        d = map_points(matrix, field, pts) - apply(case.truth, pts)
        err[key] = float(np.mean(np.hypot(d[:, 0], d[:, 1])) / diag)
    return err


def case_context(case: Case) -> dict[str, Any]:
    """The reference figures of a case: identity and floor rTRE, and for generated cases their errors."""
    floor = best_fit_matrix(case.fixed_lm, case.moving_lm)
    s_floor = evaluate_matrix(floor, case.fixed_lm, case.moving_lm, fixed_shape=case.fixed.shape)
    ctx: dict[str, Any] = {
        "name": case.name, "group": case.group, "base": case.base, "recipe": case.recipe,
        "fixed_shape": list(case.fixed.shape), "moving_shape": list(case.moving.shape),
        "fixed_dtype": str(case.fixed.dtype), "moving_dtype": str(case.moving.dtype),
        "n_landmarks": int(min(len(case.fixed_lm), len(case.moving_lm))),
        "diagonal_px": s_floor.diagonal_px,
        "identity_rtre_median": s_floor.identity_rtre_median,
        "floor_rtre_median": s_floor.rtre_median,
        "floor_matrix": floor.tolist(),
        **case.extra,
    }
    if case.truth is not None:
        ctx["truth_matrix"] = case.truth.tolist()
        ctx["identity_error"] = truth_errors(np.eye(3), case)
        ctx["floor_error"] = truth_errors(floor, case)  # how far the case's own fit is from the reference
    return ctx


def _worse(value: float, start: float) -> bool:
    """``value`` above ``start`` by more than rounding (the identity is not worse than itself)."""
    return value > start * (1.0 + 1e-9) + 1e-12


def score(matrix: np.ndarray, case: Case, ctx: dict[str, Any], field: Any = None) -> dict[str, Any]:
    """Every figure of one method on one case (``field``: a deformable method's displacement)."""
    s = evaluate_matrix(matrix, case.fixed_lm, case.moving_lm, fixed_shape=case.fixed.shape, field=field).to_dict()
    out: dict[str, Any] = {"scores": s, "rtre_median": s["rtre_median"]}
    out["ratio_to_floor"] = s["rtre_median"] / ctx["floor_rtre_median"] if ctx["floor_rtre_median"] > 0 else None
    out["worse_than_identity"] = _worse(s["rtre_median"], ctx["identity_rtre_median"])
    if case.truth is not None:
        err = truth_errors(matrix, case, field)
        out["error"] = err["landmarks"]
        out["error_corners"] = err["corners"]
        out["recovered"] = err["landmarks"] < RECOVERED
        out["worse_than_start"] = _worse(err["landmarks"], ctx["identity_error"]["landmarks"])
    return out


# --------------------------------------------------------------------------- running
def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy / torch scalars and arrays, tuples, mappings)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def run_cases(specs: list[CaseSpec], methods: list[str], runner: Any, log: Callable[[str], None], *,
              markup: bool = True) -> list[dict[str, Any]]:
    """Build and run every case with every usable method.

    Parameters
    ----------
    specs : list of CaseSpec
        The cases, built one at a time.
    methods : list of str
        Usable methods (``runner.run_<method>`` exists and was warmed up).
    runner : accuracy.Methods
        The method runner (its ``last_result`` gives the DRMIME ``init`` record).
    log : callable
        One progress line per case and method.
    markup : bool
        Whether ``log`` understands rich markup (red for failures / worse results).

    Returns
    -------
    list of dict
        One record per case: its :func:`case_context` plus ``results[method]`` (seconds, matrix,
        figures of :func:`score`, the DRMIME ``init`` record) or ``error`` when the method failed.
    """
    records = []
    for spec in specs:
        try:
            case = spec.build()
        except Exception as exc:  # noqa: BLE001 - a case that cannot be built is reported, not fatal
            log(f"{spec.name}: cannot build: {type(exc).__name__}: {exc}")
            records.append({"name": spec.name, "group": spec.group, "build_error": f"{type(exc).__name__}: {exc}",
                            "results": {}})
            continue
        ctx = case_context(case)
        ctx["results"] = {}
        for method in methods:
            fn = getattr(runner, "run_" + method.replace("-", "_"))
            res: dict[str, Any] = {}
            runner.last_result = None
            t0 = time.perf_counter()
            try:
                out = fn(case.fixed, case.moving, None)
                out, field = out if isinstance(out, tuple) else (out, None)  # deformable: (matrix, field)
                matrix = np.asarray(out, dtype=np.float64)
                res["seconds"] = time.perf_counter() - t0
                res["matrix"] = matrix.tolist()
                res.update(score(matrix, case, ctx, field))
            except Exception as exc:  # noqa: BLE001 - a failed method is a result
                res["seconds"] = time.perf_counter() - t0
                res["failed"] = f"{type(exc).__name__}: {exc}"
                logger.debug("%s on %s failed:\n%s", method, case.name, traceback.format_exc())
            if method in ("drmime", "drmime-d") and runner.last_result is not None:
                r = runner.last_result
                res["init"] = _jsonable(dict(r.init))
                if r.deformation:
                    res["deformation"] = _jsonable(dict(r.deformation))
                res["iterations"] = r.iterations
                res["timings"] = _jsonable(dict(r.timings))
            ctx["results"][method] = res
            log(f"{case.name:>34} {method:>8}: " + _cell(ctx, method, rich=markup))
        records.append(ctx)
        del case
    return records


def _cell(rec: dict[str, Any], method: str, *, rich: bool) -> str:
    res = rec["results"].get(method)
    red = (lambda t: f"[red]{t}[/red]") if rich else (lambda t: t)  # noqa: E731
    if res is None:
        return ""
    if "failed" in res:
        return red(f"failed: {res['failed'][:60]}")
    secs = f"{res['seconds']:.1f}s"
    if rec["group"] == "generated":
        tag = ("ok" if res["recovered"] else "MISS") + (" WORSE" if res["worse_than_start"] else "")
        text = f"{100 * res['error']:.2f}% {tag} ({secs})"
        return red(text) if res["worse_than_start"] else text
    ratio = res["ratio_to_floor"]
    text = f"{res['rtre_median']:.4f} {ratio:.2f}x ({secs})" + (" WORSE" if res["worse_than_identity"] else "")
    return red(text) if res["worse_than_identity"] else text


def _init_brief(rec: dict[str, Any]) -> str:
    init = rec["results"].get("drmime", {}).get("init")
    if not init:
        return ""
    angle, flip = init.get("angle_deg"), init.get("flip")
    parts = [f"{angle:.0f}deg" if isinstance(angle, (int, float)) else str(angle)]
    if flip:
        parts.append("flip")
    if init.get("fallback"):
        parts.append(f"fallback={init['fallback']}")
    return " ".join(parts)


def summarise(records: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per group and method: the summary figures (see the module docstring)."""
    out: dict[str, Any] = {}
    for group in ("lesion3", "lobes1", "generated"):
        recs = [r for r in records if r["group"] == group and "results" in r]
        if not recs:
            continue
        out[group] = {}
        for m in methods:
            ok = [r["results"][m] for r in recs if m in r["results"] and "failed" not in r["results"][m]]
            n_run = sum(1 for r in recs if m in r["results"])
            if n_run == 0:
                continue
            secs = [x["seconds"] for x in ok]
            s: dict[str, Any] = {
                "cases": n_run,
                "failed": n_run - len(ok),
                "median_seconds": float(np.median(secs)) if secs else None,
                "median_rtre": float(np.median([x["rtre_median"] for x in ok])) if ok else None,
                "worse_than_identity": sum(bool(x["worse_than_identity"]) for x in ok),
            }
            ratios = [x["ratio_to_floor"] for x in ok if x["ratio_to_floor"] is not None]
            s["median_ratio_to_floor"] = float(np.median(ratios)) if ratios else None
            for k in FLOOR_FACTORS:
                s[f"within_{k}x_floor"] = sum(q <= k for q in ratios)
            if group == "generated":
                s["recovered"] = sum(bool(x["recovered"]) for x in ok)
                s["worse_than_start"] = sum(bool(x["worse_than_start"]) for x in ok)
                s["median_error"] = float(np.median([x["error"] for x in ok])) if ok else None
            out[group][m] = s
    return out


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_report(records: list[dict[str, Any]], summary: dict[str, Any], methods: list[str],
                 print_: Callable[[str], None], table_cls: Any) -> None:
    """One table per group, then the summary lines."""
    titles = {"lesion3": "lung-lesion-3 (real): median rTRE, ratio to the affine floor, seconds",
              "lobes1": "lung-lobes-1 (real, 16-bit grey): median rTRE, ratio to the affine floor, seconds",
              "generated": "generated (known answer): error = mean |M p - T p| / diagonal, ok < 1 %, seconds"}
    for group, title in titles.items():
        recs = [r for r in records if r["group"] == group]
        if not recs:
            continue
        gen = group == "generated"
        head = ["case", "identity", "floor"] + (["base"] if gen else []) + methods
        if "drmime" in methods:
            head.append("drmime init")
        rows = []
        for r in recs:
            if "build_error" in r:
                rows.append([r["name"], "build failed"] + [""] * (len(head) - 2))
                continue
            ident = (f"{100 * r['identity_error']['landmarks']:.2f}% / {r['identity_rtre_median']:.4f}" if gen
                     else f"{r['identity_rtre_median']:.4f}")
            row = [r["name"], ident, f"{r['floor_rtre_median']:.4f}"]
            if gen:
                row.append(str(r["base"]).removeprefix("lesion3/"))
            row += [_cell(r, m, rich=table_cls is not None) for m in methods]
            if "drmime" in methods:
                row.append(_init_brief(r))
            rows.append(row)
        if table_cls is not None:
            table = table_cls(title=title)
            for col in head:
                table.add_column(col, no_wrap=col == "case")
            for row in rows:
                table.add_row(*row)
            print_(table)
        else:
            print_(f"\n{title}")
            widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
            for row in [head, *rows]:
                print_("  ".join(str(x).ljust(wd) for x, wd in zip(row, widths, strict=True)))
    if any(r["group"] == "generated" for r in records):
        print_("generated identity column: error of the identity / its rTRE; WORSE = error above the identity's")
    for group, by_method in summary.items():
        for m, s in by_method.items():
            if group == "generated":
                print_(f"{group:>9} {m:>8}: recovered {s['recovered']}/{s['cases']}, worse than start "
                       f"{s['worse_than_start']}, failed {s['failed']}, median error {_fmt(s['median_error'], '.4f')}, "
                       f"median {_fmt(s['median_seconds'], '.1f')} s")
            else:
                print_(f"{group:>9} {m:>8}: median ratio to floor {_fmt(s['median_ratio_to_floor'])}, "
                       f"within 1.3x {s['within_1.3x_floor']}/{s['cases']}, within 1.5x {s['within_1.5x_floor']}/"
                       f"{s['cases']}, worse than identity {s['worse_than_identity']}, failed {s['failed']}, "
                       f"median rTRE {_fmt(s['median_rtre'], '.4f')}, median {_fmt(s['median_seconds'], '.1f')} s")
    lobes = [r for r in records if r["group"] == "lobes1" and "table" in r]
    if lobes:
        d_id = max(abs(r["identity_rtre_median"] - r["table"]["initial_median_rTRE"]) for r in lobes)
        d_fl = max(abs(r["floor_rtre_median"] - r["table"]["best_affine_median_rTRE"]) for r in lobes)
        print_(f"lung-lobes-1 check against its pairs.csv: max |identity - initial_median_rTRE| = {d_id:.5f}, "
               f"max |floor - best_affine_median_rTRE| = {d_fl:.5f}")


# --------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.is_dir() else None,
                   help=f"folder holding {LOBES1_NAME}/ (default: ../shared/data from the repository root, if present)")
    p.add_argument("--cases", default="all",
                   help="all | real | generated | lesion3 | lobes1 | names or patterns, comma-separated "
                        f"(generated: {','.join(GENERATED)}; real: lesion3/<pair>, lobes1/<pair>)")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help=f"comma-separated subset of {','.join(ALL_METHODS + EXTRA_METHODS)} (default: {','.join(ALL_METHODS)})")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch / ITK / elastix (default 2)")
    p.add_argument("--max-iterations", type=int, default=None,
                   help="override DRMIME iterations (smoke runs only; default: the library's)")
    p.add_argument("--json", type=Path, nargs="?", const=DEFAULT_JSON, default=None, metavar="OUT",
                   help="write every figure as JSON (default OUT: benchmarks/results/robustness-cpu.json)")
    p.add_argument("--size", type=int, default=512,
                   help="longer side in pixels of the lesion-3 images the generated cases are built from "
                        "(0: as they are; default 512)")
    p.add_argument("--seed", type=int, default=None,
                   help="DRMIME's random seed (default: the library's); several seeds show the run-to-run spread")
    p.add_argument("--device", default="auto", help="torch device for drmime (default auto)")
    p.add_argument("-v", "--verbose", action="store_true", help="log tracebacks of failed methods")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in ALL_METHODS + EXTRA_METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS + EXTRA_METHODS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on completion (failed methods are results, not errors)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 200)
        print_: Callable[[Any], None] = console.print
        log: Callable[[str], None] = lambda text: console.print(f"{time.strftime('%H:%M:%S')} {text}")  # noqa: E731
        table_cls: Any = Table
    except ImportError:  # plain output
        print_ = print
        log = lambda text: print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)  # noqa: E731
        table_cls = None

    specs = lesion3_specs()
    lobes_dir = args.data / LOBES1_NAME if args.data is not None else None
    if lobes_dir is not None and (lobes_dir / "pairs.csv").is_file():
        specs += lobes1_specs(lobes_dir)
    else:
        print_(f"lung-lobes-1 not found (--data DIR with {LOBES1_NAME}/pairs.csv): its cases are skipped")
    specs += generated_specs(args.size)
    selected = select_cases(specs, args.cases)

    runner = acc.Methods(threads=args.threads, max_iterations=args.max_iterations, device=args.device, seed=args.seed)
    runner.gray = peer_gray_any
    methods = []
    for m in args.methods:
        reason = runner.available(m)
        if reason:
            print_(f"skipping {m}: {reason}")
            continue
        runner.warm_up(m)
        methods.append(m)
    command = "python benchmarks/robustness.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print_(f"{len(selected)} cases, methods: {', '.join(methods)}, {args.threads} threads"
           + (f", max_iterations {args.max_iterations}" if args.max_iterations else ""))
    t0 = time.perf_counter()
    records = run_cases(selected, methods, runner, log, markup=table_cls is not None)
    summary = summarise(records, methods)
    print_report(records, summary, methods, print_, table_cls)
    print_(f"total {time.perf_counter() - t0:.0f} s; command: {command}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_jsonable({
            "command": command,
            "data": None if args.data is None else args.data.name,
            "threads": args.threads,
            "max_iterations": args.max_iterations,
            "seed": args.seed,
            "size": args.size,
            "device": args.device,
            "methods": methods,
            "recovered_threshold": RECOVERED,
            "base_rows": list(BASE_ROWS),
            "machine": acc.machine(),
            "cases": records,
            "summary": summary,
        }), indent=2) + "\n", encoding="utf-8")
        out = args.json.resolve()
        print_(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
