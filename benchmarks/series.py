"""Series benchmark: many sections into one frame, consistent over all links, against direct pairs and chaining.

1. lung-lesion-3 as one 5-slide series (He, CD31, proSPC, Cc10, Ki67; reference He): median rTRE
   of each slide into the He frame from the series (consistent), from plain chaining of the same
   links, and from a direct pair onto He.
2. A generated N-slide series (default 30) from the bundled H&E: each section a small random
   affine step (rotation, scale, shift) from the one before, with its own stain and noise; the
   reference is the first section, so error can pile up towards the far end. Error of the far end
   (mean distance over a 5x5 grid inside the frame, pixels and relative to the diagonal) with and
   without the consistency step.

Both run the real pipeline: ``submit-series`` pairs in a queue, ``run_queue`` on a LocalCluster,
``compose_series``.

    python benchmarks/series.py                                   # defaults (slow on a laptop)
    python benchmarks/series.py --slides 8 --max-iterations 100 --max-size 384   # reduced
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "drmime_batch" / "examples" / "cima-lung-lesion3"
STAINS = {"He": "29-041-Izd2-w35-He-les3", "CD31": "29-041-Izd2-w35-CD31-3-les3",
          "proSPC": "29-041-Izd2-w35-proSPC-4-les3", "Cc10": "29-041-Izd2-w35-Cc10-5-les3",
          "Ki67": "29-041-Izd2-w35-Ki67-7-les3"}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {"threads": args.threads}
    if args.max_iterations:
        opts["max_iterations"] = args.max_iterations
    if args.max_size:
        opts["max_size"] = args.max_size
    return opts


def _run(queue: Any, args: argparse.Namespace) -> None:
    from drmime_batch.engine import RunOptions, open_client, run_queue

    with open_client(workers=args.workers, threads_per_worker=1) as client:
        summary = run_queue(queue, client, options=RunOptions(warp=False))
    print(f"  ran {len(summary.done)} pair(s), {len(summary.failed)} failed", flush=True)


def lung_series(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from drmime_batch.evaluation import evaluate_matrix, read_landmarks
    from drmime_batch.outcome import PairOutcome
    from drmime_batch.queue import ManifestEntry, Queue
    from drmime_batch.series import SeriesSlide, compose_series, plan_series, submit_series

    lm = EXAMPLE / "landmarks-5pc-user-PS"
    slides = [SeriesSlide(k, str(EXAMPLE / "images" / f"{v}.jpg"), str(lm / f"{v}.csv")) for k, v in STAINS.items()]
    plan = plan_series("lung", slides, reference="He")
    direct = [ManifestEntry(f"direct--{s.slide_id}-to-He", slides[0].path, s.path, slides[0].landmarks, s.landmarks)
              for s in slides[1:]]
    t0 = time.perf_counter()
    with Queue.open(work / "lung.sqlite", create=True) as queue:
        submit_series(queue, plan, out=work / "lung.zarr", options=_options(args))
        queue.add(direct, out=work / "lung.zarr", options=_options(args))
        _run(queue, args)
        summary = compose_series(queue, "lung", warp=False)
        rows = {r.pair_id: r for r in queue.rows()}
    seconds = time.perf_counter() - t0
    table = {}
    for s in summary["slides"]:
        if s["slide_id"] == "He":
            continue
        row = rows[f"direct--{s['slide_id']}-to-He"]
        d = None
        if row.state == "done":
            out = PairOutcome.from_row(row)
            d = evaluate_matrix(np.asarray(row.matrix), read_landmarks(slides[0].landmarks),
                                read_landmarks(plan.slide(s["slide_id"]).landmarks),
                                fixed_shape=out.fixed.shape if out.fixed else (0, 0)).rtre_median
        table[s["slide_id"]] = {
            "series": (s.get("landmarks") or {}).get("rtre_median"),
            "chain": (s.get("chain_landmarks") or {}).get("rtre_median"),
            "direct": d,
            "before": (s.get("landmarks") or {}).get("identity_rtre_median"),
        }
    return {"per_slide": table, "seconds": seconds,
            "median": {k: median(v[k] for v in table.values() if v[k] is not None) for k in ("series", "chain", "direct", "before")}}


def _generate(n: int, seed: int, work: Path) -> tuple[list[Any], dict[str, np.ndarray], tuple[int, int]]:
    from PIL import Image
    from scipy.ndimage import map_coordinates

    from drmime_batch.series import SeriesSlide

    rng = np.random.default_rng(seed)
    src = np.asarray(Image.open(EXAMPLE / "images" / f"{STAINS['He']}.jpg").convert("RGB"), dtype=np.float32)
    src = src[::2, ::2]
    h, w = src.shape[:2]
    c = np.array([w / 2, h / 2])
    truth = {"g00": np.eye(3)}
    slides = []
    for i in range(n):
        sid = f"g{i:02d}"
        if i:
            a = np.deg2rad(rng.normal(0, 1.5))
            s = 1 + rng.normal(0, 0.01)
            lin = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            step = np.eye(3)
            step[:2, :2] = lin
            step[:2, 2] = c - lin @ c + rng.normal(0, 3, 2)
            truth[sid] = step @ truth[f"g{i - 1:02d}"]
        # slide(q) = he(T⁻¹ q): reference pixel p shows slide pixel T p
        inv = np.linalg.inv(truth[sid])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        pts = inv @ np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
        img = np.stack([map_coordinates(src[..., k], [pts[1], pts[0]], order=1, cval=255.0).reshape(h, w)
                        for k in range(3)], axis=-1)
        stain = rng.uniform(0.8, 1.1, 3)
        img = np.clip(255 - (255 - img) * stain + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        path = work / f"{sid}.png"
        Image.fromarray(img).save(path)
        slides.append(SeriesSlide(sid, str(path)))
    return slides, truth, (h, w)


def generated_series(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from drmime_batch.queue import Queue
    from drmime_batch.series import compose_series, plan_series, submit_series

    slides, truth, (h, w) = _generate(args.slides, args.seed, work)
    plan = plan_series("gen", slides, reference="g00")
    t0 = time.perf_counter()
    with Queue.open(work / "gen.sqlite", create=True) as queue:
        submit_series(queue, plan, out=work / "gen.zarr", options={**_options(args), "transform": "affine"})
        _run(queue, args)
        summary = compose_series(queue, "gen", warp=False)
    seconds = time.perf_counter() - t0

    gy, gx = np.mgrid[0.2:0.8:5j, 0.2:0.8:5j]
    grid = np.stack([gx.ravel() * (w - 1), gy.ravel() * (h - 1), np.ones(25)])
    diag = float(np.hypot(h, w))

    def err(m: Any, t: np.ndarray) -> float | None:
        if m is None:
            return None
        a, b = np.asarray(m) @ grid, t @ grid
        return float(np.mean(np.hypot(*(a[:2] / a[2] - b[:2] / b[2]))))

    by = {s["slide_id"]: s for s in summary["slides"]}

    chain = _chain_matrices(work, plan)
    far = plan.slide_ids[-1]
    per = []
    for sid in plan.slide_ids[1:]:
        per.append({"slide": sid, "consistent_px": err(by[sid].get("matrix"), truth[sid]),
                    "chain_px": err(chain.get(sid), truth[sid])})
    far_row = per[-1]
    return {"slides": args.slides, "far_end": far, "far_consistent_px": far_row["consistent_px"],
            "far_chain_px": far_row["chain_px"], "far_consistent_rel": (far_row["consistent_px"] or 0) / diag,
            "far_chain_rel": (far_row["chain_px"] or 0) / diag,
            "mean_consistent_px": float(np.mean([p["consistent_px"] for p in per if p["consistent_px"] is not None])),
            "mean_chain_px": float(np.mean([p["chain_px"] for p in per if p["chain_px"] is not None])),
            "per_slide": per, "seconds": seconds, "state": summary["state"]}


def _chain_matrices(work: Path, plan: Any) -> dict[str, np.ndarray]:
    from drmime_batch.outcome import PairOutcome
    from drmime_batch.queue import Queue
    from drmime_batch.series import LinkMatrix, chain_transforms, link_weight

    with Queue.open(work / "gen.sqlite") as queue:
        rows = {r.pair_id: r for r in queue.rows()}
    links = [LinkMatrix(k.fixed, k.moving, np.asarray(rows[k.pair_id].matrix), link_weight(k.distance,
             PairOutcome.from_row(rows[k.pair_id])), k.pair_id)
             for k in plan.links if rows[k.pair_id].state == "done"]
    return chain_transforms(plan.reference, links)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", type=int, default=30, help="sections of the generated series (default 30)")
    p.add_argument("--max-iterations", type=int, help="iteration cap (default: the library's)")
    p.add_argument("--max-size", type=int, help="registered level's longer side (default: the library's)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads per pair")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-lung", action="store_true")
    p.add_argument("--skip-generated", action="store_true")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_lung:
            print("lung-lesion-3 as one series (reference He) ...", flush=True)
            lung = results["lung"] = lung_series(args, work)
            print(f"  {'slide':<8} {'series':>8} {'chain':>8} {'direct':>8} {'before':>8}")
            for sid, v in lung["per_slide"].items():
                print(f"  {sid:<8} " + " ".join(f"{v[k]:8.4f}" if v[k] is not None else f"{'-':>8}"
                                                for k in ("series", "chain", "direct", "before")))
            m = lung["median"]
            print(f"  median rTRE into He: series {m['series']:.4f}, chain {m['chain']:.4f}, direct {m['direct']:.4f}, "
                  f"before {m['before']:.4f} ({lung['seconds']:.0f} s)", flush=True)
        if not args.skip_generated:
            print(f"generated series of {args.slides} sections (reference the first) ...", flush=True)
            gen = results["generated"] = generated_series(args, work)
            print(f"  far end {gen['far_end']}: consistent {gen['far_consistent_px']:.2f} px "
                  f"({gen['far_consistent_rel']:.4f}), chain {gen['far_chain_px']:.2f} px ({gen['far_chain_rel']:.4f}); "
                  f"mean over slides {gen['mean_consistent_px']:.2f} vs {gen['mean_chain_px']:.2f} px "
                  f"({gen['seconds']:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
