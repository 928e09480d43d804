"""The registration configuration: one frozen dataclass, defaults that work on real slides.

It imports neither torch nor dask: the queue checks a batch's options against it when the batch
is submitted, and ``status`` stays light. :mod:`drmime_batch.core` re-exports it.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

from drmime_batch.errors import ConfigError

__all__ = ["METRIC_NAMES", "TRANSFORMS", "RegistrationConfig"]

#: The supported transform kinds and their number of parameters (sub-bases of the exp map).
TRANSFORMS: dict[str, int] = {
    "translation": 2,
    "rigid": 3,
    "similarity": 4,
    "affine": 6,
    "homography": 8,
}

METRIC_NAMES = ("mine", "mse", "ncc", "mi")


@dataclass(frozen=True)
class RegistrationConfig:
    """Every setting of one registration. A user should never need to touch the learning rates.

    Parameters
    ----------
    transform : {"translation", "rigid", "similarity", "affine", "homography"}
        The transform family (its sub-basis of the matrix exponential).
    metric : {"mine", "mse", "ncc", "mi"}
        ``"mine"`` is DRMIME's MINE estimate of mutual information; the others are baselines
        (mean squared error, normalised cross-correlation, Parzen-histogram MI) in the same optimiser.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    seed : int
        Seeds sampling, the network and the shuffles; runs on the CPU are deterministic.
    max_size : int
        Longer side (pixels) of the finest pyramid level; larger inputs are shrunk first.
    levels : int
        Pyramid levels optimised jointly (fewer when the image is small).
    points : int
        Points sampled afresh per level and iteration (the cost per iteration); a level never
        gets more than a quarter of its pixel count (the coarsest levels are a few hundred
        pixels: more points there resample the same pixels).
    fine_points : int
        Points for the finest level (its values are noisier, it gets more).
    max_iterations, min_iterations : int
        Bounds on the gradient-descent iterations of the transform (after the warm-up). The
        budget is split: the first learning rate runs at most ``max_iterations - lr_decays *
        patience`` iterations, each reduced rate at most ``patience`` (when that first share is
        at least ``min_iterations``); a plateau ends a phase earlier.
    warmup : int
        Iterations that train only the statistics network before the transform moves (``mine``).
    patience : int
        Iterations without improvement of the smoothed similarity before the learning rate drops.
    lr_decays : int
        Learning-rate drops (by ``lr_factor``) before stopping: at a plateau of the smoothed
        similarity or when the phase's share of ``max_iterations`` is spent.
    lr_transform, lr_mine, lr_fine : float
        Adam learning rates of the shared transform parameters, of the statistics network and of
        the finest level's correction (0, the default, disables it: on the lung-lesion-3 pairs it
        made the median landmark error worse, see ``benchmarks/RESULTS.md``).
    hidden : int
        Width of the statistics network.
    mine_ema : float
        Rate of the moving average in MINE's bias-corrected gradient (0: plain DV gradient).
    init : {"search", "moments", "none"}
        Coarse initialisation: rotation (and flip) search after centre-of-mass alignment,
        centre-of-mass alignment only, or the identity.
    init_angles : int
        Rotations tried by the search (evenly spaced over 360 degrees).
    init_flip : bool
        Also try the mirrored moving image (sections mounted upside down).
    sampling : {"edges", "uniform"}
        Where fixed points are drawn: weighted towards tissue edges, or uniformly.
    symmetric : bool
        Draw half the points in the moving image and map them back through the inverse, which
        cancels the similarity's bias towards shrinking one image onto the other.
    mask : {"auto", "none"}
        ``"auto"`` computes a tissue mask of each image (:func:`drmime_batch.core.tissue_mask`) where
        no mask is given: it places the initialisation's centres of mass, and the registration
        crops to the tissue (with a margin) before shrinking to ``max_size``, so a small biopsy on a
        large slide keeps its resolution; marker-pen ink (blue, green, black) is painted over with
        the surrounding colours first. ``"none"`` uses the whole images as given (user masks still
        apply).
    threads : int or None
        Torch CPU threads (None leaves torch's default).
    deformable : bool
        After the linear stage, optimise a dense deformation on top of it (a stationary velocity
        field on a coarse grid, integrated by scaling and squaring: invertible, no folds), with the
        same MINE objective plus a smoothness penalty. Kept only when it raises the similarity
        score and the Jacobian stays positive (``result.deformation`` says which).
    deformable_grid : int
        Velocity-grid cells along the longer side of the fixed image.
    deformable_smoothness : float
        Weight of the penalty on the velocity's local variation: the mean squared deviation of its
        spatial derivatives from their mean over the grid. A global affine part of the velocity
        is free: it corrects what the linear stage left, which the penalty should not resist, so
        the weight can hold the local variation firmly without holding that correction back.
    deformable_iterations : int
        Most iterations of the deformable stage (it stops earlier on a plateau, mostly after
        300-450): a bound on its cost, each iteration costing about twice one of the linear stage.
    deformable_points : int
        Points sampled afresh per level and iteration in the deformable stage (capped per level
        as ``points`` is). Twice the linear stage's: each of the field's hundreds of parameters
        learns only from the points near its node, and with fewer the gradient noise damps its
        steps so the field stops short of the alignment.
    deformable_min_cell : float
        The deformable stage optimises only the pyramid levels on which a velocity-grid cell spans
        at least this many pixels (the finest level always). On coarser levels a cell holds a
        handful of pixels and fewer points, so each node's gradient there is noise; in the mean
        over levels it would weigh as much as a fine level's. The linear stage keeps every level.
    lr_deformable : float
        Adam learning rate of the velocity (frame units: 1 is half the longer side).
    consensus : bool
        After the linear stage (when ``deformable`` is off), refine it briefly with a coarse
        deformation (same objective) and replace it by the transform of the same family closest
        to that deformation over the fixed tissue (robust least squares, Tukey's biweight): when
        pieces of a section moved apart between cuts, the linear optimum follows the most
        distinctive piece, this follows the tissue that agrees. Kept only when it keeps at least
        a quarter of the similarity the linear result gained over its start (a deformation gone
        astray loses more);
        ``result.init["consensus"]`` says which, and why.
    consensus_grid : int
        Velocity-grid cells of that coarse deformation along the longer side.
    consensus_iterations : int
        Most iterations of that deformation (never more than ``max_iterations``).
    consensus_smoothness : float
        Weight of that deformation's smoothness penalty: the mean squared spatial derivative of
        its velocity (affine parts included, so the deformation stays close to the linear result
        it is fitted back to).
    """

    transform: str = "affine"
    metric: str = "mine"
    device: str = "auto"
    seed: int = 0
    max_size: int = 1024
    levels: int = 6
    points: int = 4500
    fine_points: int = 4500
    max_iterations: int = 320
    warmup: int = 40
    min_iterations: int = 150
    patience: int = 40
    lr_decays: int = 3
    lr_factor: float = 0.3
    lr_transform: float = 1e-3
    lr_mine: float = 5e-3
    lr_fine: float = 0.0
    hidden: int = 32
    mine_ema: float = 0.01
    init: str = "search"
    init_angles: int = 36
    init_flip: bool = True
    sampling: str = "uniform"
    symmetric: bool = True
    mask: str = "auto"
    threads: int | None = None
    deformable: bool = False
    deformable_grid: int = 16
    deformable_smoothness: float = 6.0
    deformable_iterations: int = 480
    deformable_points: int = 9000
    deformable_min_cell: float = 4.0
    lr_deformable: float = 2e-3
    consensus: bool = True
    consensus_grid: int = 4
    consensus_iterations: int = 240
    consensus_smoothness: float = 3.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"transform must be one of {sorted(TRANSFORMS)}, got {self.transform!r}")
        if self.metric not in METRIC_NAMES:
            raise ConfigError(f"metric must be one of {list(METRIC_NAMES)}, got {self.metric!r}")
        if self.init not in ("search", "moments", "none"):
            raise ConfigError(f"init must be 'search', 'moments' or 'none', got {self.init!r}")
        if self.mask not in ("auto", "none"):
            raise ConfigError(f"mask must be 'auto' or 'none', got {self.mask!r}")
        if self.sampling not in ("edges", "uniform"):
            raise ConfigError(f"sampling must be 'edges' or 'uniform', got {self.sampling!r}")
        for name in ("max_size", "levels", "points", "fine_points", "max_iterations", "hidden", "init_angles",
                     "deformable_grid", "deformable_iterations", "deformable_points", "consensus_grid", "consensus_iterations"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.min_iterations > self.max_iterations:
            object.__setattr__(self, "min_iterations", self.max_iterations)

    def _check_types(self) -> None:
        """Refuse values of the wrong kind now (``lr_transform="abc"`` would fail every pair later)."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if value is None and kind == "int | None":
                continue
            if kind == "float":
                if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
                    raise ConfigError(f"{f.name} must be a number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
            elif kind in ("int", "int | None"):
                if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and float(value).is_integer():
                    value = int(float(value))
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise ConfigError(f"{f.name} must be an integer, got {value!r}")
                object.__setattr__(self, f.name, int(value))
            elif kind == "bool" and not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, got {value!r}")
            elif kind == "str" and not isinstance(value, str):
                raise ConfigError(f"{f.name} must be a string, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        out = dataclasses.asdict(self)
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistrationConfig:
        """Build from a dict; unknown keys are refused with their names."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown registration option(s) {unknown}; known: {sorted(names)}")
        return cls(**dict(data))
