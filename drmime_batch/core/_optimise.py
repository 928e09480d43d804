"""The DRMIME optimisation loop: all pyramid levels at once, fresh random points every iteration.

Per iteration and level, fixed-image points are drawn afresh (weighted towards structure), mapped
through the current transform, and only the points that land inside the moving image are kept
(no zero padding, which would reward pushing tissue off the image). The fixed values and the
moving values at those points (bilinear, ``align_corners=False``, edge pixels replicated: zero
padding would darken a half-pixel frame along every image edge, a structure two images of the same
size share exactly at the identity, and MINE locks onto it) feed one shared MINE network;
the loss is minus the mean of the per-level Donsker–Varadhan bounds. The cost of an iteration
depends on the number of points, never on the image size.

The transform is ``M0 @ exp(sum theta_i B_i)`` on every level, and ``M0 @ exp(sum (theta_i +
delta_i) B_i)`` on the finest one (DRMIME's fine-level correction); ``M0`` comes from the coarse
initialisation. Adam drives the transform and the network with separate learning rates; when the
smoothed similarity stops improving for ``patience`` iterations the learning rates drop, and after
``lr_decays`` drops the loop stops (or at ``max_iterations``). The returned parameters are an
exponential moving average of the last iterates, which removes the jitter of stochastic sampling;
each drop restarts the transform from that average, so the slower phases refine the average
rather than wherever the jitter had left the last iterate.
Finally the result is compared with its start by the initialisation's score, and the start is
kept when the result is worse (:func:`never_worse`); then, unless ``consensus`` is off, it is
replaced by the consensus of the tissue (:func:`_consensus_stage`,
:mod:`drmime_batch.core._consensus`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from drmime_batch.core._bases import basis, exp_transform
from drmime_batch.core._config import RegistrationConfig
from drmime_batch.core._consensus import fit_transform_to_map, inside_moving, tissue_points
from drmime_batch.core._convention import grid_sample_matrix, level_to_full_matrix, normalised_frame_matrix
from drmime_batch.core._deformable import DisplacementGrid, VelocityField, jacobian_stats
from drmime_batch.core._init import Initialisation, centre_of_mass, comparable_score, search_initialisation
from drmime_batch.core._metrics import METRICS
from drmime_batch.core._mine import StatisticsNetwork
from drmime_batch.core._pyramid import _blur, gaussian_pyramid, sampling_weights
from drmime_batch.errors import ConfigError, RegistrationDivergedError

__all__ = ["OptimisationOutcome", "never_worse", "optimise", "resolve_device"]

ProgressCallback = Callable[[int, float], None]

_POOL = 1 << 18  # candidate sample points per level, drawn once by weight
_INIT_SIZES = (32, 48, 64)  # longer sides of the images the initialisation search scores on
_SCORE_SIZES = (64, 128, 256)  # ... and of those the start, candidates and result are compared on
#: The result falls back to its start when its score is lower than the start's by more than this
#: fraction (the score's noise between two nearby poses is well below it).
FALLBACK_TOLERANCE = 0.05
#: The consensus fit (see :func:`_consensus_stage`) replaces the linear result only when it keeps at
#: least this share of the similarity the linear result gained over its start.
CONSENSUS_KEEP = 0.25
#: ... and only when it moves the tissue by at least this many pixels of the registered level on
#: average: a smaller change is within what the coarse deformation resolves (noise), and the
#: linear optimum sits exactly on the similarity's peak.
CONSENSUS_MIN_MOVE_PX = 1.0
#: The stored field is integrated on a grid this many times finer than the velocity's (forward and
#: inverse then undo each other to a few hundredths of a pixel).
_STORED_REFINE = 4


def never_worse(
    start: torch.Tensor,
    result: torch.Tensor,
    scorer: Callable[[torch.Tensor], torch.Tensor],
    *,
    tolerance: float = FALLBACK_TOLERANCE,
) -> tuple[torch.Tensor, dict[str, float | bool]]:
    """``result``, or ``start`` when ``result`` scores worse: optimisation never leaves a pair worse.

    Parameters
    ----------
    start, result : Tensor, shape (3, 3)
        The initialisation and the optimised matrix (any coordinates ``scorer`` understands).
    scorer : callable
        ``scorer(matrices (K, 3, 3)) -> (K,)``, larger is better (the initialisation's score).
    tolerance : float
        Fraction of the start's score the result may lose before the start is kept.

    Returns
    -------
    matrix : Tensor, shape (3, 3)
    verdict : dict
        ``start_score``, ``final_score`` and ``fallback`` (True when the start was kept).

    Examples
    --------
    >>> target = torch.eye(3, dtype=torch.float64)
    >>> scorer = lambda m: -(m - target).abs().sum((1, 2))  # closer to the identity is better
    >>> off = target.clone(); off[0, 2] = 5.0
    >>> _, verdict = never_worse(target, off, scorer)
    >>> verdict["fallback"]
    True
    """
    start_score, final_score = (float(v) for v in scorer(torch.stack([start, result])))
    fallback = not math.isfinite(final_score) or final_score < start_score - tolerance * abs(start_score)
    verdict = {"start_score": start_score, "final_score": final_score, "fallback": bool(fallback)}
    return (start if fallback else result), verdict


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; other names pass through torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")
    return dev


@dataclass(frozen=True)
class OptimisationOutcome:
    """What :func:`optimise` found, in the pixels of the tensors given (the API wraps it into a record).

    ``field`` is the kept deformation in those pixels (``forward``, ``inverse``, ``origin``,
    ``spacing``), ``deformation`` the deformable stage's record; both None without that stage.
    """

    matrix: np.ndarray
    parameters: list[float]
    level_scores: list[float]
    history: list[float]
    iterations: int
    init: dict[str, Any]
    timings: dict[str, float]
    device: str
    levels: int
    deformation: dict[str, object] | None = None
    field: dict[str, np.ndarray] | None = None


def _t(m: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(m, dtype=np.float64), device=device)


def _downsample(shape_full: Sequence[int], shape_level: Sequence[int]) -> tuple[float, float]:
    return shape_full[1] / shape_level[1], shape_full[0] / shape_level[0]


def _shrink(image: torch.Tensor, size: int) -> torch.Tensor:
    """A copy whose longer side is ``size`` pixels, blurred by one pixel against aliasing/noise."""
    factor = size / max(image.shape[1:])
    if factor < 1:
        shape = [max(8, round(s * factor)) for s in image.shape[1:]]
        image = F.interpolate(image.unsqueeze(0), size=shape, mode="bilinear", antialias=True, align_corners=False)[0]
    return _blur(image, 1.0)


def _mask_centre(mask: torch.Tensor | None, small: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """Tissue centre ``(x, y)`` of ``small`` within ``mask`` (None without a mask)."""
    if mask is None:
        return None
    m = F.interpolate(mask.to(device=device, dtype=torch.float64)[None, None], size=small.shape[1:], mode="area")[0, 0]
    return centre_of_mass(small, m)


def _sample_pairs(
    source: torch.Tensor,
    target: torch.Tensor,
    pool: torch.Tensor,
    n: int,
    mapping: torch.Tensor,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of ``source`` at ``n`` fresh points and of ``target`` where ``mapping`` sends them.

    Points are pool pixels (``pool``: (P, 2) float64 pixel coordinates ``x, y``) plus a uniform
    sub-pixel jitter; ``mapping`` takes ``source`` pixel
    coordinates to ``target`` grid coordinates. Points landing outside ``target`` are dropped.
    """
    return _sample_mapped(source, target, pool, n, lambda px: _affine(mapping, px), gen)


def _sample_mapped(
    source: torch.Tensor,
    target: torch.Tensor,
    pool: torch.Tensor,
    n: int,
    to_target: Callable[[torch.Tensor], torch.Tensor],
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`_sample_pairs` for any map: ``to_target`` takes source pixels (N, 2) to target grid (N, 2)."""
    device = source.device
    h, w = source.shape[1:]
    pick = pool[torch.randint(pool.shape[0], (n,), generator=gen).to(device)]
    jitter = torch.rand(n, 2, generator=gen).to(device=device, dtype=torch.float64) - 0.5
    px = pick + jitter
    grid_t = to_target(px)
    inside = (grid_t.abs() <= 1.0).all(1)
    grid_s = (px[inside] + 0.5) / torch.tensor([w, h], dtype=torch.float64, device=device) * 2 - 1
    return _sample_values(source, grid_s.float()), _sample_values(target, grid_t[inside].float())


def _affine(m: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """``m`` (3, 3) applied to points (N, 2), with the perspective divide."""
    h = torch.cat([xy, torch.ones_like(xy[:, :1])], 1) @ m.T
    return h[:, :2] / h[:, 2:3]


def _mine_values(
    net: StatisticsNetwork, xs: list[torch.Tensor], ys: list[torch.Tensor], gen: torch.Generator,
    ema_lme: list[float | None], rate: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-level Donsker–Varadhan bounds and the surrogates whose gradients the optimiser follows.

    With ``rate`` > 0, MINE's bias-corrected gradient: the mean of exp(T) in the denominator of
    the gradient of log-mean-exp is replaced by its moving average over iterations (``ema_lme``,
    updated in place), since a single minibatch's estimate biases the transform's gradient.
    """
    sizes = [x.shape[0] for x in xs]
    x_all, y_all = torch.cat(xs), torch.cat(ys)
    offsets = np.cumsum([0] + sizes)
    perm = torch.cat([torch.randperm(n, generator=gen) + int(o)
                      for n, o in zip(sizes, offsets[:-1], strict=True)]).to(x_all.device)
    scores = net(torch.cat([x_all, x_all]), torch.cat([y_all, y_all[perm]]))
    joint, marginal = scores[: len(x_all)], scores[len(x_all):]
    values, surrogates = [], []
    for lvl, (a, b) in enumerate(itertools.pairwise(offsets)):
        log_mean_exp = torch.logsumexp(marginal[a:b], 0) - math.log(b - a)
        values.append(joint[a:b].mean() - log_mean_exp)
        if rate > 0:
            lme = float(log_mean_exp.detach())
            previous = ema_lme[lvl]
            smoothed = lme if previous is None else (1 - rate) * previous + rate * lme
            ema_lme[lvl] = smoothed
            surrogates.append(joint[a:b].mean() - torch.exp(log_mean_exp - smoothed))
        else:
            surrogates.append(values[-1])
    return values, surrogates


def _deformable_stage(
    config: RegistrationConfig,
    matrix: torch.Tensor,
    pyr_f: list[torch.Tensor],
    pyr_m: list[torch.Tensor],
    pools_f: list[torch.Tensor],
    pools_m: list[torch.Tensor],
    f_to_frame: list[torch.Tensor],
    m_to_frame: list[torch.Tensor],
    frame_to_grid_f: list[torch.Tensor],
    frame_to_grid_m: list[torch.Tensor],
    n_points: list[int],
    net: StatisticsNetwork | None,
    gen: torch.Generator,
    scorer: Callable[..., torch.Tensor],
    callback: ProgressCallback | None,
    start_iteration: int,
    *,
    free_affine: bool = True,
) -> tuple[VelocityField | None, dict[str, object]]:
    """Optimise a velocity field on top of the frame matrix ``matrix``; the field, or None, and a record.

    The field is kept only when it raises ``scorer``'s value over the linear result and the
    Jacobian determinant stays positive; the record says which and why. ``free_affine``: the
    smoothness penalty leaves a global affine part of the velocity free (see
    :meth:`VelocityField.roughness`); the consensus's coarse deformation penalises it.
    """
    device = matrix.device
    h, w = pyr_f[0].shape[1:]
    corners = _affine(f_to_frame[0], torch.tensor([[-0.5, -0.5], [w - 0.5, h - 0.5]], dtype=torch.float64,
                                                    device=device))
    field = VelocityField(tuple(corners[0].tolist()), tuple(corners[1].tolist()), cells=config.deformable_grid,
                          device=device)
    if net is None:  # baseline metrics: a fresh network is not needed, their values are direct
        params = [{"params": field.parameters(), "lr": config.lr_deformable}]
    else:
        params = [{"params": field.parameters(), "lr": config.lr_deformable},
                  {"params": list(net.parameters()), "lr": config.lr_mine}]
    opt = torch.optim.Adam(params)
    metric_fn = METRICS.get(config.metric)
    inverse = torch.linalg.inv(matrix)
    # Levels on which a grid cell spans fewer than ``deformable_min_cell`` pixels are left out:
    # they cannot place a node (a cell there holds a handful of pixels and, capped at a quarter of
    # the level, fewer points), so their per-node gradients are noise, weighted like the finer
    # levels' in the mean. The linear stage keeps them; it needs their reach, this stage starts aligned.
    cell_px = [field.spacing / float(f_to_frame[lvl][0, 0]) for lvl in range(len(pyr_f))]
    n_levels = max(1, sum(c >= config.deformable_min_cell for c in cell_px))
    ema: float | None = None
    best, since_best, decays = -math.inf, 0, 0
    ema_lme: list[float | None] = [None] * n_levels
    average = torch.zeros_like(field.velocity)
    iteration = since_decay = 0
    first_phase, later_phase = phase_budgets(config, config.deformable_iterations)
    t0 = time.perf_counter()
    for iteration in range(1, config.deformable_iterations + 1):
        forward = field.displacement(1.0)
        backward = field.displacement(-1.0) if config.symmetric else None
        xs, ys = [], []
        for lvl in range(n_levels):
            n = n_points[lvl] // 2 if config.symmetric else n_points[lvl]

            def to_moving(px: torch.Tensor, lvl: int = lvl, u: DisplacementGrid = forward) -> torch.Tensor:
                p = _affine(f_to_frame[lvl], px)
                return _affine(frame_to_grid_m[lvl] @ matrix, p + u(p))

            src_f, dst_m = _sample_mapped(pyr_f[lvl], pyr_m[lvl], pools_f[lvl], n, to_moving, gen)
            if backward is not None:
                def to_fixed(px: torch.Tensor, lvl: int = lvl, u: DisplacementGrid = backward) -> torch.Tensor:
                    r = _affine(inverse @ m_to_frame[lvl], px)
                    return _affine(frame_to_grid_f[lvl], r + u(r))

                src_m, dst_f = _sample_mapped(pyr_m[lvl], pyr_f[lvl], pools_m[lvl], n, to_fixed, gen)
                src_f, dst_m = torch.cat([src_f, dst_f]), torch.cat([dst_m, src_m])
            if src_f.shape[0] < 16:
                return None, {"kept": False, "reason": f"the deformation moved the images apart at level {lvl}"}
            xs.append(src_f)
            ys.append(dst_m)
        if net is not None:
            values, surrogates = _mine_values(net, xs, ys, gen, ema_lme, config.mine_ema)
        else:
            assert metric_fn is not None
            values = surrogates = [metric_fn(x, y) for x, y in zip(xs, ys, strict=True)]
        similarity = torch.stack(values).mean()
        if not torch.isfinite(similarity):
            return None, {"kept": False, "reason": f"the similarity became non-finite at iteration {iteration}"}
        loss = -torch.stack(surrogates).mean() + config.deformable_smoothness * field.roughness(free_affine=free_affine)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            average = field.velocity.detach().clone() if iteration == 1 else 0.95 * average + 0.05 * field.velocity
        value = float(similarity.detach())
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        if iteration % 10 == 0 and callback is not None:
            callback(start_iteration + iteration, ema)
        if ema > best + 1e-3 * max(1.0, abs(best) if math.isfinite(best) else 1.0):
            best, since_best = ema, 0
        else:
            since_best += 1
        since_decay += 1
        plateau = since_best >= config.patience and iteration >= min(config.min_iterations, config.deformable_iterations)
        budget = first_phase if decays == 0 else later_phase
        if plateau or (budget is not None and since_decay >= budget):
            if decays >= config.lr_decays:
                break
            decays += 1
            since_best, since_decay, best = 0, 0, ema
            for group in opt.param_groups:
                group["lr"] *= config.lr_factor
    with torch.no_grad():
        field.velocity.copy_(average)
        u = field.displacement(1.0)
        start_score, final_score = (float(scorer(matrix[None])[0]), float(scorer(matrix[None], deform=u)[0]))
        jac = jacobian_stats(u, field.lower, field.upper)
        top = float(u.values.abs().max())
    record: dict[str, object] = {
        "iterations": iteration, "seconds": time.perf_counter() - t0, "grid": list(field.velocity.shape[1:]),
        "points": list(n_points[:n_levels]), "levels": n_levels,
        "linear_score": start_score, "score": final_score, "max_displacement_frame": top, **jac,
    }
    if not math.isfinite(final_score) or final_score <= start_score:
        return None, record | {"kept": False, "reason": "the deformation did not raise the similarity score"}
    if not jac["jacobian_min"] > 0:
        return None, record | {"kept": False, "reason": "the deformation folds (Jacobian determinant <= 0)"}
    return field, record | {"kept": True, "reason": None}


def _consensus_stage(
    config: RegistrationConfig,
    m0: torch.Tensor,
    frame_matrix: torch.Tensor,
    params: torch.Tensor,
    bases: torch.Tensor,
    verdict: dict[str, Any],
    scorer: Callable[..., torch.Tensor],
    points: torch.Tensor,
    deform: Callable[[RegistrationConfig, torch.Tensor], tuple[VelocityField | None, dict[str, object]]],
    *,
    pixel: float,
    moving_grid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, object]]:
    """The linear result replaced by the family's closest fit to a coarse deformation of it, or kept.

    See :mod:`drmime_batch.core._consensus`. ``deform(config, matrix)`` runs
    :func:`_deformable_stage` on the images from ``matrix``; ``points`` are the fixed tissue's
    frame points the fit weighs equally, of which it keeps those the deformation sends inside the
    moving image (``moving_grid``: moving frame → its grid coordinates) unless they are fewer than
    a quarter; ``pixel`` the frame units per pixel of the registered level. The fit is kept when it moves the tissue by at least :data:`CONSENSUS_MIN_MOVE_PX`
    on average and its comparable score keeps at least :data:`CONSENSUS_KEEP` of the linear
    result's gain over the start (``verdict``'s scores; its final score then becomes the fit's).
    Returns the frame matrix, the parameters (``2 K``, as the loop's) and the record.
    """
    k = bases.shape[0]
    stage = dataclasses.replace(config, deformable_grid=config.consensus_grid,
                                deformable_iterations=min(config.consensus_iterations, config.max_iterations),
                                deformable_smoothness=config.consensus_smoothness)
    field, record = deform(stage, frame_matrix)
    out: dict[str, object] = {"iterations": record.get("iterations"), "grid": record.get("grid")}
    if field is None:
        return frame_matrix, params, out | {"kept": False, "reason": f"no coarse deformation: {record.get('reason')}"}
    with torch.no_grad():
        u = field.displacement(1.0)

    def deformed(p: torch.Tensor) -> torch.Tensor:
        return _affine(frame_matrix, p + u(p))

    inside = inside_moving(deformed, points, moving_grid)
    out["points_outside"] = int((~inside).sum())
    if int(inside.sum()) >= points.shape[0] // 4:  # else the images barely overlap: no better evidence
        points = points[inside]
    fitted, theta, rms = fit_transform_to_map(deformed, points, m0, bases, params[:k] + params[k:])
    with torch.no_grad():
        score = float(scorer(fitted[None])[0])
        moved = float((_affine(fitted, points) - _affine(frame_matrix, points)).norm(dim=1).mean())
    start, linear = float(verdict["start_score"]), float(verdict["final_score"])
    kept_share = (score - start) / (linear - start) if linear > start else None
    out |= {"linear_score": linear, "score": score, "kept_share": kept_share, "rms_frame": rms,
            "moved_frame": moved, "moved_px": moved / pixel, "points": int(points.shape[0])}
    if moved / pixel < CONSENSUS_MIN_MOVE_PX:
        return frame_matrix, params, out | {
            "kept": False, "reason": f"the fit moves the tissue by {moved / pixel:.2f} px on average "
                                     f"(< {CONSENSUS_MIN_MOVE_PX:g}): the linear optimum stands"}
    if not (math.isfinite(score) and score - start >= CONSENSUS_KEEP * (linear - start)):
        share = "none" if kept_share is None else f"{kept_share:.0%}"
        return frame_matrix, params, out | {
            "kept": False, "reason": f"the fit keeps {share} of the similarity gained (< {CONSENSUS_KEEP:.0%})"}
    verdict["final_score"] = score
    return fitted, torch.cat([theta, torch.zeros_like(theta)]), out | {"kept": True, "reason": None}


def level_points(config: RegistrationConfig, pixels: list[int], *, deformable: bool = False) -> list[int]:
    """Points sampled per iteration at each level, finest first, from the levels' pixel counts.

    ``fine_points`` at the finest level, ``points`` at the others (``deformable_points`` at every
    level for the deformable stage), but never more than a quarter of a level's pixels (at least
    256): the coarsest levels of a 1024-pixel image are a few hundred pixels, and 4500 points
    there resample each pixel many times at full cost.

    >>> level_points(RegistrationConfig(), [600_000, 150_000, 37_000, 9_000, 2_300, 600])
    [4500, 4500, 4500, 2250, 575, 256]
    >>> level_points(RegistrationConfig(), [600_000, 150_000, 37_000, 9_000, 2_300, 600], deformable=True)
    [9000, 9000, 9000, 2250, 575, 256]
    """
    if deformable:
        wanted = [config.deformable_points] * len(pixels)
    else:
        wanted = [config.fine_points] + [config.points] * (len(pixels) - 1)
    return [max(256, min(n, px // 4)) for n, px in zip(wanted, pixels, strict=True)]


def phase_budgets(config: RegistrationConfig, total: int | None = None) -> tuple[int | None, int | None]:
    """Most iterations at the first learning rate and at each reduced one (None: no limit).

    ``total`` is the stage's iteration budget (default ``max_iterations``; the deformable stage
    passes ``deformable_iterations``).

    The transform settles long before the smoothed similarity stops creeping up (the statistics
    network keeps learning), so a plateau alone ran most pairs to several times the iterations
    they needed; each phase therefore also ends when its share of ``max_iterations`` is spent.
    A budget too short for ``min_iterations`` at the first rate keeps the plateau rule alone.

    >>> phase_budgets(RegistrationConfig())
    (200, 40)
    >>> phase_budgets(RegistrationConfig(max_iterations=150))
    (None, None)
    """
    total = config.max_iterations if total is None else total
    first = total - config.lr_decays * config.patience
    if config.lr_decays == 0 or first < min(config.min_iterations, total):
        return None, None
    return first, config.patience


def _sample_values(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear values of ``image`` (C, H, W) at grid coordinates (N, 2) → (N, C)."""
    out = F.grid_sample(image.unsqueeze(0), grid.view(1, 1, -1, 2), mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(image.shape[0], -1).T


def optimise(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    config: RegistrationConfig,
    *,
    callback: ProgressCallback | None = None,
    trace: list[tuple[int, float, np.ndarray]] | None = None,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
) -> OptimisationOutcome:
    """Register ``moving`` to ``fixed``: both (C, H, W) float tensors with values in [0, 1].

    ``fixed_mask`` and ``moving_mask`` (H, W), 1 = tissue, optional, place the initialisation's
    centres of mass (the tissue's, not the slide's).

    Returns the fixed → moving matrix in the pixel coordinates of these tensors, with the
    parameters, per-level scores, history and timings. Raises
    :class:`~drmime_batch.errors.RegistrationDivergedError` on a non-finite or degenerate result.
    """
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    torch.manual_seed(config.seed)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    fixed = fixed.to(device=device, dtype=torch.float32)
    moving = moving.to(device=device, dtype=torch.float32)
    if config.metric in ("mse", "ncc") and fixed.shape[0] != moving.shape[0]:
        fixed, moving = fixed.mean(0, keepdim=True), moving.mean(0, keepdim=True)

    full_f = tuple(fixed.shape[1:])
    full_m = tuple(moving.shape[1:])
    scale = 0.5 * max(*full_f, *full_m)
    frame_f = _t(normalised_frame_matrix(full_f, scale), device)
    frame_m = _t(normalised_frame_matrix(full_m, scale), device)
    pyr_f = gaussian_pyramid(fixed, config.levels, min_size=8)
    pyr_m = gaussian_pyramid(moving, config.levels, min_size=8)
    n_levels = min(len(pyr_f), len(pyr_m))
    pyr_f, pyr_m = pyr_f[:n_levels], pyr_m[:n_levels]

    # Per level and image: level pixels -> frame, and frame -> level grid_sample coordinates.
    # Level k pools 2**k x 2**k full-resolution pixels (the last row/column may be partial), so
    # its factor is exactly 2**k; the ratio of sizes would be off by up to a pixel per level on
    # odd sizes, a scale error of ~1.5 % at the coarsest level.
    f_to_frame, m_to_frame, frame_to_grid_f, frame_to_grid_m = [], [], [], []
    for lvl, (lf, lm) in enumerate(zip(pyr_f, pyr_m, strict=True)):
        to_full = _t(level_to_full_matrix(float(2**lvl)), device)
        f_to_frame.append(frame_f @ to_full)
        m_to_frame.append(frame_m @ to_full)
        frame_to_grid_f.append(_t(grid_sample_matrix(lf.shape[1:]), device) @ torch.linalg.inv(f_to_frame[-1]))
        frame_to_grid_m.append(_t(grid_sample_matrix(lm.shape[1:]), device) @ torch.linalg.inv(m_to_frame[-1]))

    # Coarse initialisation on small, lightly blurred copies of the finest level; candidates, and
    # later the start against the result, compared by one score at finer scales.
    def to_frames(
        images: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return (
            [frame_f @ _t(level_to_full_matrix(_downsample(full_f, f.shape[1:])), device) for f, _ in images],
            [frame_m @ _t(level_to_full_matrix(_downsample(full_m, m.shape[1:])), device) for _, m in images],
        )

    smalls = [(_shrink(fixed, size), _shrink(moving, size)) for size in _INIT_SIZES]
    small_ff, small_mf = to_frames(smalls)
    scored = [(_shrink(fixed, size), _shrink(moving, size)) for size in _SCORE_SIZES]
    score_ff, score_mf = to_frames(scored)

    def scorer(matrices: torch.Tensor, deform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        return comparable_score(
            [f for f, _ in scored], [m for _, m in scored], matrices, fixed_to_frame=score_ff, moving_to_frame=score_mf,
            deform=deform,
        )

    if config.init == "none":
        eye = torch.eye(3, dtype=torch.float64, device=device)
        init = Initialisation(matrix=eye, angle=0.0, flip=False, score=float(scorer(eye[None])[0]))
    else:
        init = search_initialisation(
            [f for f, _ in smalls],
            [m for _, m in smalls],
            fixed_to_frame=small_ff,
            moving_to_frame=small_mf,
            angles=config.init_angles,
            flip=config.init_flip,
            rotate=config.init == "search",
            scorer=scorer,
            com_fixed=_mask_centre(fixed_mask, smalls[-1][0], device),
            com_moving=_mask_centre(moving_mask, smalls[-1][1], device),
        )
    m0 = init.matrix
    t_init = time.perf_counter() - t0

    # Sampling pools: indices drawn once by weight; each iteration picks uniformly among them.
    def pool(image: torch.Tensor) -> torch.Tensor:
        w = sampling_weights(image, mode=config.sampling).flatten().double().cpu()
        index = torch.multinomial(w, _POOL, replacement=True, generator=gen)
        width = image.shape[-1]  # pixel coordinates once here, not per iteration and level
        return torch.stack([(index % width).double(), (index // width).double()], 1).to(device)

    pools_f = [pool(lf) for lf in pyr_f]
    pools_m = [pool(lm) for lm in pyr_m] if config.symmetric else []

    bases = basis(config.transform, dtype=torch.float64, device=device)
    k = bases.shape[0]
    theta = torch.zeros(k, dtype=torch.float64, device=device, requires_grad=True)
    delta = torch.zeros(k, dtype=torch.float64, device=device, requires_grad=True)
    channels = pyr_f[0].shape[0] + pyr_m[0].shape[0]
    net = StatisticsNetwork(channels, hidden=config.hidden).to(device)
    groups = [{"params": [theta], "lr": config.lr_transform}]
    if config.lr_fine > 0:
        groups.append({"params": [delta], "lr": config.lr_fine})
    if config.metric == "mine":
        groups.append({"params": list(net.parameters()), "lr": config.lr_mine})
    opt = torch.optim.Adam(groups)
    metric_fn = METRICS.get(config.metric)

    level_pixels = [lf.shape[1] * lf.shape[2] for lf in pyr_f]
    n_points = level_points(config, level_pixels)
    first_phase, later_phase = phase_budgets(config)
    since_decay = 0
    ema: float | None = None
    level_ema = [0.0] * n_levels
    best = -math.inf
    since_best = 0
    decays = 0
    history: list[float] = []
    avg_theta = torch.zeros(2 * k, dtype=torch.float64, device=device)
    iteration = 0
    warmup = config.warmup if config.metric == "mine" else 0
    ema_lme: list[float | None] = [None] * n_levels
    for iteration in range(1, config.max_iterations + warmup + 1):
        shared = m0 @ exp_transform(theta, bases)
        fine = m0 @ exp_transform(theta + delta, bases)
        xs, ys = [], []
        for lvl in range(n_levels):
            current = fine if lvl == 0 else shared
            n = n_points[lvl] // 2 if config.symmetric else n_points[lvl]
            src_f, dst_m = _sample_pairs(
                pyr_f[lvl], pyr_m[lvl], pools_f[lvl], n, frame_to_grid_m[lvl] @ current @ f_to_frame[lvl], gen
            )
            if config.symmetric:
                # Half the points start in the moving image and map back through the inverse: a
                # bias of the similarity towards shrinking one image (smoother, more predictable
                # values) then cancels against the same bias in the other direction.
                src_m, dst_f = _sample_pairs(
                    pyr_m[lvl],
                    pyr_f[lvl],
                    pools_m[lvl],
                    n,
                    frame_to_grid_f[lvl] @ torch.linalg.inv(current) @ m_to_frame[lvl],
                    gen,
                )
                src_f, dst_m = torch.cat([src_f, dst_f]), torch.cat([dst_m, src_m])
            if src_f.shape[0] < 16:
                raise RegistrationDivergedError(
                    f"the transform moved the images apart at level {lvl} (iteration {iteration}): "
                    "fewer than 16 sample points overlap; try another init or transform"
                )
            xs.append(src_f)
            ys.append(dst_m)

        if config.metric == "mine":
            values, surrogates = _mine_values(net, xs, ys, gen, ema_lme, config.mine_ema)
        else:
            assert metric_fn is not None
            values = [metric_fn(x, y) for x, y in zip(xs, ys, strict=True)]
            surrogates = values
        similarity = torch.stack(values).mean()
        if not torch.isfinite(similarity):
            raise RegistrationDivergedError(f"the similarity became non-finite at iteration {iteration}")
        opt.zero_grad(set_to_none=True)
        (-torch.stack(surrogates).mean()).backward()
        if iteration <= warmup:
            # The untrained network's gradient is noise: let it learn before the transform moves.
            theta.grad = None
            delta.grad = None
        opt.step()

        value = float(similarity.detach())
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        for lvl, v in enumerate(values):
            level_ema[lvl] = float(v.detach()) if iteration == 1 else 0.9 * level_ema[lvl] + 0.1 * float(v.detach())
        # A moving average of the iterates removes the jitter of stochastic sampling.
        with torch.no_grad():
            current = torch.cat([theta, delta]).detach()
            avg_theta = current.clone() if iteration == 1 else 0.97 * avg_theta + 0.03 * current
        if iteration % 10 == 0:
            history.append(ema)
            if trace is not None:
                with torch.no_grad():
                    fm = m0 @ exp_transform(avg_theta[:k] + avg_theta[k:], bases)
                    trace.append((iteration, ema, (torch.linalg.inv(frame_m) @ fm @ frame_f).cpu().numpy()))
            if callback is not None:
                callback(iteration, ema)
        if ema > best + 1e-3 * max(1.0, abs(best) if math.isfinite(best) else 1.0):
            best, since_best = ema, 0
        else:
            since_best += 1
        since_decay += iteration > warmup
        plateau = since_best >= config.patience and iteration >= config.min_iterations + warmup
        budget = first_phase if decays == 0 else later_phase
        if plateau or (budget is not None and since_decay >= budget):
            if decays >= config.lr_decays:
                break
            decays += 1
            since_best = since_decay = 0
            best = ema
            for group in opt.param_groups:
                group["lr"] *= config.lr_factor
            # Each slower phase refines the average, not the last noisy iterate: where the
            # similarity is flat (lobes that moved apart) the iterate drifts several pixels per
            # few dozen iterations, and the decay would freeze it wherever the drift had taken it.
            with torch.no_grad():
                theta.copy_(avg_theta[:k])
                delta.copy_(avg_theta[k:])

    with torch.no_grad():
        params = avg_theta
        frame_matrix = m0 @ exp_transform(params[:k] + params[k:], bases)
        frame_matrix, judged = never_worse(m0, frame_matrix, scorer, tolerance=FALLBACK_TOLERANCE)
    verdict: dict[str, Any] = dict(judged)
    t_consensus = 0.0
    if config.consensus and not config.deformable:
        t1 = time.perf_counter()
        if verdict["fallback"]:
            verdict["consensus"] = {"kept": False, "reason": "the linear stage kept its start (init.fallback)"}
        else:
            def deform(cfg: RegistrationConfig, start: torch.Tensor) -> tuple[VelocityField | None, dict[str, object]]:
                return _deformable_stage(
                    cfg, start, pyr_f, pyr_m, pools_f, pools_m if config.symmetric else [], f_to_frame, m_to_frame,
                    frame_to_grid_f, frame_to_grid_m, n_points, net if config.metric == "mine" else None, gen, scorer,
                    callback, iteration, free_affine=False,
                )

            frame_matrix, params, verdict["consensus"] = _consensus_stage(
                config, m0, frame_matrix, params, bases, verdict, scorer,
                tissue_points(fixed_mask, (int(pyr_f[0].shape[1]), int(pyr_f[0].shape[2])), f_to_frame[0]), deform,
                pixel=float(f_to_frame[0][0, 0]), moving_grid=frame_to_grid_m[0],
            )
        t_consensus = time.perf_counter() - t1
    with torch.no_grad():
        matrix = torch.linalg.inv(frame_m) @ frame_matrix @ frame_f
    deformation: dict[str, object] | None = None
    field_px: dict[str, np.ndarray] | None = None
    if config.deformable and verdict["fallback"]:
        # the linear stage could not improve on its start: a deformation would build on a guess
        deformation = {"kept": False, "reason": "the linear stage kept its start (init.fallback): not deformed"}
    elif config.deformable:
        field, deformation = _deformable_stage(
            config, frame_matrix, pyr_f, pyr_m, pools_f, pools_m if config.symmetric else [], f_to_frame, m_to_frame,
            frame_to_grid_f, frame_to_grid_m,
            level_points(config, level_pixels, deformable=True),
            net if config.metric == "mine" else None, gen, scorer, callback, iteration,
        )
        if field is not None:
            field_px = _field_in_pixels(field, frame_f)
    m = matrix.cpu().numpy()
    if not np.all(np.isfinite(m)):
        raise RegistrationDivergedError("the registration produced a non-finite matrix")
    det = abs(np.linalg.det(m[:2, :2]))
    if not 0.02 < det < 50:
        raise RegistrationDivergedError(
            f"the registration collapsed (area scale {det:.3g} between the images); "
            "the images may not overlap or may not show the same tissue"
        )
    t_total = time.perf_counter() - t0
    return OptimisationOutcome(
        matrix=m,
        parameters=params.cpu().tolist(),
        level_scores=level_ema,
        history=history,
        iterations=iteration,
        init=init.to_dict()
        | {"method": config.init}
        | verdict,
        timings={"init_s": t_init, "optimise_s": t_total - t_init - t_consensus, "consensus_s": t_consensus,
                 "total_s": t_total},
        device=str(device),
        levels=n_levels,
        deformation=deformation,
        field=field_px,
    )


def _field_in_pixels(field: VelocityField, frame_f: torch.Tensor) -> dict[str, np.ndarray]:
    """The kept field as displacements in pixels of the fixed tensor (forward and inverse).

    The frame is an isotropic scaling ``s`` and a shift of the fixed pixels, so a frame
    displacement ``u`` at frame point ``frame_f p`` is the pixel displacement ``u / s`` at ``p``.
    """
    with torch.no_grad():
        scale = float(frame_f[0, 0])  # frame units per pixel
        to_pixels = torch.linalg.inv(frame_f)
        forward, backward = field.displacement(1.0, refine=_STORED_REFINE), field.displacement(-1.0, refine=_STORED_REFINE)
        origin = _affine(to_pixels, field.lower[None])[0]
        spacing = field.spacing / _STORED_REFINE / scale
        return {
            "forward": (forward.values / scale).cpu().numpy(),
            "inverse": (backward.values / scale).cpu().numpy(),
            "origin": origin.cpu().numpy(),
            "spacing": np.array([spacing, spacing]),
        }
