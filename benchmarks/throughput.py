"""Engine throughput: overhead of the Dask engine, scaling over workers, per-iteration cost.

Prints figures, asserts nothing. Run from the repository root::

    python benchmarks/throughput.py [--pairs 8] [--iterations 60] [--size 256]

1. Engine overhead: the same N small pairs registered (a) by ``register`` in a plain loop in one
   process with one torch thread, (b) through the engine (queue + ``run_queue`` on a LocalCluster
   of one single-threaded worker, no warp). Target: (b) at most 10 % slower. Cluster start-up is
   reported separately (it is paid once per batch, not per pair).
2. Scaling: (b) with 1 and then 2 single-threaded workers. Target: >= 1.8x throughput (the machine's
   core count is printed; on a busy machine the figure is lower).
3. The core's per-iteration cost as the sampled points and the image size grow (it must not grow
   with image size: the optimiser samples a fixed number of points).

The pairs are crops of the bundled lung-lesion H&E with a known shift.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HE = ROOT / "drmime_batch" / "examples" / "cima-lung-lesion3" / "images" / "29-041-Izd2-w35-He-les3.jpg"


def make_pairs(folder: Path, n: int, size: int) -> list[tuple[str, Path, Path]]:
    from PIL import Image

    src = np.asarray(Image.open(HE).convert("RGB"))
    scale = max(1, min(src.shape[:2]) // (size + 40))
    img = src[::scale, ::scale]
    fixed = np.ascontiguousarray(img[10 : 10 + size, 20 : 20 + size])
    Image.fromarray(fixed).save(folder / "fixed.png")
    pairs = []
    for i in range(n):
        dx, dy = 3 + i % 4, -2 - i % 3
        moving = np.ascontiguousarray(img[10 - dy : 10 - dy + size, 20 + dx : 20 + dx + size])
        Image.fromarray(moving).save(folder / f"moving{i}.png")
        pairs.append((f"p{i}", folder / "fixed.png", folder / f"moving{i}.png"))
    return pairs


def loop_baseline(pairs: list[tuple[str, Path, Path]], options: dict) -> float:
    import torch
    from PIL import Image

    from drmime_batch import register

    torch.set_num_threads(1)
    register(np.asarray(Image.open(pairs[0][1])), np.asarray(Image.open(pairs[0][2])),
             **{**options, "max_iterations": 2, "min_iterations": 1})  # warm-up (imports, allocator)
    t0 = time.perf_counter()
    for _pid, f, m in pairs:
        register(np.asarray(Image.open(f).convert("RGB")), np.asarray(Image.open(m).convert("RGB")), **options)
    return time.perf_counter() - t0


def _warm_up(fixed: str, moving: str, options: dict) -> None:
    """On each worker: one tiny registration (imports, allocator), like the loop's warm-up call."""
    from drmime_batch.engine import PairTask, register_pair

    with tempfile.TemporaryDirectory() as d:
        register_pair(PairTask("warm-up", fixed, moving, out=str(Path(d) / "w.zarr"),
                               options={**options, "max_iterations": 2, "min_iterations": 1}))


def engine_run(pairs: list[tuple[str, Path, Path]], options: dict, workers: int, tmp: Path) -> tuple[float, float]:
    from drmime_batch.engine import RunOptions, open_client, run_queue
    from drmime_batch.queue import ManifestEntry, Queue

    qpath = tmp / f"q{workers}.sqlite"
    with Queue.open(qpath, create=True) as q:
        q.add([ManifestEntry(pid, str(f), str(m)) for pid, f, m in pairs], out=tmp / f"out{workers}.zarr",
              options=options)
        t0 = time.perf_counter()
        with open_client(workers=workers, threads_per_worker=1) as client:
            client.run(_warm_up, str(pairs[0][1]), str(pairs[0][2]), options)  # as the loop's warm-up
            startup = time.perf_counter() - t0
            t1 = time.perf_counter()
            summary = run_queue(q, client, options=RunOptions(warp=False))
            elapsed = time.perf_counter() - t1
        if summary.failed:
            print(f"  warning: {len(summary.failed)} pair(s) failed: {[q.get(p).error for p in summary.failed]}")
    return elapsed, startup


def per_iteration_cost(iterations: int) -> None:
    import torch
    from PIL import Image

    from drmime_batch import register

    torch.set_num_threads(1)
    src = np.asarray(Image.open(HE).convert("RGB"))
    print("\n3. core cost per iteration (1 torch thread, affine, MINE, 4 pyramid levels)")
    print("   the points are per level, so the level count is held fixed: only the image size varies")
    print(f"   {'image px':>9} {'levels':>7} {'points':>7} {'ms/iteration':>13}")
    for size, points in ((128, 2048), (256, 2048), (512, 2048), (1024, 2048), (2048, 2048),
                         (256, 512), (256, 8192)):
        f = np.asarray(Image.fromarray(src).resize((size, size * src.shape[0] // src.shape[1])))
        m = np.roll(f, (3, -2), axis=(0, 1))
        res = register(f, m, init="none", max_iterations=iterations, min_iterations=iterations, points=points,
                       fine_points=points, max_size=size, levels=4)
        per = 1000 * res.timings.get("optimise_s", res.timings.get("total_s", 0.0)) / max(1, res.iterations)
        print(f"   {size:>9} {len(res.level_scores):>7} {points:>7} {per:>13.1f}")

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--skip-core", action="store_true", help="skip the per-iteration table")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cores} usable core(s), load average {load:.1f}; python {sys.version.split()[0]}")
    options = {"transform": "affine", "max_iterations": args.iterations, "min_iterations": args.iterations,
               "init": "moments", "max_size": args.size}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pairs = make_pairs(tmp, args.pairs, args.size)
        print(f"{args.pairs} pairs of {args.size} px, {args.iterations} iterations each")
        loop = loop_baseline(pairs, options)
        one, startup1 = engine_run(pairs, options, 1, tmp)
        two, startup2 = engine_run(pairs, options, 2, tmp)
    rate = lambda s: 3600 * args.pairs / s  # noqa: E731
    print("\n1. engine overhead (one single-threaded worker vs a loop in one process, 1 torch thread)")
    print(f"   loop of register : {loop:7.1f} s  {rate(loop):8.0f} pairs/h")
    print(f"   engine, 1 worker : {one:7.1f} s  {rate(one):8.0f} pairs/h  (+{startup1:.1f} s cluster start)")
    print(f"   overhead         : {100 * (one / loop - 1):+7.1f} %   (target <= +10 %)")
    print("\n2. scaling")
    print(f"   engine, 2 workers: {two:7.1f} s  {rate(two):8.0f} pairs/h  (+{startup2:.1f} s cluster start)")
    print(f"   speed-up 1 -> 2  : {one / two:7.2f} x  (target >= 1.8x on >= 2 idle cores; this machine: {cores})")
    if not args.skip_core:
        per_iteration_cost(max(20, args.iterations // 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
