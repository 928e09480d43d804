"""Every slide of a series in the reference frame, consistent over all links (Lie-algebraic averaging).

The unknowns are the slides' transforms ``T_s`` (reference pixel → slide pixel, the convention of
:mod:`drmime_batch.core._convention`), the reference's fixed at the identity. A link ``F → M``
registered the matrix ``A`` (``F`` pixel → ``M`` pixel), so it asks for ``T_M ≈ A T_F``.

What is solved
    Start from the chain: each slide reached from the reference along the links of least total
    cost (cost ``1 / weight``), composing matrices. Then iterate (Govindu's Lie-algebraic
    averaging): write ``T_s = T̂_s exp(δ_s)`` with ``δ_s`` a 3x3 matrix in the reference frame and
    ``δ_ref = 0``; each link's residual ``E = T̂_M⁻¹ A T̂_F`` should be the identity, and to first
    order ``exp(δ_M) exp(-δ_F) = E`` gives the linear equation ``δ_M − δ_F = log E``. The weighted
    least-squares problem

        minimise  Σ_links  w · ‖δ_M − δ_F − log E‖²_F

    (one graph-Laplacian system, the same for every matrix entry) is solved, ``T_s ← T̂_s exp(δ_s)``,
    and this is repeated until the largest ``‖δ‖`` is below a tolerance. At the fixed point the
    weighted sum of the links' log-residuals at every slide is zero: the links' errors are shared
    out over the series instead of piling up along the chain. Exact links give back the chain
    exactly (every ``log E`` is 0). Only residuals near the identity are logged, so mirrored or
    large links need no real logarithm of their own.

    Matrices are conjugated by one normalisation (origin at the reference's centre, unit = half its
    diagonal) while solving: the fixed point does not change (every step is linear in ``log E``),
    the first-order steps just converge faster when rotations are about the tissue and not a corner.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["LinkMatrix", "SeriesSolution", "chain_transforms", "solve_consistent"]


@dataclass(frozen=True)
class LinkMatrix:
    """One finished link: ``matrix`` maps ``fixed`` pixels to ``moving`` pixels; ``weight`` > 0."""

    fixed: str
    moving: str
    matrix: np.ndarray
    weight: float = 1.0
    pair_id: str = ""


@dataclass(frozen=True)
class SeriesSolution:
    """Transforms reference → slide of every slide reached (the reference's is the identity).

    Attributes
    ----------
    transforms : dict of str to ndarray (3, 3)
        The consistent solution.
    chained : dict of str to ndarray (3, 3)
        Plain chaining along the cheapest path (the starting point).
    residuals : dict of str to float
        Per link (pair id), ``‖log(T_M⁻¹ A T_F)‖_F`` of the solution in normalised units.
    iterations : int
        Linearised steps taken.
    unreached : tuple of str
        Slides no finished link connects to the reference.
    paths : dict of str to list of str
        The pair ids of each slide's chain.
    """

    transforms: dict[str, np.ndarray]
    chained: dict[str, np.ndarray]
    residuals: dict[str, float] = field(default_factory=dict)
    iterations: int = 0
    unreached: tuple[str, ...] = ()
    paths: dict[str, list[str]] = field(default_factory=dict)


def _normaliser(shape: Sequence[int] | None) -> np.ndarray:
    if not shape:
        return np.eye(3)
    h, w = float(shape[0]), float(shape[1])
    s = 2.0 / max(np.hypot(h, w), 1.0)
    return np.array([[s, 0.0, -s * (w - 1) / 2], [0.0, s, -s * (h - 1) / 2], [0.0, 0.0, 1.0]])


def _is_affine(m: np.ndarray) -> bool:
    return bool(np.allclose(m[2], [0.0, 0.0, 1.0], atol=1e-12))


def _unit_scale(m: np.ndarray) -> np.ndarray:
    """A homography's representative with determinant 1 (affines are kept as they are)."""
    if _is_affine(m):
        return m
    det = float(np.linalg.det(m))
    return m / np.cbrt(det) if det else m


def _log(m: np.ndarray) -> np.ndarray:
    """The real matrix logarithm; near the identity (every residual once converging) by its series."""
    m = _unit_scale(m)
    x = m - np.eye(3)
    if float(np.linalg.norm(x, 2)) < 0.25:
        # log(I + X) = X - X²/2 + X³/3 - ...: 30 terms leave < 1e-19 here, and cost far less than logm
        term, total = x.copy(), x.copy()
        for k in range(2, 31):
            term = term @ x
            total += (-1) ** (k + 1) * term / k
        return total
    from scipy.linalg import logm

    return np.asarray(np.real(logm(m)), dtype=np.float64)


def _exp(m: np.ndarray) -> np.ndarray:
    """The matrix exponential by scaling and squaring a Taylor series (3x3: faster than scipy's Padé here)."""
    norm = float(np.linalg.norm(m, 1))
    squarings = max(0, int(np.ceil(np.log2(norm / 0.25)))) if norm > 0.25 else 0
    x = m / 2.0**squarings
    term, total = np.eye(3), np.eye(3)
    for k in range(1, 19):  # ‖x‖ ≤ 0.25: the remainder is below 1e-27
        term = term @ x / k
        total += term
    for _ in range(squarings):
        total = total @ total
    return total


def chain_transforms(
    reference: str, links: Sequence[LinkMatrix]
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Compose matrices from the reference along the cheapest paths (cost ``1 / weight`` per link).

    Links are used both ways (the inverse matrix against the arrow).

    Returns
    -------
    transforms, paths : dict, dict
        Reference → slide matrices and the pair ids of each path, for every slide reached.

    Examples
    --------
    >>> shift = np.array([[1, 0, 5.0], [0, 1, 0], [0, 0, 1]])
    >>> t, p = chain_transforms("a", [LinkMatrix("a", "b", shift), LinkMatrix("c", "b", shift, pair_id="cb")])
    >>> float(t["c"][0, 2]), p["c"]
    (0.0, ['', 'cb'])
    """
    adjacent: dict[str, list[tuple[str, np.ndarray, float, str]]] = {}
    for k in links:
        m = np.asarray(k.matrix, dtype=np.float64)
        cost = 1.0 / max(float(k.weight), 1e-12)
        adjacent.setdefault(k.fixed, []).append((k.moving, m, cost, k.pair_id))
        adjacent.setdefault(k.moving, []).append((k.fixed, np.linalg.inv(m), cost, k.pair_id))
    transforms = {reference: np.eye(3)}
    paths: dict[str, list[str]] = {reference: []}
    best = {reference: 0.0}
    heap: list[tuple[float, int, str]] = [(0.0, 0, reference)]
    order = 1
    done: set[str] = set()
    while heap:
        cost, _, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        for other, m, step, pid in adjacent.get(node, []):
            total = cost + step
            if other not in done and total < best.get(other, np.inf):
                best[other] = total
                # T_other = m @ T_node: m maps node pixels to other pixels
                transforms[other] = m @ transforms[node]
                paths[other] = [*paths[node], pid]
                heapq.heappush(heap, (total, order, other))
                order += 1
    return transforms, paths


def solve_consistent(
    reference: str,
    slides: Sequence[str],
    links: Sequence[LinkMatrix],
    *,
    frame_shape: Sequence[int] | None = None,
    max_iterations: int = 50,
    tolerance: float = 1e-12,
) -> SeriesSolution:
    """Transforms of every slide into the reference frame, consistent over all ``links``.

    Parameters
    ----------
    reference : str
        The slide whose transform is the identity.
    slides : sequence of str
        Every slide of the series (those no link reaches are listed in ``unreached``).
    links : sequence of LinkMatrix
        The finished links; a slide may have several.
    frame_shape : (H, W), optional
        The reference image's shape (for the normalisation; see the module docstring).
    max_iterations : int
        Most linearised steps (0: the chain only).
    tolerance : float
        Stop when the largest step ``‖δ‖_F`` is below this.

    Examples
    --------
    Three slides, a triangle of links whose two routes to ``c`` disagree by 2 px: the solution
    shares the disagreement out instead of taking either route as it is.

    >>> def shift(x):
    ...     return np.array([[1, 0, x], [0, 1, 0], [0, 0, 1.0]])
    >>> links = [LinkMatrix("a", "b", shift(10)), LinkMatrix("b", "c", shift(10)), LinkMatrix("a", "c", shift(22))]
    >>> sol = solve_consistent("a", ["a", "b", "c"], links)
    >>> [round(float(t[0, 2]), 6) for t in (sol.chained["c"], sol.transforms["c"], sol.transforms["b"])]
    [22.0, 21.333333, 10.666667]
    """
    chained, paths = chain_transforms(reference, links)
    reached = [s for s in slides if s in chained]
    unreached = tuple(s for s in slides if s not in chained)
    unknown = [s for s in reached if s != reference]
    index = {s: i for i, s in enumerate(unknown)}
    used = [k for k in links if k.fixed in chained and k.moving in chained]
    c = _normaliser(frame_shape)
    c_inv = np.linalg.inv(c)
    current = {s: c @ chained[s] @ c_inv for s in reached}
    mats = [c @ np.asarray(k.matrix, dtype=np.float64) @ c_inv for k in used]
    weights = np.array([max(float(k.weight), 1e-12) for k in used])
    # incidence: one row per link, +1 at the moving slide, -1 at the fixed one (the reference has no column)
    b = np.zeros((len(used), len(unknown)))
    for row, k in enumerate(used):
        if k.moving in index:
            b[row, index[k.moving]] += 1.0
        if k.fixed in index:
            b[row, index[k.fixed]] -= 1.0
    laplacian = b.T @ (weights[:, None] * b)
    iterations = 0

    def residual_logs() -> np.ndarray:
        return np.stack([_log(np.linalg.inv(current[k.moving]) @ m @ current[k.fixed]).ravel()
                         for k, m in zip(used, mats, strict=True)]) if used else np.zeros((0, 9))

    if unknown and used:
        for _ in range(max_iterations):
            logs = residual_logs()
            delta = np.linalg.solve(laplacian, b.T @ (weights[:, None] * logs))
            for s, i in index.items():
                current[s] = current[s] @ _exp(delta[i].reshape(3, 3))
            iterations += 1
            if float(np.max(np.linalg.norm(delta, axis=1))) < tolerance:
                break
    logs = residual_logs()
    residuals = {k.pair_id or f"{k.fixed}->{k.moving}": float(np.linalg.norm(row)) for k, row in zip(used, logs, strict=True)}
    transforms = {}
    for s in reached:
        t = c_inv @ current[s] @ c
        transforms[s] = t if _is_affine(t) else t / t[2, 2]
    transforms[reference] = np.eye(3)
    return SeriesSolution(transforms, chained, residuals, iterations, unreached, paths)
