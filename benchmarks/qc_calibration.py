"""Calibrate the quality flags (:mod:`drmime_batch.quality`) on the robustness benchmark's outcomes.

Usage::

    python benchmarks/qc_calibration.py [--data DIR] [--json [OUT]] [--cases all|real|generated|...]

Nothing is registered again: every case of ``benchmarks/robustness.py`` is rebuilt with its own
case builders and each matrix stored in ``benchmarks/results/robustness-{real,generated}-cpu.json``
(drmime, identity, sitk, elastix) is assessed, plus deliberately broken ones made from the
DRMIME matrix (negative examples): mirrored about the fixed centre, rotated 25 degrees (off the 15-degree orientation grid), scaled
1.3x, shifted by 8 % of the diagonal. The deformable stage's outcomes (``drmime-d`` in
``results/robustness-lobes1-deformable-cpu.json`` and ``results/accuracy-deformable-lung-lesion3-cpu.json``)
are judged as the engine judges them: the features of the linear part plus the deformation's
Jacobian record, against the deformable map's own rTRE. Each row's truth is its landmark rTRE over the case's floor
(the least-squares affine fit of its landmarks): *bad* above 2x, *good* within 1.3x, in between
neither. The flag must catch every bad row and flag no good one.

Printed: every row's features, then the confusion table (flagged / not flagged against good / in
between / bad) and, per feature, the range over good rows and over bad rows (how the thresholds
were read off). ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STORED = ("robustness-real-cpu.json", "robustness-generated-cpu.json")
#: Deformable outcomes (``drmime-d``): lung-lobes-1 from robustness.py, lung-lesion-3 from accuracy.py
STORED_DEFORMABLE = ("robustness-lobes1-deformable-cpu.json", "accuracy-deformable-lung-lesion3-cpu.json")
GOOD, BAD = 1.3, 2.0


def _robustness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("robustness", Path(__file__).with_name("robustness.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["robustness"] = module
    spec.loader.exec_module(module)
    return module


def broken(matrix: np.ndarray, fixed_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Deliberately wrong variants of ``matrix`` (fixed -> moving), each about the fixed centre."""
    h, w = fixed_shape[:2]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    c = np.array([[1.0, 0.0, cx], [0.0, 1.0, cy], [0.0, 0.0, 1.0]])
    ci = np.linalg.inv(c)
    a = math.radians(25.0)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    d = 0.08 * math.hypot(h, w)
    return {
        "broken-mirror": matrix @ c @ np.diag([-1.0, 1.0, 1.0]) @ ci,
        "broken-rot25": matrix @ c @ rot @ ci,
        "broken-scale1.3": matrix @ c @ np.diag([1.3, 1.3, 1.0]) @ ci,
        "broken-shift8%": matrix @ np.array([[1.0, 0.0, d], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
    }


def label(ratio: float | None) -> str:
    """``good`` (within 1.3x the floor), ``bad`` (above 2x) or ``between``."""
    if ratio is None or not math.isfinite(ratio):
        return "bad"
    return "good" if ratio <= GOOD else "bad" if ratio > BAD else "between"


def rows_for(rb: ModuleType, stored: dict[str, Any], case: Any) -> list[dict[str, Any]]:
    """One row per stored or broken matrix of ``case``: its ratio to the floor, label and quality."""
    from drmime_batch.quality import judge, measure

    out = []
    matrices: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}
    for method, rec in stored["results"].items():
        if rec.get("matrix") is not None:
            matrices[method] = (np.asarray(rec["matrix"], dtype=np.float64), rec)
    if "drmime" in matrices:
        for name, m in broken(matrices["drmime"][0], case.fixed.shape).items():
            matrices[name] = (m, {})
    for method, (m, rec) in matrices.items():
        s = rb.score(m, case, stored)
        feats = measure(case.fixed, case.moving, m)
        q = judge(feats, init=rec.get("init"))
        out.append({"case": stored["name"], "group": stored["group"], "method": method,
                    "ratio": s["ratio_to_floor"], "label": label(s["ratio_to_floor"]),
                    "score": q.score, "flagged": q.flagged, "reasons": list(q.reasons), **feats})
    return out


def deformable_outcomes(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """``{case name: {matrix, deformation, ratio}}`` of the stored deformable (``drmime-d``) results.

    The ratio is the deformable map's landmark rTRE (through its field) over the case's affine
    floor, as stored by the benchmark that ran it; the matrix is the linear part, which is what
    the engine's quality check measures (plus the deformation's Jacobian record).
    """
    out: dict[str, dict[str, Any]] = {}
    for name in STORED_DEFORMABLE:
        path = results / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for c in data.get("cases", []):  # robustness.py's layout
            rec = c["results"].get("drmime-d")
            if rec and rec.get("matrix") is not None:
                out[c["name"]] = {"matrix": rec["matrix"], "deformation": rec.get("deformation"),
                                  "ratio": rec.get("ratio_to_floor")}
        floors = {p["pair_id"]: p["scores"]["rtre_median"] for p in data.get("pairs", []) if p["method"] == "floor"}
        for p in data.get("pairs", []):  # accuracy.py's layout
            if p["method"] == "drmime-d" and p.get("matrix") is not None and floors.get(p["pair_id"]):
                out[f"lesion3/{p['pair_id']}"] = {"matrix": p["matrix"], "deformation": p["scores"].get("deformation"),
                                                  "ratio": p["scores"]["rtre_median"] / floors[p["pair_id"]]}
    return out


def deformable_row(stored: dict[str, Any], case: Any, outcome: dict[str, Any]) -> dict[str, Any]:
    """The quality row of one deformable outcome, judged as the engine judges it."""
    from drmime_batch.quality import judge, measure

    feats = measure(case.fixed, case.moving, np.asarray(outcome["matrix"], dtype=np.float64))
    q = judge(feats, deformation=outcome.get("deformation"))
    return {"case": stored["name"], "group": stored["group"], "method": "drmime-d", "ratio": outcome["ratio"],
            "label": label(outcome["ratio"]), "score": q.score, "flagged": q.flagged, "reasons": list(q.reasons),
            **feats, "jacobian_min": (outcome.get("deformation") or {}).get("jacobian_min")}


def _fmt(value: float | None, spec: str) -> str:
    return "None" if value is None else format(value, spec)


def confusion(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Counts of flagged / not flagged per label."""
    table = {lab: {"flagged": 0, "not flagged": 0} for lab in ("good", "between", "bad")}
    for r in rows:
        table[r["label"]]["flagged" if r["flagged"] else "not flagged"] += 1
    return table


def main(argv: list[str] | None = None) -> int:
    """Assess every stored matrix; print rows, the confusion table and feature ranges."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--cases", default="all")
    p.add_argument("--json", type=Path, nargs="?", const=RESULTS / "qc-calibration-cpu.json", default=None)
    args = p.parse_args(argv)
    rb = _robustness()
    stored = {c["name"]: (c, json.loads((RESULTS / f).read_text())["size"])
              for f in STORED for c in json.loads((RESULTS / f).read_text())["cases"]}
    size = next(iter(stored.values()))[1]
    deformable = deformable_outcomes()
    specs = rb.lesion3_specs()
    lobes = args.data / rb.LOBES1_NAME
    if (lobes / "pairs.csv").is_file():
        specs += rb.lobes1_specs(lobes)
    specs += rb.generated_specs(size)
    rows: list[dict[str, Any]] = []
    for spec in rb.select_cases(specs, args.cases):
        if spec.name not in stored:
            continue
        case = spec.build()
        new = rows_for(rb, stored[spec.name][0], case)
        if spec.name in deformable:
            new.append(deformable_row(stored[spec.name][0], case, deformable[spec.name]))
        rows += new
        for r in new:
            print(f"{r['case'][:32]:32} {r['method']:16} ratio {r['ratio']:7.2f} {r['label']:8} "
                  f"dice {r['dice'] if r['dice'] is None else round(r['dice'], 3)!s:6} "
                  f"nmi {r['nmi']:.3f} sharp {r['sharpness']:.3f} peak {r['peak_margin']:.3f} orient {r['orientation_margin']:.3f} aniso {r['anisotropy']:.2f} "
                  f"area {r['area_change'] if r['area_change'] is None else round(r['area_change'], 2)!s:6} "
                  f"local {_fmt(r['local_shift'], '.4f')} coh {_fmt(r['local_coherence'], '.2f')} "
                  f"score {r['score']:.2f} {'FLAG' if r['flagged'] else ''}", flush=True)
    table = confusion(rows)
    d_rows = [r for r in rows if r["method"] == "drmime-d"]
    if d_rows:
        d_table = confusion(d_rows)
        print(f"\ndeformable outcomes ({len(d_rows)}): " + ", ".join(
            f"{lab} {d_table[lab]['flagged']} flagged / {d_table[lab]['not flagged']} not" for lab in d_table))
    print("\n| truth (rTRE / floor) | flagged | not flagged |\n|---|---|---|")
    for lab, name in (("good", f"good (<= {GOOD}x)"), ("between", f"between ({GOOD}x-{BAD}x)"),
                      ("bad", f"bad (> {BAD}x)")):
        print(f"| {name} | {table[lab]['flagged']} | {table[lab]['not flagged']} |")
    print("\nfeature ranges (min .. max):")
    for feat in ("dice", "sharpness", "peak_margin", "orientation_margin", "nmi", "anisotropy", "area_change",
                 "local_shift", "local_coherence"):
        for lab in ("good", "between", "bad"):
            vals = [r[feat] for r in rows if r["label"] == lab and r[feat] is not None]
            if vals:
                print(f"  {feat:12} {lab:7} {min(vals):8.3f} .. {max(vals):8.3f}  (n={len(vals)})")
    if args.json is not None:
        from drmime_batch.quality import THRESHOLDS

        data = os.path.relpath(args.data, REPO)  # no machine path in the record
        command = f"python benchmarks/qc_calibration.py --data {data} --cases {args.cases} --json"
        args.json.write_text(json.dumps({"command": command, "thresholds": THRESHOLDS, "rows": rows,
                                         "confusion": table}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
