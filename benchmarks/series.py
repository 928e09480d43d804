"""Series benchmark: many sections into one frame, consistent over all links, against direct pairs and chaining.

1. lung-lesion-3 as one 5-slide series (He, CD31, proSPC, Cc10, Ki67; reference He): median rTRE
   of each slide into the He frame from the series (consistent), from plain chaining of the same
   links, and from a direct pair onto He.
2. A generated N-slide series (default 30) from the bundled H&E: each section a small random
   affine step (rotation, scale, shift) from the one before, with its own stain and noise; the
   reference is the first section, so error can pile up towards the far end. Error of the far end
   (mean distance over a 5x5 grid inside the frame, pixels and relative to the diagonal) with and
   without the consistency step.

3. Scale (``--scale-slides N --scale-size S``; the issue's target is 100 slides of 10 000 x 10 000):
   N generated tiled pyramidal OME-TIFFs (levels /1, /4, /16, JPEG tiles) under known random
   affine steps, registered as one series and composed, with the stack warped at full resolution
   (``--scale-no-warp`` skips it). The RSS of every worker process and of the driver is sampled
   (psutil, every 0.5 s); prints the peak per worker, the driver's peak (it writes the stack),
   slides per hour of the registrations and of the whole series, and the far end's error.
   Level 0 is the /4 level's pixels repeated 4x4 (so generation stays cheap; registration reads
   the /4 level, the stack warps level 0).
4. Stack memory (``--stack-slides 10,60 --stack-size 2000``): the stack writer alone
   (``write_stack``, no registration) on N generated slides of the same kind, placed by their true
   transforms; each N in a fresh process, its peak RSS (``VmHWM``), seconds and CPU seconds, for the writer
   as it is (a few planes per dask computation), the same with one plane per computation
   (``per-plane``) and the previous writer (``one-graph``: every plane and level in one graph,
   kept here as the peer). The figure: peak at the largest N minus at the smallest.

1-3 run the real pipeline: ``submit-series`` pairs in a queue, ``run_queue`` on a LocalCluster,
``compose_series``.

    python benchmarks/series.py                                   # defaults (slow on a laptop)
    python benchmarks/series.py --slides 8 --max-iterations 100 --max-size 384   # reduced
    python benchmarks/series.py --skip-lung --skip-generated --scale-slides 100 --scale-size 10000
    python benchmarks/series.py --skip-lung --skip-generated --stack-slides 10,60 --stack-size 2000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
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


class _RssSampler:
    """Peak RSS of this process and of each of its descendants (the cluster's workers), sampled."""

    def __init__(self, every: float = 0.5) -> None:
        import psutil

        self.me = psutil.Process()
        self.every = every
        self.peaks: dict[int, tuple[str, int]] = {}
        self.driver = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(self.every):
            self.driver = max(self.driver, self.me.memory_info().rss)
            for child in self.me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    name = " ".join(child.cmdline())[-40:]
                except psutil.Error:
                    continue
                old = self.peaks.get(child.pid, ("", 0))[1]
                self.peaks[child.pid] = (name, max(old, rss))

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def worker_peaks(self) -> list[int]:
        """Peak RSS of each descendant that ran work (the nannies' few MB are left out), largest first."""
        return sorted((rss for _, rss in self.peaks.values() if rss > 150e6), reverse=True)


def _run(queue: Any, args: argparse.Namespace) -> Any:
    from drmime_batch.engine import RunOptions, open_client, run_queue

    with open_client(workers=args.workers, threads_per_worker=1) as client:
        summary = run_queue(queue, client, options=RunOptions(warp=False))
    print(f"  ran {len(summary.done)} pair(s), {len(summary.failed)} failed", flush=True)
    return summary


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


def _make_slide(path: Path, size: int, truth: np.ndarray, rng: np.random.Generator, src: np.ndarray) -> None:
    """One tiled pyramidal OME-TIFF ``size`` square: the H&E, scaled to the frame, under ``truth``."""
    import tifffile
    from scipy.ndimage import map_coordinates

    tile, q = 256, size // 4
    zoom = size / max(src.shape[:2])  # H&E pixel -> frame pixel (level 0)
    inv = np.linalg.inv(truth)
    yy, xx = np.mgrid[0:q, 0:q].astype(np.float64) * 4 + 1.5  # level-0 centre of each /4 pixel
    pts = inv @ np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    he = [pts[1] / zoom, pts[0] / zoom]
    img = np.stack([map_coordinates(src[..., k], he, order=1, cval=255.0).reshape(q, q) for k in range(3)], axis=-1)
    stain = rng.uniform(0.8, 1.1, 3)
    lvl4 = np.clip(255 - (255 - img) * stain + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    del img, pts, he
    n = -(-size // tile)
    padded = np.full((n * tile // 4, n * tile // 4, 3), 255, np.uint8)
    padded[:q, :q] = lvl4

    def level0():
        t4 = tile // 4
        for i in range(n):
            for j in range(n):
                block = padded[i * t4:(i + 1) * t4, j * t4:(j + 1) * t4]
                yield np.repeat(np.repeat(block, 4, axis=0), 4, axis=1)

    def tiles(a: np.ndarray):
        h, w = a.shape[:2]
        for i in range(-(-h // tile)):
            for j in range(-(-w // tile)):
                out = np.full((tile, tile, 3), 255, np.uint8)
                b = a[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]
                out[:b.shape[0], :b.shape[1]] = b
                yield out

    opts: dict[str, Any] = {"tile": (tile, tile), "photometric": "rgb", "compression": "jpeg",
                            "compressionargs": {"level": 90}}
    lvl16 = np.ascontiguousarray(lvl4[::4, ::4])
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(level0(), shape=(size, size, 3), dtype=np.uint8, subifds=2,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **opts)
        for a in (lvl4, lvl16):
            tw.write(tiles(a), shape=a.shape, dtype=np.uint8, subfiletype=1, metadata=None, **opts)


def _scale_slides(n: int, size: int, work: Path, seed: int) -> tuple[list[Any], dict[str, np.ndarray]]:
    """``n`` slides ``z000..`` of ``size`` square in ``work``, each a random affine step from the one before."""
    from PIL import Image

    from drmime_batch.series import SeriesSlide

    rng = np.random.default_rng(seed)
    src = np.asarray(Image.open(EXAMPLE / "images" / f"{STAINS['He']}.jpg").convert("RGB"), dtype=np.float32)
    c = np.array([size / 2, size / 2])
    truth = {"z000": np.eye(3)}
    slides = []
    for i in range(n):
        sid = f"z{i:03d}"
        if i:
            a, sc = np.deg2rad(rng.normal(0, 1.5)), 1 + rng.normal(0, 0.01)
            lin = sc * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
            step = np.eye(3)
            step[:2, :2] = lin
            step[:2, 2] = c - lin @ c + rng.normal(0, 0.007 * size, 2)
            truth[sid] = step @ truth[f"z{i - 1:03d}"]
        path = work / f"{sid}.ome.tif"
        _make_slide(path, size, truth[sid], rng, src)
        slides.append(SeriesSlide(sid, str(path)))
    return slides, truth


def scale_series(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Many large generated slides as one series: peak RSS per worker, slides per hour, far-end error."""
    from drmime_batch.queue import Queue
    from drmime_batch.series import compose_series, plan_series, submit_series

    n, size = args.scale_slides, args.scale_size
    t0 = time.perf_counter()
    slides, truth = _scale_slides(n, size, work, args.seed)
    print(f"  generated {n} slides of {size} x {size} in {time.perf_counter() - t0:.0f} s", flush=True)
    plan = plan_series("big", slides, reference="z000", skip=args.scale_skip)
    with _RssSampler() as rss:
        t0 = time.perf_counter()
        with Queue.open(work / "big.sqlite", create=True) as queue:
            submit_series(queue, plan, out=work / "big.zarr", options={**_options(args), "transform": "affine"})
            run = _run(queue, args)
            t_reg = time.perf_counter() - t0
            t1 = time.perf_counter()
            summary = compose_series(queue, "big", warp=not args.scale_no_warp)
            t_compose = time.perf_counter() - t1
    seconds = time.perf_counter() - t0
    workers = rss.worker_peaks()
    diag = float(np.hypot(size, size))
    gy, gx = np.mgrid[0.2:0.8:5j, 0.2:0.8:5j]
    grid = np.stack([gx.ravel() * (size - 1), gy.ravel() * (size - 1), np.ones(25)])
    far = plan.slide_ids[-1]
    by = {s["slide_id"]: s for s in summary["slides"]}
    far_px = None
    if by[far].get("matrix") is not None:
        a, b = np.asarray(by[far]["matrix"]) @ grid, truth[far] @ grid
        far_px = float(np.mean(np.hypot(*(a[:2] / a[2] - b[:2] / b[2]))))
    return {"slides": n, "size": size, "links": len(plan.links), "done": len(run.done), "failed": len(run.failed),
            "state": summary["state"], "register_s": t_reg, "compose_s": t_compose, "seconds": seconds,
            "slides_per_hour_register": n / t_reg * 3600, "slides_per_hour": n / seconds * 3600,
            "worker_peak_rss_gb": [w / 1e9 for w in workers], "driver_peak_rss_gb": rss.driver / 1e9,
            "far_end": far, "far_px": far_px, "far_rel": None if far_px is None else far_px / diag,
            "stack": summary.get("stack") is not None}


def _one_graph_stack(path: Path, slides: list[tuple[str, str, np.ndarray | None]], *, reference_path: str) -> None:
    """The previous stack writer (the peer): every plane and every level in one dask graph.

    The same warps, levels and zarr arrays as ``write_stack`` (no attributes, no staging): the
    planes stacked along z (an unplaced one as zeros), every level stored by one ``da.store``.
    """
    import dask.array as da
    import zarr

    from drmime_batch.io import open_image, warp
    from drmime_batch.series._stack import _CHUNK, _chunks, _halve_yx, _level_shapes

    reference = open_image(reference_path)
    h, w = int(reference.shape[0]), int(reference.shape[1])
    planes = []
    for _, image_path, matrix in slides:
        if matrix is not None:
            arr = warp(open_image(image_path), matrix, like=reference, chunks=_CHUNK)
            planes.append(arr[None] if arr.ndim == 2 else da.moveaxis(arr, 2, 0))
        else:
            planes.append(None)
    first = next(p for p in planes if p is not None)
    zero = da.zeros(first.shape, dtype=first.dtype, chunks=(first.shape[0], _CHUNK, _CHUNK))
    level = da.stack([(p if p is not None else zero).rechunk((first.shape[0], _CHUNK, _CHUNK)) for p in planes])
    group = zarr.open_group(store=str(path), mode="w", zarr_format=3)
    sources, targets = [], []
    for i, shp in enumerate(_level_shapes(len(slides), first.shape[0], h, w)):
        if i:
            level = _halve_yx(sources[-1])
        sources.append(level.rechunk(_chunks(shp)))
        targets.append(group.create_array(str(i), shape=shp, dtype=first.dtype, chunks=_chunks(shp),
                                          dimension_names=["z", "c", "y", "x"], fill_value=0))
    da.store(sources, targets, lock=False, compute=True)


def _peak_rss() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` (its own memory only), else ``getrusage``.

    ``ru_maxrss`` of a spawned child also holds its parent's RSS at the fork (Linux keeps it across
    ``exec``): a parent that generated large slides would hide the child's own peak.
    """
    import resource

    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _stack_child(writer: str, slides: list[tuple[str, str, Any]], out: str) -> dict[str, float]:
    """In a fresh process: one stack write, its seconds, CPU seconds and peak RSS (before and after)."""
    import resource

    import dask.array  # noqa: F401  (imported before the baseline)
    import zarr  # noqa: F401

    from drmime_batch.io import open_image  # noqa: F401
    from drmime_batch.series._stack import write_stack

    if writer == "per-plane":  # the writer as it is, one plane per computation however small
        from drmime_batch.series import _stack

        _stack._CHUNKS_AT_ONCE = 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    base, cpu = _peak_rss(), usage.ru_utime + usage.ru_stime
    matrices = [(sid, path, None if m is None else np.asarray(m)) for sid, path, m in slides]
    t0 = time.perf_counter()
    if writer == "one-graph":
        _one_graph_stack(Path(out), matrices, reference_path=slides[0][1])
    else:
        write_stack(out, matrices, reference_path=slides[0][1])
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime - cpu,
            "peak_rss_gb": _peak_rss() / 1e9, "base_rss_gb": base / 1e9}


def stack_memory(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Peak RSS and seconds of the stack writer alone for each N of ``--stack-slides``, beside the previous one."""
    import multiprocessing
    import shutil
    from concurrent.futures import ProcessPoolExecutor

    counts = sorted(int(v) for v in args.stack_slides.split(","))
    writers = args.stack_writers.split(",")
    t0 = time.perf_counter()
    slides, truth = _scale_slides(max(counts), args.stack_size, work, args.seed)
    print(f"  generated {max(counts)} slides of {args.stack_size} x {args.stack_size} "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # untimed: compiled kernels' caches
        first = [(s.slide_id, s.path, truth[s.slide_id].tolist()) for s in slides[:1]]
        pool.submit(_stack_child, writers[0], first, str(work / "stack-warm-up")).result()
    for k, n in enumerate(counts):
        for writer in writers if k % 2 == 0 else writers[::-1]:  # alternate the order: the load drifts
            entries = [(s.slide_id, s.path, truth[s.slide_id].tolist()) for s in slides[:n]]
            out = work / f"stack-{writer}-{n}"
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                got = pool.submit(_stack_child, writer, entries, str(out)).result()
            shutil.rmtree(out, ignore_errors=True)
            rows.append({"writer": writer, "slides": n, **got})
            print(f"  {writer:<10} {n:>4} slides: {got['seconds']:7.1f} s ({got['cpu_s']:6.1f} s CPU), "
                  f"{n / got['seconds']:6.2f} planes/s, "
                  f"peak RSS {got['peak_rss_gb']:.3f} GB (after imports {got['base_rss_gb']:.3f})", flush=True)
    growth = {}
    for writer in writers:
        peaks = [next(r["peak_rss_gb"] for r in rows if r["writer"] == writer and r["slides"] == n) for n in counts]
        seconds = sum(r["seconds"] for r in rows if r["writer"] == writer)
        cpu = sum(r["cpu_s"] for r in rows if r["writer"] == writer)
        growth[writer] = {"peak_growth_gb": peaks[-1] - peaks[0], "steps_gb": [float(d) for d in np.diff(peaks)],
                          "seconds_per_plane": seconds / sum(counts), "cpu_s_per_plane": cpu / sum(counts)}
        steps = ", ".join(f"{a}->{b} {d * 1000:+.0f}" for a, b, d in zip(counts[:-1], counts[1:], np.diff(peaks), strict=True))
        print(f"  {writer}: peak RSS at {counts[-1]} minus at {counts[0]} slides "
              f"{growth[writer]['peak_growth_gb'] * 1000:+.0f} MB ({steps} MB); "
              f"{growth[writer]['seconds_per_plane']:.2f} s ({growth[writer]['cpu_s_per_plane']:.2f} s CPU) per plane "
              "over all runs", flush=True)
    from drmime_batch.evaluation import machine_info

    return {"size": args.stack_size, "counts": counts, "runs": rows, "growth": growth,
            "machine": machine_info(versions=("dask", "zarr", "numpy"))}


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
    p.add_argument("--scale-slides", type=int, default=0, help="slides of the scale run (0: no scale run)")
    p.add_argument("--scale-size", type=int, default=10_000, help="side of each scale slide (default 10000)")
    p.add_argument("--scale-skip", type=int, default=2, help="longest link of the scale series (default 2)")
    p.add_argument("--scale-no-warp", action="store_true", help="scale run without the full-resolution stack")
    p.add_argument("--stack-slides", help="stack memory run: comma-separated slide counts (e.g. 10,60)")
    p.add_argument("--stack-size", type=int, default=2000, help="side of each stack-run slide (default 2000)")
    p.add_argument("--stack-writers", default="current,one-graph",
                   help="stack writers to measure: current (write_stack as it is), per-plane (the same, one plane "
                        "per computation), one-graph (the previous one)")
    p.add_argument("--tmp", type=Path, help="scratch folder (default: the system's)")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
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
        if args.scale_slides:
            print(f"scale: {args.scale_slides} generated slides of {args.scale_size} x {args.scale_size} ...",
                  flush=True)
            big = results["scale"] = scale_series(args, work)
            peaks = big["worker_peak_rss_gb"]
            print(f"  {big['links']} links ({big['done']} done, {big['failed']} failed), {big['state']}; "
                  f"registration {big['register_s']:.0f} s ({big['slides_per_hour_register']:.0f} slides/h), "
                  f"composition{' + stack' if big['stack'] else ''} {big['compose_s']:.0f} s; "
                  f"whole series {big['slides_per_hour']:.0f} slides/h", flush=True)
            print(f"  peak RSS per worker: {', '.join(f'{p:.2f}' for p in peaks)} GB; driver {big['driver_peak_rss_gb']:.2f} GB; "
                  f"far end {big['far_end']}: {big['far_px']} px ({big['far_rel']})", flush=True)
        if args.stack_slides:
            print(f"stack memory: the stack writer alone, {args.stack_slides} slides of {args.stack_size} x "
                  f"{args.stack_size} ...", flush=True)
            results["stack_memory"] = stack_memory(args, work)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
