"""Accuracy benchmark: DRMIME, the in-engine baselines and the usual peers on ANHIR pairs.

Usage::

    python benchmarks/accuracy.py [DATASET] [--methods M1,M2,...] [--pairs N] [--json OUT]
                                  [--threads 2] [--max-iterations K] [--device cpu]
                                  [--modality fluorescence] [--deformable] [--seed S]

``DATASET`` is a folder holding an ANHIR cover table ``pairs.csv`` (columns ``Target image``,
``Source image``, ``Target landmarks``, ``Source landmarks``; paths relative to the folder); the
default is the bundled ``drmime_batch/examples/cima-lung-lesion3``. Fixed = the ANHIR target.

Every method runs in this one process on the same pairs and is scored with the same code
(:func:`drmime_batch.evaluation.evaluate_matrix`: rTRE = landmark error / fixed-image diagonal):

============== ==================================================================================
identity       no registration (the starting error)
floor          least-squares affine fit to the landmarks: no affine registration can beat it
floor-h        the same for a homography
drmime         ``register(transform="affine")`` with default settings (DRMIME: MINE + exp map)
drmime-h       ``register(transform="homography")``
mse, ncc, mi   ``register(metric=...)``: the in-engine baselines in the same optimiser
sitk           SimpleITK: Mattes MI (50 bins), 3-level multi-resolution affine, moments
               (centre-of-mass) initialisation, regular-step gradient descent, physical-shift scales
elastix        itk-elastix with its default affine parameter map
drmime-d       DRMIME with its deformable stage (``--deformable``)
elastix-b      itk-elastix's default affine then default B-spline map (``--deformable``)
============== ==================================================================================

``--modality fluorescence`` shows every method each moving image rendered as a one-channel
nuclear-stain fluorescence image of the same section (:func:`fluorescence`: the haematoxylin
optical density, bright on dark), against the brightfield fixed image: a multimodal set that keeps
the pairs' own landmarks, where a similarity that assumes equal intensities (MSE) or a linear
relation (NCC) has nothing to hold on to.

The peers (``pip install drmime-batch[peers]``) are skipped with a message when not importable.
Peers see gray images: ``1 - luminance`` (ITU-R 601 weights) of the RGB slide, so background is
dark (near their padding value 0) and stained tissue bright; mutual information is indifferent to
the inversion, it only keeps the outside-of-image padding consistent with the slide background.
Seconds per pair are wall-clock of the registration call alone (images already in memory); torch,
ITK and elastix run with ``--threads`` threads (default 2) after one untimed warm-up call each.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from drmime_batch.evaluation import best_fit_matrix, evaluate_matrix, machine_info, read_landmarks, summarise

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET = REPO / "drmime_batch" / "examples" / "cima-lung-lesion3"
ALL_METHODS = ("identity", "floor", "floor-h", "drmime", "drmime-h", "drmime-d", "mse", "ncc", "mi", "sitk", "elastix",
               "elastix-b")
#: what ``--deformable`` adds: DRMIME's deformable stage and elastix's default B-spline map after its affine
DEFORMABLE_METHODS = ("drmime-d", "elastix-b")
DEFAULT_METHODS = tuple(m for m in ALL_METHODS if m not in DEFORMABLE_METHODS)
PEERS = ("sitk", "elastix", "elastix-b")
FLOOR_FACTOR = 1.3

logger = logging.getLogger("benchmarks.accuracy")


@dataclass(frozen=True)
class Pair:
    """One ANHIR pair: fixed = target, moving = source."""

    pair_id: str
    fixed: Path
    moving: Path
    fixed_landmarks: Path
    moving_landmarks: Path


@dataclass
class Outcome:
    pair_id: str
    method: str
    seconds: float | None = None
    scores: dict[str, Any] = field(default_factory=dict)
    matrix: list[list[float]] | None = None
    error: str | None = None


# --------------------------------------------------------------------------- data
def _short_ids(stems: list[tuple[str, str]]) -> list[str]:
    names = [s for pair in stems for s in pair]
    prefix = os.path.commonprefix(names)
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    cut = lambda n: n[len(prefix): len(n) - len(suffix)] or n  # noqa: E731
    return [f"{cut(m)}-to-{cut(f)}" for f, m in stems]


def read_cover_table(dataset: Path) -> list[Pair]:
    """Pairs of an ANHIR cover table ``DATASET/pairs.csv`` (paths relative to DATASET)."""
    table = dataset / "pairs.csv"
    if not table.is_file():
        raise SystemExit(f"accuracy.py: {table} does not exist (expected an ANHIR cover table)")
    with table.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    need = ("Target image", "Source image", "Target landmarks", "Source landmarks")
    if not rows or any(k not in rows[0] for k in need):
        raise SystemExit(f"accuracy.py: {table} needs the columns {', '.join(need)}")
    ids = _short_ids([(Path(r["Target image"]).stem, Path(r["Source image"]).stem) for r in rows])
    return [
        Pair(pid, dataset / r["Target image"], dataset / r["Source image"],
             dataset / r["Target landmarks"], dataset / r["Source landmarks"])
        for pid, r in zip(ids, rows, strict=True)
    ]


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def peer_gray(rgb: np.ndarray) -> np.ndarray:
    """``1 - luminance`` in [0, 1], float32 (tissue bright, background dark).

    A one-channel uint8 image (``--modality fluorescence``) already has a dark background: it is
    only scaled to [0, 1].
    """
    if rgb.ndim == 2:
        return rgb.astype(np.float32) / np.float32(255.0)
    lum = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255.0
    return (1.0 - lum).astype(np.float32)


def unit_range(values: np.ndarray) -> np.ndarray:
    """``values`` scaled by their own 0.5/99.5 percentiles to [0, 1] and clipped (min/max when flat)."""
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max()) + 1e-6
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def fluorescence(rgb: np.ndarray) -> np.ndarray:
    """A brightfield RGB section rendered as a one-channel nuclear-stain fluorescence image.

    The haematoxylin optical density from colour deconvolution (``skimage.color.rgb2hed``,
    Ruifrok and Johnston's stain vectors), scaled by its 0.5/99.5 percentiles to uint8: nuclei
    bright on a dark background, eosin and DAB gone, as a DAPI channel of the same section would
    look. Geometry is untouched, so the pair's landmarks still hold.

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3), uint8

    Returns
    -------
    ndarray, shape (H, W), uint8

    Examples
    --------
    >>> img = np.full((4, 4, 3), 250, dtype=np.uint8); img[1:3, 1:3] = (60, 40, 140)  # a bluish nucleus
    >>> out = fluorescence(img)
    >>> out.shape, bool(out[1, 1] > out[0, 0])
    ((4, 4), True)
    """
    from skimage.color import rgb2hed

    return np.rint(255 * unit_range(rgb2hed(rgb[..., :3])[..., 0])).astype(np.uint8)


#: how the moving image of each pair is shown to every method (``--modality``)
MODALITIES: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {"brightfield": None, "fluorescence": fluorescence}


def _affine_from_points(transform_point: Callable[[tuple[float, float]], tuple[float, float]]) -> np.ndarray:
    """The 3x3 matrix of an affine point map, from the images of three points."""
    src = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    dst = np.array([transform_point((float(x), float(y))) for x, y in src])
    m = np.eye(3)
    m[:2, 2] = dst[0]
    m[:2, 0] = (dst[1] - dst[0]) / 100.0
    m[:2, 1] = (dst[2] - dst[0]) / 100.0
    return m


# --------------------------------------------------------------------------- methods
class Methods:
    """The registration methods, each ``(fixed_rgb, moving_rgb, pair) -> 3x3 fixed->moving``."""

    def __init__(self, *, threads: int, max_iterations: int | None, device: str, seed: int | None = None) -> None:
        self.threads = threads
        self.max_iterations = max_iterations
        self.device = device
        #: DRMIME's random seed (None: the library default); runs with several seeds show the spread
        self.seed = seed
        self._sitk: Any = None
        self._itk: Any = None
        #: image -> float32 gray in [0, 1] handed to the peers (another loader may swap it in).
        self.gray: Callable[[np.ndarray], np.ndarray] = peer_gray
        #: the last ``RegistrationResult`` of ``_register`` (for callers that want more than the matrix)
        self.last_result: Any = None

    # ---- availability and warm-up
    def available(self, method: str) -> str | None:
        """None when usable, else the reason it is skipped."""
        if method == "sitk":
            try:
                import SimpleITK as sitk  # noqa: N813
            except ImportError:
                return "SimpleITK is not installed (pip install 'drmime-batch[peers]')"
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(self.threads)
            self._sitk = sitk
        if method in ("elastix", "elastix-b"):
            try:
                import itk

                itk.ParameterObject  # noqa: B018 - the lazy elastix module must load
            except (ImportError, AttributeError):
                return "itk-elastix is not installed (pip install 'drmime-batch[peers]')"
            itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(self.threads)
            self._itk = itk
        return None

    def warm_up(self, method: str) -> None:
        """One untimed call on a tiny image (imports, lazy loading, thread pools)."""
        if method in ("identity", "floor", "floor-h"):
            return
        yy, xx = np.mgrid[:64, :64]
        blob = (255 * np.exp(-((xx - 30.0) ** 2 + (yy - 34.0) ** 2) / 120.0)).astype(np.uint8)
        img = np.repeat(255 - blob[..., None], 3, axis=2)
        fn = getattr(self, "run_" + method.replace("-", "_"), None)
        if fn is not None and method not in ("drmime", "drmime-h", "mse", "ncc", "mi"):
            fn(img, np.roll(img, 2, axis=1), None)
        elif fn is not None:
            self._register(img, img, transform="affine", metric="ncc", max_iterations=5, init="none")

    # ---- ours
    def _register(self, fixed: np.ndarray, moving: np.ndarray, **kw: Any) -> np.ndarray:
        import torch

        from drmime_batch import register

        torch.set_num_threads(self.threads)
        opts: dict[str, Any] = {"device": self.device}
        if self.seed is not None:
            opts["seed"] = self.seed
        if self.max_iterations is not None:
            opts["max_iterations"] = self.max_iterations
            opts["min_iterations"] = min(self.max_iterations, 10)
        opts.update(kw)
        self.last_result = register(fixed, moving, **opts)
        return np.asarray(self.last_result.matrix, dtype=np.float64)

    def run_drmime(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> np.ndarray:
        return self._register(f, m, transform="affine", metric="mine")

    def run_drmime_d(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> tuple[np.ndarray, Any]:
        matrix = self._register(f, m, transform="affine", metric="mine", deformable=True)
        return matrix, self.last_result.field

    def run_drmime_h(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> np.ndarray:
        return self._register(f, m, transform="homography", metric="mine")

    def run_mse(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> np.ndarray:
        return self._register(f, m, transform="affine", metric="mse")

    def run_ncc(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> np.ndarray:
        return self._register(f, m, transform="affine", metric="ncc")

    def run_mi(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> np.ndarray:
        return self._register(f, m, transform="affine", metric="mi")

    # ---- references
    @staticmethod
    def run_identity(f: np.ndarray, m: np.ndarray, _: Pair | None) -> np.ndarray:
        return np.eye(3)

    @staticmethod
    def run_floor(f: np.ndarray, m: np.ndarray, pair: Pair | None) -> np.ndarray:
        assert pair is not None
        return best_fit_matrix(read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks))

    @staticmethod
    def run_floor_h(f: np.ndarray, m: np.ndarray, pair: Pair | None) -> np.ndarray:
        assert pair is not None
        return best_fit_matrix(read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks),
                               kind="homography")

    # ---- peers
    def run_sitk(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> np.ndarray:
        sitk = self._sitk
        fixed = sitk.GetImageFromArray(self.gray(f))  # spacing 1, origin 0: physical = (x, y) pixels
        moving = sitk.GetImageFromArray(self.gray(m))
        initial = sitk.CenteredTransformInitializer(
            fixed, moving, sitk.AffineTransform(2), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        # a fixed seed: SimpleITK's seed 0 is sitkWallClock, a different sample (and result) every run
        reg.SetMetricSamplingPercentage(0.2, seed=1)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        reg.SetInitialTransform(initial, inPlace=False)
        final = reg.Execute(fixed, moving)
        # ITK transforms map fixed physical points to moving ones: our convention exactly.
        return _affine_from_points(final.TransformPoint)

    def run_elastix_b(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> tuple[np.ndarray, Any]:
        """elastix's default affine map, then its default B-spline map; the dense fixed -> moving field."""
        from drmime_batch.core._field import DisplacementField

        itk = self._itk
        fixed = itk.GetImageFromArray(np.ascontiguousarray(self.gray(f)))
        moving = itk.GetImageFromArray(np.ascontiguousarray(self.gray(m)))
        params = itk.ParameterObject.New()
        for kind in ("affine", "bspline"):
            pmap = params.GetDefaultParameterMap(kind)
            pmap["WriteResultImage"] = ["false"]
            pmap["MaximumNumberOfThreads"] = [str(self.threads)]
            params.AddParameterMap(pmap)
        _, result = itk.elastix_registration_method(fixed, moving, parameter_object=params, log_to_console=False)
        # transformix writes deformationField.nii into its output directory (the working directory
        # by default): give it a throwaway one
        with tempfile.TemporaryDirectory(prefix="drmime-transformix-") as tmp:
            field = itk.transformix_deformation_field(moving, result, output_directory=tmp)  # T(p) - p, px
        d = np.moveaxis(np.asarray(field, dtype=np.float64), -1, 0)  # (2, H, W): dx, dy
        # the identity matrix after a dense displacement (only the forward map is scored here)
        return np.eye(3), DisplacementField(d, np.zeros_like(d), origin=(0, 0), spacing=(1, 1))

    def run_elastix(self, f: np.ndarray, m: np.ndarray, _: Pair | None) -> np.ndarray:
        itk = self._itk
        fixed = itk.GetImageFromArray(np.ascontiguousarray(self.gray(f)))
        moving = itk.GetImageFromArray(np.ascontiguousarray(self.gray(m)))
        params = itk.ParameterObject.New()
        amap = params.GetDefaultParameterMap("affine")
        amap["WriteResultImage"] = ["false"]
        amap["MaximumNumberOfThreads"] = [str(self.threads)]
        params.AddParameterMap(amap)
        _, result = itk.elastix_registration_method(fixed, moving, parameter_object=params, log_to_console=False)
        tp = [float(v) for v in result.GetParameter(0, "TransformParameters")]
        centre = np.array([float(v) for v in result.GetParameter(0, "CenterOfRotationPoint")])
        a = np.array([[tp[0], tp[1]], [tp[2], tp[3]]])
        t = np.array(tp[4:6])
        # elastix AffineTransform: T(p) = A (p - c) + c + t, fixed -> moving physical points.
        out = np.eye(3)
        out[:2, :2] = a
        out[:2, 2] = t + centre - a @ centre
        return out


# --------------------------------------------------------------------------- running
def run(pairs: list[Pair], methods: list[str], runner: Methods, console: Any,
        moving_view: Callable[[np.ndarray], np.ndarray] | None = None) -> list[Outcome]:
    """Every method on every pair; ``moving_view`` (see :data:`MODALITIES`) re-renders each moving image."""
    outcomes: list[Outcome] = []
    usable = []
    for method in methods:
        reason = runner.available(method)
        if reason:
            console.print(f"[yellow]skipping {method}: {reason}[/yellow]")
            continue
        runner.warm_up(method)
        usable.append(method)
    for pair in pairs:
        f_rgb, m_rgb = load_rgb(pair.fixed), load_rgb(pair.moving)
        if moving_view is not None:
            m_rgb = moving_view(m_rgb)
        fixed_lm, moving_lm = read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks)
        for method in usable:
            out = Outcome(pair.pair_id, method)
            fn = getattr(runner, "run_" + method.replace("-", "_"))
            t0 = time.perf_counter()
            field = None
            try:
                matrix = fn(f_rgb, m_rgb, pair)
                if isinstance(matrix, tuple):  # a deformable method: (matrix, displacement field or None)
                    matrix, field = matrix
            except Exception as exc:  # noqa: BLE001 - a failed method is a result, not a crash of the benchmark
                out.seconds = time.perf_counter() - t0
                out.error = f"{type(exc).__name__}: {exc}"
                logger.debug("%s on %s failed:\n%s", method, pair.pair_id, traceback.format_exc())
            else:
                out.seconds = time.perf_counter() - t0
                out.matrix = np.asarray(matrix, dtype=np.float64).tolist()
                out.scores = evaluate_matrix(matrix, fixed_lm, moving_lm, fixed_shape=f_rgb.shape,
                                             field=field).to_dict()
                if method == "drmime-d":
                    out.scores["deformation"] = dict(runner.last_result.deformation)
            outcomes.append(out)
            rtre = out.scores.get("rtre_median")
            console.log(f"{pair.pair_id:>18} {method:>9}: "
                        + (f"rTRE {rtre:.4f}  {out.seconds:6.2f} s" if rtre is not None else f"[red]{out.error}[/red]"))
    return outcomes


def summarise_outcomes(outcomes: list[Outcome], methods: list[str]) -> dict[str, Any]:
    by: dict[tuple[str, str], Outcome] = {(o.pair_id, o.method): o for o in outcomes}
    pair_ids = list(dict.fromkeys(o.pair_id for o in outcomes))
    present = [m for m in methods if any(o.method == m for o in outcomes)]
    summary: dict[str, Any] = {}
    for method in present:
        rt = [by[(p, method)].scores.get("rtre_median") for p in pair_ids if (p, method) in by]
        secs = [by[(p, method)].seconds for p in pair_ids if (p, method) in by]
        within = []
        for p in pair_ids:
            o, fl = by.get((p, method)), by.get((p, "floor"))
            if o and fl and o.scores and fl.scores:
                within.append(o.scores["rtre_median"] <= FLOOR_FACTOR * fl.scores["rtre_median"])
        summary[method] = {
            "rtre_median": summarise(rt),
            "rtre_mean_of_means": summarise(by[(p, method)].scores.get("rtre_mean") for p in pair_ids
                                            if (p, method) in by),
            "robustness": summarise(by[(p, method)].scores.get("robustness") for p in pair_ids if (p, method) in by),
            "seconds": summarise(secs),
            "failed": sum(1 for p in pair_ids if (p, method) in by and by[(p, method)].error),
            f"within_{FLOOR_FACTOR}x_floor": (sum(within), len(within)) if within else None,
        }
    for method in present:
        ratios = {}
        for peer in [p for p in (*PEERS, "identity", "floor") if p in summary and p != method]:
            a, b = summary[method]["rtre_median"]["median"], summary[peer]["rtre_median"]["median"]
            sa, sb = summary[method]["seconds"]["median"], summary[peer]["seconds"]["median"]
            ratios[peer] = {
                "rtre_median_ratio": (a / b) if a is not None and b else None,
                "seconds_ratio": (sa / sb) if sa is not None and sb else None,
            }
        summary[method]["ratio_to"] = ratios
    return summary


def print_tables(outcomes: list[Outcome], summary: dict[str, Any], methods: list[str], console: Any) -> None:
    from rich.table import Table

    by = {(o.pair_id, o.method): o for o in outcomes}
    pair_ids = list(dict.fromkeys(o.pair_id for o in outcomes))
    present = [m for m in methods if m in summary]
    per_pair = Table(title="median rTRE per pair (seconds)")
    per_pair.add_column("pair", no_wrap=True)
    for m in present:
        per_pair.add_column(m, justify="right")
    for p in pair_ids:
        cells = [p]
        for m in present:
            o = by.get((p, m))
            if o is None:
                cells.append("")
            elif o.error:
                cells.append("[red]failed[/red]")
            else:
                fl = by.get((p, "floor"))
                mark = ""
                if fl and fl.scores and m not in ("floor", "floor-h", "identity"):
                    mark = "" if o.scores["rtre_median"] <= FLOOR_FACTOR * fl.scores["rtre_median"] else " *"
                cells.append(f"{o.scores['rtre_median']:.4f} ({o.seconds:.1f}){mark}")
        per_pair.add_row(*cells)
    console.print(per_pair)
    console.print(f"* = above {FLOOR_FACTOR}x the pair's affine floor")

    table = Table(title="summary over pairs")
    for name in ("method", "median rTRE", "mean rTRE", "p90 rTRE", "robustness", "s/pair (median)",
                 f"≤{FLOOR_FACTOR}x floor", "failed", *[f"÷ {p}" for p in PEERS if p in summary]):
        table.add_column(name, justify="left" if name == "method" else "right")
    for m in present:
        s = summary[m]
        r = s["rtre_median"]
        within = s[f"within_{FLOOR_FACTOR}x_floor"]
        ratios = []
        for peer in [p for p in PEERS if p in summary]:
            q = s["ratio_to"].get(peer)
            ratios.append("-" if not q or q["rtre_median_ratio"] is None else
                          f"{q['rtre_median_ratio']:.2f} / {q['seconds_ratio']:.1f}x s")
        table.add_row(
            m,
            "-" if r["median"] is None else f"{r['median']:.4f}",
            "-" if r["mean"] is None else f"{r['mean']:.4f}",
            "-" if r["p90"] is None else f"{r['p90']:.4f}",
            "-" if s["robustness"]["median"] is None else f"{s['robustness']['mean']:.2f}",
            "-" if s["seconds"]["median"] is None else f"{s['seconds']['median']:.2f}",
            "-" if within is None else f"{within[0]}/{within[1]}",
            str(s["failed"]),
            *ratios,
        )
    console.print(table)
    console.print("÷ peer: (median rTRE of the method) / (median rTRE of the peer) / seconds ratio")


def machine() -> dict[str, Any]:
    """The machine, with the versions of the peers this benchmark runs."""
    return machine_info(versions=("torch", "SimpleITK", "itk", "numpy"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("dataset", nargs="?", type=Path, default=DEFAULT_DATASET,
                   help="folder with an ANHIR cover table pairs.csv (default: the bundled lung-lesion-3)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated subset of {','.join(ALL_METHODS)} (default: all)")
    p.add_argument("--pairs", type=int, default=None, help="only the first N pairs")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write every figure to OUT as JSON")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch / ITK / elastix (default 2)")
    p.add_argument("--max-iterations", type=int, default=None,
                   help="override DRMIME/baseline iterations (quick runs; default: the library's defaults)")
    p.add_argument("--seed", type=int, default=None,
                   help="DRMIME's random seed (default: the library's); several seeds show the run-to-run spread")
    p.add_argument("--device", default="auto", help="torch device for drmime and baselines (default auto)")
    p.add_argument("--modality", choices=sorted(MODALITIES), default="brightfield",
                   help="how each moving image is shown to every method: as scanned (brightfield, default), or "
                        "rendered as a one-channel nuclear-stain fluorescence image of the same section "
                        "(fluorescence: a multimodal set with the pairs' own landmarks)")
    p.add_argument("--deformable", action="store_true",
                   help="also run DRMIME's deformable stage (drmime-d) and elastix's default B-spline map after its "
                        "affine (elastix-b); add --methods to run only those")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if args.deformable:
        methods += [m for m in DEFORMABLE_METHODS if m not in methods]
    if "floor" not in methods:
        methods.insert(0, "floor")  # the 1.3x-floor check needs it, and it costs nothing
    args.methods = methods
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    console = Console()
    pairs = read_cover_table(args.dataset)
    if args.pairs is not None:
        pairs = pairs[: args.pairs]
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    console.print(f"{len(pairs)} pairs from {args.dataset.name} ({args.modality} moving images), methods: "
                  f"{', '.join(args.methods)}, {args.threads} threads")
    runner = Methods(threads=args.threads, max_iterations=args.max_iterations, device=args.device, seed=args.seed)
    t0 = time.perf_counter()
    outcomes = run(pairs, args.methods, runner, console, MODALITIES[args.modality])
    summary = summarise_outcomes(outcomes, args.methods)
    print_tables(outcomes, summary, args.methods, console)
    console.print(f"total {time.perf_counter() - t0:.0f} s; command: {command}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command,
            "dataset": args.dataset.name,
            "modality": args.modality,
            "threads": args.threads,
            "max_iterations": args.max_iterations,
            "seed": args.seed,
            "machine": machine(),
            "pairs": [o.__dict__ for o in outcomes],
            "summary": summary,
        }, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
