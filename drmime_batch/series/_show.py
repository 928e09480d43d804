"""Per-series rows for ``status``, ``evaluate``, ``report`` and ``series-status``: one slide a row.

:func:`series_rows` is the one place that turns a queue's series (the plan, the links' states now
and the last composition) into flat rows: per slide its state (``reference``, ``composed``,
``missing`` with why, or ``waiting`` while links still run), its links (finished / planned) and its
landmark error into the reference frame (rTRE median, the identity's beside it, and that of plain
chaining). With ``rescore`` the errors are measured again from the transforms stored at
``STORE/ID/<slide_id>/transform`` (what ``apply`` uses), with the affine floor of each slide's
landmarks onto the reference's; without, they are the ones recorded when the series was composed.

Torch- and dask-free, like the rest of the series package.
"""

from __future__ import annotations

from statistics import median
from typing import Any

import numpy as np

from drmime_batch.errors import DrmimeError, OutputStoreError
from drmime_batch.queue import Queue
from drmime_batch.queue._series_table import get_series, series_ids
from drmime_batch.series._submit import series_status

__all__ = ["SLIDE_KEYS", "series_links", "series_rows"]

#: Keys of every per-slide row (JSON and the console tables), in order.
SLIDE_KEYS = ("slide_id", "state", "links_done", "links_total", "chain", "rtre_median", "identity_rtre_median",
              "chain_rtre_median", "floor_rtre_median", "floor_ratio", "tre_median_px", "n_points", "error")

_WAITING = ("pending", "running")


def _figures(scores: dict[str, Any] | None) -> dict[str, Any]:
    scores = scores or {}
    return {"rtre_median": scores.get("rtre_median"), "identity_rtre_median": scores.get("identity_rtre_median"),
            "tre_median_px": scores.get("tre_median_px"), "n_points": scores.get("n_points")}


def _rescore(store: str, series_id: str, slide: dict[str, Any], ref: dict[str, Any], floor: bool) -> dict[str, Any]:
    """Landmark figures of one placed slide measured from its stored transform (and the affine floor)."""
    from drmime_batch.evaluation import evaluate_matrix, read_landmarks
    from drmime_batch.evaluation._fit import best_fit_matrix
    from drmime_batch.transforms import open_transform

    t = open_transform(store, f"{series_id}/{slide['slide_id']}")
    if t.matrix is None:
        raise OutputStoreError(f"transform {series_id}/{slide['slide_id']} in {store} holds no matrix")
    shape = t.image_shape("fixed")
    if not shape:
        from drmime_batch.evaluation._batch import image_shape

        shape = image_shape(ref["path"])
    fixed, moving = read_landmarks(ref["landmarks"]), read_landmarks(slide["landmarks"])
    scores = evaluate_matrix(np.asarray(t.matrix), fixed, moving, fixed_shape=shape, pixel_size=t.pixel_size("moving"))
    out = _figures(scores.to_dict())
    if floor:
        try:
            best = evaluate_matrix(best_fit_matrix(fixed, moving), fixed, moving, fixed_shape=shape).rtre_median
        except DrmimeError:
            best = None
        out["floor_rtre_median"] = best
        out["floor_ratio"] = scores.rtre_median / best if best else None
    return out


def _slide_row(slide: dict[str, Any], links: list[dict[str, Any]], composed: dict[str, Any] | None,
               waiting: bool) -> dict[str, Any]:
    mine = [k for k in links if slide["slide_id"] in (k["fixed"], k["moving"])]
    row: dict[str, Any] = dict.fromkeys(SLIDE_KEYS)
    row.update(slide_id=slide["slide_id"], links_done=sum(k["state"] == "done" for k in mine), links_total=len(mine),
               chain=[])
    if composed is None:
        row["state"] = "waiting" if waiting else "not composed"
        return row
    state = composed.get("state")
    row["state"] = {"placed": "composed"}.get(state or "", state)
    row["chain"] = list(composed.get("links") or [])
    row["error"] = composed.get("error") or composed.get("landmarks_error")
    if state != "reference":  # the reference onto itself scores 0: no figure to show
        row.update(_figures(composed.get("landmarks")))
        row["chain_rtre_median"] = (composed.get("chain_landmarks") or {}).get("rtre_median")
    return row


def series_rows(queue: Queue, *, rescore: bool = False, floor: bool = True) -> list[dict[str, Any]]:
    """One record per series of ``queue`` (none when it holds no series), each with per-slide rows.

    Parameters
    ----------
    queue : Queue
    rescore : bool
        Measure the landmark errors again from the stored transforms (``evaluate``) instead of
        taking those recorded at composition (``status``, ``report``); a slide whose transform
        cannot be read or scored keeps the recorded figures and says why in ``landmark_error``.
    floor : bool
        With ``rescore``: also the affine floor (least-squares affine of the slide's landmarks
        onto the reference's) and the ratio to it.

    Returns
    -------
    list of dict
        ``series_id``, ``reference``, ``out``, ``state`` (``composed``, ``partial``, ``waiting``:
        links still pending or running, ``not composed``), ``composition`` (the last composition's
        state, or None), ``links`` (count per state), ``missing``, ``stack``, ``composed_at``,
        ``rtre_median`` (median over the scored slides but the reference, or None),
        ``fields_not_composed`` (deformable links whose matrices only were composed) and ``slides``:
        per slide the :data:`SLIDE_KEYS` (plus ``landmark_error`` when rescoring failed).
        A slide's ``state`` is ``reference``, ``composed``, ``missing`` (``error`` says why),
        ``waiting`` or ``not composed``.
    """
    out = []
    for series_id in series_ids(queue):
        status = series_status(queue, series_id)
        plan = get_series(queue, series_id)["plan"]
        links = status["links"]
        counts: dict[str, int] = {}
        for k in links:
            counts[k["state"]] = counts.get(k["state"], 0) + 1
        waiting = any(k["state"] in _WAITING for k in links)
        composed = status["composed"]
        by_slide = {s["slide_id"]: s for s in (composed or {}).get("slides") or []}
        ref = next(s for s in plan["slides"] if s["slide_id"] == status["reference"])
        slides = []
        for slide in plan["slides"]:
            row = _slide_row(slide, links, by_slide.get(slide["slide_id"]) if composed else None, waiting)
            scoreable = row["state"] == "composed" and slide.get("landmarks") and ref.get("landmarks")
            if rescore and scoreable:
                try:
                    row.update(_rescore(status["out"], series_id, slide, ref, floor))
                except (DrmimeError, OSError, ValueError) as exc:
                    row["landmark_error"] = " ".join(str(exc).split())
            slides.append(row)
        scored = [r["rtre_median"] for r in slides if r["state"] == "composed" and r["rtre_median"] is not None]
        composition = composed.get("state") if composed else None
        out.append({
            "series_id": series_id, "reference": status["reference"], "out": status["out"],
            "state": "waiting" if waiting else composition or "not composed", "composition": composition,
            "links": counts, "missing": [r["slide_id"] for r in slides if r["state"] == "missing"],
            "stack": (composed or {}).get("stack"), "composed_at": (composed or {}).get("composed_at"),
            "rtre_median": median(scored) if scored else None,
            "fields_not_composed": list((composed or {}).get("fields_not_composed") or []), "slides": slides,
        })
    return out


def series_links(queue: Queue) -> dict[str, dict[str, Any]]:
    """The series place of every pair that is a series link: ``{pair_id: {"series_id", "fixed_slide",
    "moving_slide", "distance"}}`` (``status --json`` shows it as each pair's ``series``)."""
    out = {}
    for series_id in series_ids(queue):
        for k in get_series(queue, series_id)["plan"]["links"]:
            out[k["pair_id"]] = {"series_id": series_id, "fixed_slide": k["fixed"], "moving_slide": k["moving"],
                                 "distance": k["distance"]}
    return out
