"""A static, offline HTML page of a batch: one row per pair, its figures and its QC overlay."""

from __future__ import annotations

import html
import logging
import math
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from drmime_batch.evaluation._scores import summarise

__all__ = ["LANDMARK_KEYS", "write_html_report"]

logger = logging.getLogger(__name__)

#: Landmark figures shown when a row has them (flat keys or under ``row["landmarks"]``).
LANDMARK_KEYS = ("rtre_median", "rtre_mean", "rtre_max", "naed", "robustness", "identity_rtre_median", "tre_median_px")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f0f0f0; }
td.text { text-align: left; }
td.state-done { color: #1a7f37; } td.state-failed { color: #cf222e; }
pre { margin: 0; font-size: 0.85em; }
figure { display: inline-block; margin: 0 1em 1em 0; }
figure img { max-width: 420px; border: 1px solid #ccc; }
"""


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


def _safe_name(index: int, pair_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", pair_id).strip("._") or "pair"
    return f"{index:04d}-{stem[:80]}.png"


def _fetch_url(url: str) -> bytes | None:
    """The bytes of a QC picture in an object store (``s3://...``), or None when unreachable."""
    from drmime_batch.io._fs import read_bytes

    try:
        return read_bytes(url)
    except (OSError, ImportError, ValueError) as exc:
        logger.debug("cannot fetch %s: %s", url, exc)
        return None


def write_html_report(rows: Sequence[Mapping[str, Any]], out_dir: Path, *, title: str) -> Path:
    """Write ``out_dir/index.html``: a table of the pairs, a summary and each pair's QC overlay.

    The page needs nothing but the folder: QC images are copied into ``out_dir/qc/`` and
    referenced by relative paths; the CSS is inline. Writes files (``index.html`` atomically);
    the rows are not modified.

    Parameters
    ----------
    rows : sequence of mappings
        One per pair, with keys ``pair_id``, ``state``, ``seconds``, ``error``, ``matrix`` (3x3
        list of lists or None), ``qc_png`` (path or None) and, when landmarks were scored, the
        figures of :class:`LandmarkScores` (``rtre_median``, ``naed``, ...) either as keys of the
        row or under ``row["landmarks"]``. Missing keys show as empty cells.
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
    qc_dir = out / "qc"
    out.mkdir(parents=True, exist_ok=True)
    show_landmarks = [k for k in LANDMARK_KEYS if any(_landmark_value(r, k) is not None for r in rows)]

    head = ["pair", "state", "seconds", *show_landmarks, "matrix (fixed → moving)", "error"]
    body: list[str] = []
    figures: list[str] = []
    for index, row in enumerate(rows):
        pair_id = str(row.get("pair_id", f"#{index}"))
        state = str(row.get("state", ""))
        cells = [
            f'<td class="text">{html.escape(pair_id)}</td>',
            f'<td class="text state-{html.escape(state)}">{html.escape(state)}</td>',
            f"<td>{html.escape(_fmt(row.get('seconds'), 2))}</td>",
        ]
        cells += [f"<td>{html.escape(_fmt(_landmark_value(row, k)))}</td>" for k in show_landmarks]
        cells.append(f'<td class="text"><pre>{html.escape(_matrix_text(row.get("matrix")))}</pre></td>')
        cells.append(f'<td class="text">{html.escape(str(row.get("error") or ""))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
        qc = row.get("qc_png")
        if qc:
            src = Path(qc) if "://" not in str(qc) else None
            picture = _fetch_url(str(qc)) if src is None else None
            if picture is not None or (src is not None and src.is_file()):
                qc_dir.mkdir(exist_ok=True)
                name = _safe_name(index, pair_id)
                if picture is not None:
                    (qc_dir / name).write_bytes(picture)
                else:
                    shutil.copyfile(src, qc_dir / name)  # type: ignore[arg-type]
                figures.append(
                    f'<figure><img src="qc/{html.escape(name)}" alt="QC overlay of {html.escape(pair_id)}">'
                    f"<figcaption>{html.escape(pair_id)}</figcaption></figure>"
                )
            else:
                logger.warning("pair %s: QC image %s does not exist; left out of the report", pair_id, qc)

    summary_rows = []
    for key in ("seconds", *show_landmarks):
        values = [row.get(key) if key == "seconds" else _landmark_value(row, key) for row in rows]
        s = summarise(v for v in values if isinstance(v, (int, float)))
        if s["n"]:
            summary_rows.append(
                f'<tr><td class="text">{html.escape(key)}</td><td>{s["n"]}</td><td>{_fmt(s["median"])}</td>'
                f'<td>{_fmt(s["mean"])}</td><td>{_fmt(s["p90"])}</td></tr>'
            )
    states: dict[str, int] = {}
    for row in rows:
        states[str(row.get("state", ""))] = states.get(str(row.get("state", "")), 0) + 1
    state_text = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(states.items()))

    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(rows)} pairs ({state_text})</p>",
            "<h2>Summary</h2>",
            '<table id="summary"><tr><th>figure</th><th>n</th><th>median</th><th>mean</th><th>90th pct</th></tr>',
            *summary_rows,
            "</table>",
            "<h2>Pairs</h2>",
            '<table id="pairs"><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>",
            *body,
            "</table>",
            "<h2>QC overlays</h2>" if figures else "",
            *figures,
            "</body></html>",
        ]
    )
    target = out / "index.html"
    tmp = out / "index.html.partial"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return target
