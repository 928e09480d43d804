"""A static, offline HTML page of a batch, rendered from a Jinja2 template.

Flagged pairs come first (then failed ones, then the rest), each with its quality score and
reasons, its figures, a contrast-normalised overlay and a checkerboard of the fixed and registered
images, its landmark error vectors (when the pair has landmarks), its similarity curve and the QC
picture the worker wrote; over the batch, the median rTRE of each pair before and after
registration. Pictures are PNG files beside ``index.html`` (relative links); the page loads
nothing from the network. The markup is the template ``templates/report.html.j2`` (autoescaped).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from drmime_batch.errors import DrmimeError
from drmime_batch.evaluation._scores import summarise

__all__ = ["LANDMARK_KEYS", "TEMPLATE", "order_rows", "write_html_report"]

logger = logging.getLogger(__name__)

#: Landmark figures shown when a row has them (flat keys or under ``row["landmarks"]``).
LANDMARK_KEYS = ("rtre_median", "rtre_mean", "rtre_max", "naed", "robustness", "identity_rtre_median", "tre_median_px")
#: The page's template, in this package's ``templates`` folder.
TEMPLATE = "report.html.j2"
#: Errors that leave a pair's picture out of the report (said on the page) instead of failing it.
_PICTURE_ERRORS = (DrmimeError, OSError, ValueError)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _matrix_text(matrix: Any) -> str:
    if matrix is None:
        return ""
    try:
        return "\n".join("  ".join(f"{float(v): .5g}" for v in row) for row in matrix)
    except (TypeError, ValueError):
        return str(matrix)


def _landmark_value(row: Mapping[str, Any], key: str) -> Any:
    if key in row:
        return row[key]
    nested = row.get("landmarks")
    if isinstance(nested, Mapping):
        return nested.get(key)
    return None


def _stem(index: int, pair_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", pair_id).strip("._") or "pair"
    return f"{index:04d}-{stem[:80]}"


def _fetch_url(url: str) -> bytes | None:
    """The bytes of a QC picture in an object store (``s3://...``), or None when unreachable."""
    from drmime_batch.io._fs import read_bytes

    try:
        return read_bytes(url)
    except (OSError, ImportError, ValueError) as exc:
        logger.debug("cannot fetch %s: %s", url, exc)
        return None


def _qc(row: Mapping[str, Any]) -> Mapping[str, Any]:
    qc = row.get("qc")
    return qc if isinstance(qc, Mapping) else {}


def _kind(row: Mapping[str, Any]) -> str:
    """``flagged``, ``failed``, ``done`` or ``other`` (pending, running, cancelled)."""
    state = str(row.get("state", ""))
    if state == "done" and _qc(row).get("flagged"):
        return "flagged"
    return state if state in ("failed", "done") else "other"


def order_rows(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of ``rows`` in report order: flagged pairs, then failed, then the rest (stable).

    Examples
    --------
    >>> order_rows([{"state": "done"}, {"state": "failed"}, {"state": "done", "qc": {"flagged": True}}])
    [2, 1, 0]
    """
    rank = {"flagged": 0, "failed": 1}
    return sorted(range(len(rows)), key=lambda i: (rank.get(_kind(rows[i]), 2), i))


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("drmime_batch.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _loss_history(row: Mapping[str, Any]) -> list[float]:
    history = row.get("loss_history")
    if history is None:
        registration = row.get("registration")
        if isinstance(registration, Mapping):
            history = registration.get("loss_history")
    try:
        return [float(v) for v in history or []]
    except (TypeError, ValueError):
        return []


def _copy_qc(row: Mapping[str, Any], pair_id: str, stem: str, out: Path) -> str | None:
    """Copy the worker's QC picture into ``out/qc/``; its relative path, or None when it is missing."""
    qc = row.get("qc_png")
    if not qc:
        return None
    src = Path(qc) if "://" not in str(qc) else None
    picture = _fetch_url(str(qc)) if src is None else None
    if picture is None and (src is None or not src.is_file()):
        logger.warning("pair %s: QC image %s does not exist; left out of the report", pair_id, qc)
        return None
    (out / "qc").mkdir(exist_ok=True)
    name = f"{stem}.png"
    if picture is not None:
        (out / "qc" / name).write_bytes(picture)
    else:
        shutil.copyfile(src, out / "qc" / name)  # type: ignore[arg-type]
    return f"qc/{name}"


def _save_rgb(rgb: np.ndarray, path: Path) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".partial")
    # 64 colours are plenty for two stain densities, and make the file about 3x smaller
    Image.fromarray(rgb).quantize(64, dither=Image.Dither.NONE).save(tmp, format="PNG", optimize=True)
    tmp.replace(path)


def _read_field(row: Mapping[str, Any]) -> Any:
    out, pair_id = row.get("out"), row.get("pair_id")
    if not out or not pair_id:
        return None
    from drmime_batch.io import read_field

    try:
        return read_field(str(out), str(pair_id))
    except _PICTURE_ERRORS as exc:
        logger.debug("pair %s: no displacement field read: %s", pair_id, exc)
        return None


def _landmark_figure(row: Mapping[str, Any], views: Any, matrix: np.ndarray, field: Any, path: Path) -> str:
    """Draw the landmark error vectors of a pair; returns the caption."""
    from drmime_batch.core._convention import apply_matrix
    from drmime_batch.core._field import map_points
    from drmime_batch.evaluation._landmarks import pair_landmarks, read_landmarks
    from drmime_batch.evaluation._report_plots import plot_landmark_vectors
    from drmime_batch.evaluation._scores import image_diagonal, landmark_errors

    f, m = pair_landmarks(read_landmarks(row["fixed_landmarks"]), read_landmarks(row["moving_landmarks"]))
    rtre = landmark_errors(matrix, f, m, field=field) / image_diagonal(views.fixed_shape)
    warped = map_points(matrix, field, m, inverse=True)  # moving landmarks in fixed pixels
    f_t, w_t = apply_matrix(views.to_thumbnail, f), apply_matrix(views.to_thumbnail, warped)
    length = float(np.median(np.hypot(*(f_t - w_t).T)))
    magnify = int(np.clip(round(12.0 / length), 1, 20)) if length > 0 else 1
    plot_landmark_vectors(views.fixed, f_t, f_t - magnify * (f_t - w_t), rtre, path)
    longer = f", drawn {magnify}× longer" if magnify > 1 else ""
    return (f"landmark errors: arrows from each warped moving landmark to its fixed landmark{longer}; "
            f"colour: rTRE (median {_fmt(float(np.median(rtre)))}, {len(rtre)} landmarks)")


def _pair_figures(row: Mapping[str, Any], stem: str, out: Path) -> tuple[list[dict[str, str]], list[str]]:
    """The pictures of one pair (written under ``out/figures/``) and notes on any left out."""
    figures: list[dict[str, str]] = []
    notes: list[str] = []
    pair_id = str(row.get("pair_id", ""))
    fig_dir = out / "figures"
    matrix = row.get("matrix")
    if str(row.get("state")) == "done" and matrix is not None and row.get("fixed") and row.get("moving"):
        from drmime_batch.evaluation._report_views import checkerboard, load_pair_views, overlay

        m = np.asarray(matrix, dtype=np.float64)
        field = _read_field(row)
        try:
            views = load_pair_views(str(row["fixed"]), str(row["moving"]), m, out=row.get("out") and str(row["out"]),
                                    pair_id=pair_id, field=field)
        except _PICTURE_ERRORS as exc:
            logger.warning("pair %s: no overlay in the report: %s", pair_id, exc)
            notes.append(f"no overlay: {exc}")
            views = None
        if views is not None:
            fig_dir.mkdir(exist_ok=True)
            _save_rgb(overlay(views.fixed, views.registered), fig_dir / f"{stem}-overlay.png")
            _save_rgb(checkerboard(views.fixed, views.registered), fig_dir / f"{stem}-checkerboard.png")
            figures.append({"kind": "overlay", "src": f"figures/{stem}-overlay.png",
                            "caption": "overlay: fixed in magenta, registered in green (each stain contrast-"
                                       f"normalised), black where both have tissue; registered image: {views.source}"})
            figures.append({"kind": "checkerboard", "src": f"figures/{stem}-checkerboard.png",
                            "caption": "checkerboard: fixed (magenta) and registered (green) squares; tissue "
                                       "should run on across their edges"})
            if row.get("fixed_landmarks") and row.get("moving_landmarks"):
                try:
                    caption = _landmark_figure(row, views, m, field, fig_dir / f"{stem}-landmarks.png")
                except _PICTURE_ERRORS as exc:
                    logger.warning("pair %s: no landmark vectors in the report: %s", pair_id, exc)
                    notes.append(f"no landmark vectors: {exc}")
                else:
                    figures.append({"kind": "landmarks", "src": f"figures/{stem}-landmarks.png", "caption": caption})
    history = _loss_history(row)
    if history:
        from drmime_batch.evaluation._report_plots import plot_similarity_curve

        fig_dir.mkdir(exist_ok=True)
        iterations = row.get("iterations")
        plot_similarity_curve(history, fig_dir / f"{stem}-curve.png",
                              iterations=int(iterations) if iterations else None, metric=row.get("metric"))
        figures.append({"kind": "curve", "src": f"figures/{stem}-curve.png",
                        "caption": "similarity during the optimisation (smoothed; dotted: the last value)"})
    qc_src = _copy_qc(row, pair_id, stem, out)
    if qc_src:
        figures.append({"kind": "qc", "src": qc_src, "caption": f"{pair_id}: QC picture written by the worker"})
    return figures, notes


def _rtre_plot(rows: Sequence[Mapping[str, Any]], out: Path) -> str | None:
    from drmime_batch.evaluation._report_plots import plot_rtre_distribution

    before, after, flagged = [], [], []
    for row in rows:
        b, a = _landmark_value(row, "identity_rtre_median"), _landmark_value(row, "rtre_median")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a) and math.isfinite(b):
            before.append(float(b))
            after.append(float(a))
            flagged.append(_kind(row) == "flagged")
    if not after:
        return None
    (out / "figures").mkdir(exist_ok=True)
    plot_rtre_distribution(before, after, out / "figures" / "rtre-before-after.png", flagged=flagged)
    return "figures/rtre-before-after.png"


def write_html_report(rows: Sequence[Mapping[str, Any]], out_dir: Path, *, title: str) -> Path:
    """Write ``out_dir/index.html``: the pairs (flagged first), their pictures and the batch's figures.

    The page needs nothing but the folder: pictures are PNG files in ``out_dir/figures/`` and
    ``out_dir/qc/`` referenced by relative paths, the CSS is inline, and nothing is loaded from the
    network. Reads the pairs' images (small pyramid levels), landmark files and output stores;
    writes files (``index.html`` atomically); the rows are not modified. A picture that cannot be
    made (an image gone, a landmark file unreadable) is left out with a note on the page.

    Parameters
    ----------
    rows : sequence of mappings
        One per pair, with keys ``pair_id``, ``state``, ``seconds``, ``error``, ``matrix`` (3x3
        list of lists or None), ``qc_png`` (path or None) and, when landmarks were scored, the
        figures of :class:`LandmarkScores` (``rtre_median``, ``naed``, ...) either as keys of the
        row or under ``row["landmarks"]``. Optional keys add to the page: ``qc`` (the quality
        record: ``score``, ``flagged``, ``reasons``), ``failure``, ``fixed`` and ``moving`` (image
        files: overlay and checkerboard), ``out`` (the output store: its registered image and
        displacement field are used), ``fixed_landmarks`` and ``moving_landmarks`` (files: error
        vectors), ``loss_history`` (or ``registration["loss_history"]``), ``iterations`` and
        ``metric`` (the similarity curve). Missing keys show as empty cells.
    out_dir : Path
        Folder to write to (created if needed).
    title : str
        Page title.

    Returns
    -------
    Path
        The ``index.html`` written.

    Examples
    --------
    >>> import tempfile
    >>> out = write_html_report([{"pair_id": "a", "state": "done", "seconds": 1.5, "error": None,
    ...                           "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "qc_png": None,
    ...                           "rtre_median": 0.01}], Path(tempfile.mkdtemp()), title="batch")
    >>> out.name, "0.0100" in out.read_text()
    ('index.html', True)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    show_landmarks = [k for k in LANDMARK_KEYS if any(_landmark_value(r, k) is not None for r in rows)]

    pairs: list[dict[str, Any]] = []
    for index in order_rows(rows):
        row = rows[index]
        pair_id = str(row.get("pair_id", f"#{index}"))
        stem = _stem(index, pair_id)
        qc = _qc(row)
        figures, notes = _pair_figures(row, stem, out)
        score = qc.get("score")
        pairs.append({
            "pair_id": pair_id,
            "anchor": f"pair-{stem}",
            "state": str(row.get("state", "")),
            "kind": _kind(row),
            "flagged": _kind(row) == "flagged",
            "qc_score": _fmt(float(score), 2) if isinstance(score, (int, float)) else "",
            "reasons": [str(r) for r in qc.get("reasons") or []],
            "seconds": _fmt(row.get("seconds"), 2),
            "landmark_values": [_fmt(_landmark_value(row, k)) for k in show_landmarks],
            "matrix": _matrix_text(row.get("matrix")),
            "error": str(row.get("error") or ""),
            "failure": str(row.get("failure") or ""),
            "figures": figures,
            "notes": notes,
        })

    summary = []
    for key in ("seconds", *show_landmarks):
        values = [row.get(key) if key == "seconds" else _landmark_value(row, key) for row in rows]
        s = summarise(v for v in values if isinstance(v, (int, float)))
        if s["n"]:
            summary.append({"key": key, "n": s["n"], "median": _fmt(s["median"]), "mean": _fmt(s["mean"]),
                            "p90": _fmt(s["p90"])})
    states: dict[str, int] = {}
    for row in rows:
        states[str(row.get("state", ""))] = states.get(str(row.get("state", "")), 0) + 1

    page = _environment().get_template(TEMPLATE).render(
        title=title,
        n_pairs=len(rows),
        n_flagged=sum(p["flagged"] for p in pairs),
        states=sorted(states.items()),
        summary=summary,
        rtre_plot=_rtre_plot(rows, out),
        landmark_keys=show_landmarks,
        pairs=pairs,
    )
    target = out / "index.html"
    tmp = out / "index.html.partial"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target
