"""Composing a series once its links are finished: per-slide transforms, landmark errors, the stack.

Reads the plan and the finished links from the queue, solves for every slide's transform into the
reference frame (:func:`~drmime_batch.series._consistent.solve_consistent`), writes them as
``STORE/ID/<slide_id>/transform`` (so ``open_transform(STORE, "ID/<slide_id>")`` reads them), scores
them against the slides' landmarks and records a summary in the queue (``series-status``) and, for
readers of the store alone (``apply``), each slide's state in ``STORE/ID``'s attributes
(:mod:`drmime_batch.series._record`).

Deformable links contribute their matrix (linear part) only: composing displacement fields along a
series is not done yet. Such links are named in the summary (``fields_not_composed``) and in every
slide transform's ``series`` attributes; each link's field stays with its pair (``ID--F--M``).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from drmime_batch.errors import DrmimeError
from drmime_batch.queue import Queue
from drmime_batch.queue._series_table import get_series, series_ids, set_composed
from drmime_batch.series._consistent import LinkMatrix, solve_consistent
from drmime_batch.series._plan import SeriesPlan
from drmime_batch.series._record import write_series_record

__all__ = ["compose_finished", "compose_series", "link_weight"]

_FALLBACK_WEIGHT = 0.1  # a link whose registration kept its start is trusted less


def link_weight(distance: int, outcome: Any) -> float:
    """A link's weight: ``1 / distance`` in sections, a tenth of it when the registration kept its start.

    Examples
    --------
    >>> link_weight(2, None)
    0.5
    """
    weight = 1.0 / max(int(distance), 1)
    init = (getattr(outcome, "registration", None) or {}).get("init") or {}
    if isinstance(init, dict) and init.get("fallback"):
        weight *= _FALLBACK_WEIGHT
    return weight


def _fingerprint(rows: list[Any]) -> list[list[Any]]:
    return [[r.pair_id, r.state, r.finished_at] for r in rows]


def _link_states(slide_id: str, plan: SeriesPlan, rows: dict[str, Any]) -> list[dict[str, Any]]:
    """Every link of a slide: pair id, state in the queue (``not in queue`` when gone) and error."""
    out = []
    for link in plan.links:
        if slide_id in (link.fixed, link.moving):
            row = rows.get(link.pair_id)
            out.append({"pair_id": link.pair_id, "state": row.state if row is not None else "not in queue",
                        "error": row.error if row is not None and row.error else None})
    return out


def _missing_reason(links: list[dict[str, Any]]) -> str:
    parts = [f"{k['pair_id']} {k['state']}" + (f" ({k['error']})" if k["error"] else "") for k in links]
    return "no finished link joins it to the reference: " + "; ".join(parts)


def _landmarks(matrix: np.ndarray, ref: Any, slide: Any, ref_shape: Any, pixel_size: Any) -> dict[str, Any] | None:
    if ref.landmarks is None or slide.landmarks is None or not ref_shape:
        return None
    from drmime_batch.evaluation import evaluate_matrix, read_landmarks

    scores = evaluate_matrix(matrix, read_landmarks(ref.landmarks), read_landmarks(slide.landmarks),
                             fixed_shape=ref_shape, pixel_size=pixel_size)
    return scores.to_dict()


def compose_series(
    queue: Queue,
    series_id: str,
    *,
    warp: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compose one series from its finished links; returns (and records) its summary.

    Parameters
    ----------
    queue : Queue
        The queue holding the series.
    series_id : str
    warp : bool
        Also write ``STORE/ID/stack`` (every placed slide warped into the reference frame).
    log : callable, optional
        Receives one line per step.

    Returns
    -------
    dict
        ``series_id``, ``reference``, ``state`` (``composed``: every slide placed; ``partial``:
        some missing; ``waiting``: links still pending or running, nothing written), ``slides``
        (per slide: ``state`` reference/placed/missing, ``path`` of pair ids, ``error`` and
        ``link_states`` of a missing slide, landmark scores into the reference frame and those of
        plain chaining), ``missing``, ``links``, ``iterations``, ``stack``. The outcome is also
        recorded in the store (:mod:`drmime_batch.series._record`), for ``apply``.

    Raises
    ------
    QueueError
        No such series.
    """
    from drmime_batch.io import write_transform
    from drmime_batch.io._atomic import remove_path
    from drmime_batch.io._fs import join, location
    from drmime_batch.io._writers import _ensure_groups
    from drmime_batch.outcome import PairOutcome

    say = log or (lambda line: None)
    record = get_series(queue, series_id)
    plan = SeriesPlan.from_dict(record["plan"])
    rows = {r.pair_id: r for r in queue.rows(pair_ids=[k.pair_id for k in plan.links])}
    states = {k.pair_id: (rows[k.pair_id].state if k.pair_id in rows else "missing") for k in plan.links}
    summary: dict[str, Any] = {
        "series_id": series_id, "reference": plan.reference, "out": record["out"],
        "links": {s: sum(v == s for v in states.values()) for s in sorted(set(states.values()))},
        "fingerprint": _fingerprint(list(rows.values())),
    }
    if any(s in ("pending", "running") for s in states.values()):
        summary.update(state="waiting", slides=[], missing=[])
        return summary
    links: list[LinkMatrix] = []
    shapes: dict[str, tuple[int, ...]] = {}
    pixel_sizes: dict[str, tuple[float, float]] = {}
    outcomes: dict[str, Any] = {}
    for k in plan.links:
        row = rows.get(k.pair_id)
        if row is None or row.state != "done" or row.matrix is None:
            continue
        outcome = PairOutcome.from_row(row)
        outcomes[k.pair_id] = outcome
        links.append(LinkMatrix(k.fixed, k.moving, np.asarray(row.matrix, dtype=np.float64),
                                link_weight(k.distance, outcome), k.pair_id))
        for slide_id, side in ((k.fixed, outcome.fixed), (k.moving, outcome.moving)):
            if side is not None and side.shape:
                shapes.setdefault(slide_id, tuple(side.shape))
                if side.pixel_size is not None:
                    pixel_sizes.setdefault(slide_id, side.pixel_size)
    # deformable links: their matrices are composed, their displacement fields are not (yet)
    linear_only = [k.pair_id for k in plan.links
                   if k.pair_id in outcomes and (rows[k.pair_id].options or {}).get("deformable")]
    ref = plan.slide(plan.reference)
    if plan.reference not in shapes:
        from drmime_batch.evaluation._batch import image_shape

        try:
            shapes[plan.reference] = image_shape(ref.path)
        except (DrmimeError, OSError):
            pass
    ref_shape = shapes.get(plan.reference)
    solution = solve_consistent(plan.reference, plan.slide_ids, links, frame_shape=ref_shape)
    store = join(location(record["out"]), series_id)
    _ensure_groups(location(record["out"]), store)  # STORE itself when no pair wrote there (all failed)
    slides_out = []
    for slide in plan.slides:
        sid = slide.slide_id
        entry: dict[str, Any] = {"slide_id": sid, "path": slide.path}
        if sid in solution.transforms:
            matrix = solution.transforms[sid]
            entry.update(state="reference" if sid == plan.reference else "placed",
                         links=solution.paths.get(sid, []), matrix=matrix.tolist())
            write_transform(
                store, sid, matrix,
                attrs={"series": {"series_id": series_id, "reference": plan.reference, "slide": sid,
                                  "method": "lie-algebraic least squares over the series' links",
                                  "chain": solution.paths.get(sid, []), "iterations": solution.iterations,
                                  "fields_not_composed": linear_only},
                       "fixed": ref.path, "moving": slide.path},
                fixed_pixel_size=pixel_sizes.get(plan.reference), moving_pixel_size=pixel_sizes.get(sid),
                fixed_shape=ref_shape or None, moving_shape=shapes.get(sid),
            )
            try:
                entry["landmarks"] = _landmarks(matrix, ref, slide, ref_shape, pixel_sizes.get(sid))
                chained = _landmarks(solution.chained[sid], ref, slide, ref_shape, pixel_sizes.get(sid))
                entry["chain_landmarks"] = chained
            except DrmimeError as exc:
                entry["landmarks_error"] = " ".join(str(exc).split())
        else:
            link_states = _link_states(sid, plan, rows)
            entry.update(state="missing", error=_missing_reason(link_states), link_states=link_states)
            remove_path(join(store, sid))  # a transform of an earlier composition is no longer backed
        slides_out.append(entry)
        say(f"{series_id}/{sid}: {entry['state']}" + (f" ({entry['error']})" if "error" in entry else ""))
    missing = [s["slide_id"] for s in slides_out if s["state"] == "missing"]
    summary.update(
        state="partial" if missing else "composed", slides=slides_out, missing=missing,
        iterations=solution.iterations, residuals=solution.residuals, composed_at=time.time(), stack=None,
        fields_not_composed=linear_only,
    )
    # what 'apply' reads to say why a slide has no transform (it knows the store, not the queue)
    write_series_record(store, summary, queue=str(queue.path))
    if linear_only:
        say(f"{series_id}: {len(linear_only)} deformable link(s): their matrices are composed, their displacement "
            "fields are not (composing fields along a series is not done yet)")
    if warp:
        from drmime_batch.series._stack import write_stack

        stack = join(store, "stack")
        write_stack(stack, [(s.slide_id, s.path, solution.transforms.get(s.slide_id)) for s in plan.slides],
                    reference_path=ref.path, pixel_size=pixel_sizes.get(plan.reference),
                    attributes={"series_id": series_id, "reference": plan.reference})
        summary["stack"] = str(stack)
        say(f"{series_id}: stack written to {stack}")
    set_composed(queue, series_id, summary)
    return summary


def compose_finished(queue: Queue, *, warp: bool = True, log: Callable[[str], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Compose every series of ``queue`` whose links are all finished and changed since its last composition.

    Returns the summaries of the series composed now (none when the queue holds no series).
    """
    done = []
    for series_id in series_ids(queue):
        record = get_series(queue, series_id)
        plan = SeriesPlan.from_dict(record["plan"])
        rows = queue.rows(pair_ids=[k.pair_id for k in plan.links])
        if any(r.state in ("pending", "running") for r in rows):
            continue
        last = record["composed"] or {}
        if last.get("fingerprint") == _fingerprint(rows) and (last.get("stack") or not warp):
            continue
        done.append(compose_series(queue, series_id, warp=warp, log=log))
    return done
