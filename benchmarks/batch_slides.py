"""Whole batch at slide size: ``drmime-batch submit`` then ``run`` on generated pyramidal OME-TIFFs.

Generates N pairs (``--pairs``, default 2) of tiled, JPEG-compressed pyramidal OME-TIFFs whose
longer side is ``--size`` pixels (default 18 000, i.e. about 18 000 x 13 300 x 3) from the real
bundled lung-lesion-3 images (``drmime_batch/examples/cima-lung-lesion3``, BSD-3-Clause): each
892 x 661 JPEG is upscaled about 20x by cubic-spline interpolation, computed tile by tile
(512-pixel tiles, levels /1, /4, /16, 0.5 µm/px, a little noise), so generation never holds a
slide in memory. The fixed slide is the H&E; each pair's moving slide is one of the other
stains (CD31, Cc10, Ki67, proSPC, cycled) with a known extra rotation (1.5-3°) and shift
(about 1 % of the side) on top of the stains' own misalignment. The landmarks (user-PS) are
scaled by the same factor (and the moving ones moved by the same rotation and shift), so
``drmime-batch evaluate`` gives the rTRE of the registration done at slide size.

Then, as a user would, each in a subprocess (the ``drmime-batch`` console script):

- ``drmime-batch submit MANIFEST --queue Q --out STORE`` (default registration settings, or
  those of ``--option KEY=VALUE``, passed on to submit);
- ``drmime-batch run --queue Q --workers W`` (embedded LocalCluster, 1 thread per worker,
  registered images written: the default);
- ``drmime-batch evaluate --queue Q --json FILE`` (untimed).

While each runs, the RSS of its whole process tree and of every process in it is sampled every
``--every`` seconds (psutil). The Dask worker processes are the tree's processes started by
``multiprocessing``'s spawn (``spawn_main`` in the command line; its resource tracker left
out); everything else (the driver, which also holds the nannies and the scheduler) is "driver".
The tree's figure is the sum of the processes' RSS, so pages shared between them count more
than once (an upper bound). Printed: wall time of submit and of run, pairs per hour (submit +
run), peak RSS per worker, of the driver and of the whole tree, the load average before and
after, and per pair the seconds and median rTRE (before -> after, and the best affine fit of
the landmarks: the floor).

Target (issue 17): a batch throughput figure at slide size with peak RSS < 2 GB per worker.

    python benchmarks/batch_slides.py                        # 2 pairs of 18 000 px: ~5 min to make, ~1.5 min to run
    python benchmarks/batch_slides.py --size 1500 --pairs 1  # a smoke run (under a minute)
    nice -n 5 python benchmarks/batch_slides.py --json batch_slides.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drmime_batch.core import apply_matrix
from drmime_batch.evaluation import machine_summary, read_landmarks, write_landmarks

EXAMPLE = Path(__file__).resolve().parent.parent / "drmime_batch" / "examples" / "cima-lung-lesion3"
FIXED_STAIN = "He"
MOVING_STAINS = ("CD31-3", "Cc10-5", "Ki67-7", "proSPC-4")
TILE = 512
LEVELS = (1, 4, 16)
PIXEL_UM = 0.5
WORKER_MARK = "spawn_main"



def _image_path(stain: str) -> Path:
    return EXAMPLE / "images" / f"29-041-Izd2-w35-{stain}-les3.jpg"


def _landmark_path(stain: str) -> Path:
    return EXAMPLE / "landmarks-5pc-user-PS" / f"29-041-Izd2-w35-{stain}-les3.csv"


def scale_matrix(factor: float) -> np.ndarray:
    """Source pixel -> slide pixel (x, y, 1) for an upscale by ``factor`` (pixel centres matched)."""
    return np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2], [0, 0, 1.0]])


def rigid_matrix(degrees: float, shift: tuple[float, float], centre: tuple[float, float]) -> np.ndarray:
    """A rotation by ``degrees`` about ``centre`` followed by ``shift`` (slide pixels, x, y)."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    to_c = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1.0]])
    move = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1.0]])
    return move @ np.linalg.inv(to_c) @ rot @ to_c


def make_slide(
    path: Path,
    image: Path,
    shape: tuple[int, int],
    to_slide: np.ndarray,
    *,
    noise: float = 4.0,
    seed: int = 0,
) -> None:
    """Write ``image`` mapped by ``to_slide`` (source px -> level-0 px) as a ``shape`` (h, w) pyramidal OME-TIFF.

    Every tile of every level (/1, /4, /16) is computed on its own from the source by cubic-spline
    interpolation (coefficients computed once), so memory stays at a few tiles; outside the
    source the slide is white. ``noise``: standard deviation of the Gaussian noise added (grey levels).
    """
    import tifffile
    from PIL import Image
    from scipy.ndimage import map_coordinates, spline_filter

    src = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32)
    sh, sw = src.shape[:2]
    coeffs = [spline_filter(src[..., c], order=3, mode="nearest") for c in range(3)]
    inv = np.linalg.inv(to_slide)
    rng = np.random.default_rng(seed)

    def tiles(down: int, h: int, w: int) -> Iterator[np.ndarray]:
        q = np.arange(TILE, dtype=np.float64)
        for y0 in range(0, h, TILE):
            for x0 in range(0, w, TILE):
                yy, xx = np.meshgrid((y0 + q + 0.5) * down - 0.5, (x0 + q + 0.5) * down - 0.5, indexing="ij")
                sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
                sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
                outside = (sx < -0.5) | (sx > sw - 0.5) | (sy < -0.5) | (sy > sh - 0.5)
                coords = [sy.astype(np.float32), sx.astype(np.float32)]
                tile = np.stack([map_coordinates(c, coords, order=3, mode="nearest", prefilter=False)
                                 for c in coeffs], axis=-1)  # fmt: skip
                tile += rng.normal(0.0, noise, tile.shape).astype(np.float32)
                tile[outside] = 255.0
                yield np.clip(tile, 0, 255).astype(np.uint8)

    opts: dict[str, Any] = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg",
                            "compressionargs": {"level": 90}}  # fmt: skip
    h, w = shape
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(tiles(1, h, w), shape=(h, w, 3), dtype=np.uint8, subifds=len(LEVELS) - 1,
                 metadata={"axes": "YXS", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM}, **opts)  # fmt: skip
        for down in LEVELS[1:]:
            lh, lw = -(-h // down), -(-w // down)
            tw.write(tiles(down, lh, lw), shape=(lh, lw, 3), dtype=np.uint8, subfiletype=1, metadata=None, **opts)


@dataclass
class GeneratedPair:
    """One generated pair: its id, the known extra transform of the moving slide and the file names."""

    pair_id: str
    fixed: str
    moving: str
    fixed_landmarks: str
    moving_landmarks: str
    degrees: float
    shift: tuple[float, float]


def generate(work: Path, size: int, pairs: int, *, noise: float = 4.0, seed: int = 0) -> tuple[Path, list[GeneratedPair]]:
    """Write the slides, landmark CSVs and ``manifest.csv`` of ``pairs`` pairs in ``work``; return the manifest."""
    from PIL import Image

    if pairs < 1:
        raise SystemExit(f"--pairs must be at least 1, got {pairs}")
    if size < 4 * TILE // 2:
        raise SystemExit(f"--size must be at least {4 * TILE // 2} px, got {size}")
    work.mkdir(parents=True, exist_ok=True)
    with Image.open(_image_path(FIXED_STAIN)) as im:
        fw, fh = im.size
    factor = size / max(fw, fh)  # one factor for all stains: their 5 % images share a resolution
    scale = scale_matrix(factor)

    def shape_of(stain: str) -> tuple[int, int]:
        with Image.open(_image_path(stain)) as im:
            w, h = im.size
        return round(h * factor), round(w * factor)

    fixed_shape = shape_of(FIXED_STAIN)
    fixed = work / f"{FIXED_STAIN}.ome.tif"
    make_slide(fixed, _image_path(FIXED_STAIN), fixed_shape, scale, noise=noise, seed=seed)
    write_landmarks(work / f"{FIXED_STAIN}.csv", apply_matrix(scale, read_landmarks(_landmark_path(FIXED_STAIN))))
    made: list[GeneratedPair] = []
    rng = np.random.default_rng(seed)
    for k in range(pairs):
        stain = MOVING_STAINS[k % len(MOVING_STAINS)]
        name = stain.split("-")[0] + (f"-{k // len(MOVING_STAINS)}" if k >= len(MOVING_STAINS) else "")
        h, w = shape_of(stain)
        degrees = float(rng.choice([-1, 1]) * rng.uniform(1.5, 3.0))
        shift = (float(rng.uniform(-0.012, 0.012) * w), float(rng.uniform(-0.012, 0.012) * h))
        extra = rigid_matrix(degrees, shift, ((w - 1) / 2, (h - 1) / 2))
        to_slide = extra @ scale
        make_slide(work / f"{name}.ome.tif", _image_path(stain), (h, w), to_slide, noise=noise, seed=seed + k + 1)
        write_landmarks(work / f"{name}.csv", apply_matrix(to_slide, read_landmarks(_landmark_path(stain))))
        made.append(GeneratedPair(f"{name}-to-{FIXED_STAIN}", fixed.name, f"{name}.ome.tif",
                                  f"{FIXED_STAIN}.csv", f"{name}.csv", degrees, shift))  # fmt: skip
    manifest = work / "manifest.csv"
    with manifest.open("w", newline="") as fh_out:
        out = csv.writer(fh_out)
        out.writerow(["pair_id", "fixed", "moving", "fixed_landmarks", "moving_landmarks"])
        for p in made:
            out.writerow([p.pair_id, p.fixed, p.moving, p.fixed_landmarks, p.moving_landmarks])
    return manifest, made


@dataclass
class TreeSampler:
    """Peak RSS of a process tree, sampled every ``every`` seconds in a thread.

    ``tree``: the peak of the sum over the tree; ``procs``: each process's peak, keyed by pid,
    with its command line; ``samples``: how many samples were taken.
    """

    pid: int
    every: float = 0.2
    tree: int = 0
    samples: int = 0
    procs: dict[int, tuple[str, int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for proc in members:
            try:
                rss = proc.memory_info().rss
                cmd = self.procs[proc.pid][0] if proc.pid in self.procs else " ".join(proc.cmdline())
            except psutil.Error:
                continue
            total += rss
            self.procs[proc.pid] = (cmd, max(rss, self.procs.get(proc.pid, ("", 0))[1]))
        self.tree = max(self.tree, total)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def workers(self) -> list[int]:
        """Peak RSS of each Dask worker process (spawned by multiprocessing), largest first."""
        return sorted((rss for cmd, rss in self.procs.values() if is_worker(cmd)), reverse=True)

    def driver(self) -> int:
        """Peak RSS of the root process (the CLI: driver, scheduler and nannies)."""
        return self.procs.get(self.pid, ("", 0))[1]


def is_worker(cmdline: str) -> bool:
    """Whether a command line is a Dask worker process of a LocalCluster (multiprocessing spawn, not its tracker).

    >>> is_worker("python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=9)")
    True
    >>> is_worker("python -c from multiprocessing.resource_tracker import main;main(4)")
    False
    """
    return WORKER_MARK in cmdline and "resource_tracker" not in cmdline


def cli_command() -> list[str]:
    """The ``drmime-batch`` console script beside this Python, else ``python -m drmime_batch``."""
    script = Path(sys.executable).parent / "drmime-batch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "drmime_batch"]


def timed(cmd: list[str], *, every: float, cwd: Path) -> tuple[float, TreeSampler, str]:
    """Run ``cmd`` in ``cwd`` with its process tree sampled; (seconds, sampler, stdout). Exits on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeSampler(proc.pid, every=every)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    sampler.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {proc.returncode}:\n{err[-4000:]}")
    return seconds, sampler, out


def _gb(n: int) -> float:
    return round(n / 1e9, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=18_000, help="longer side of the slides in pixels (default 18000)")
    parser.add_argument("--pairs", type=int, default=2, help="pairs in the batch (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers of 'run' (default 2)")
    parser.add_argument("--every", type=float, default=0.2, help="RSS sampling period in seconds (default 0.2)")
    parser.add_argument("--noise", type=float, default=4.0, help="noise added to the slides (grey levels, default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated slides and the output store")
    parser.add_argument("--generate-only", action="store_true", help="only write the slides and the manifest")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write every figure as JSON to OUT")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="registration setting passed on to submit's --option (repeatable; default: none, "
                             "the package's defaults)")
    args = parser.parse_args(argv)

    if args.tmp is not None:
        args.tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="drmime-batch-slides-", dir=args.tmp))
    try:
        machine = machine_summary()
        print(f"machine: {machine}", flush=True)
        t0 = time.perf_counter()
        manifest, pairs = generate(work / "slides", args.size, args.pairs, noise=args.noise, seed=args.seed)
        made = time.perf_counter() - t0
        from drmime_batch.io import open_image

        shapes = {p.moving: open_image(manifest.parent / p.moving).levels[0].shape for p in pairs}
        fixed_shape = open_image(manifest.parent / pairs[0].fixed).levels[0].shape
        mb = sum(f.stat().st_size for f in manifest.parent.glob("*.ome.tif")) / 1e6
        print(f"slides: fixed {fixed_shape[1]} x {fixed_shape[0]}, {len(pairs)} moving "
              f"({', '.join(f'{s[1]} x {s[0]}' for s in shapes.values())}), {mb:.0f} MB of JPEG-tiled OME-TIFF, "
              f"made in {made:.0f} s", flush=True)  # fmt: skip
        if args.generate_only:
            print(f"manifest: {manifest}")
            return 0

        cli = cli_command()
        queue, store = work / "queue.sqlite", work / "out.zarr"
        load_before = os.getloadavg()
        submit_cmd = [*cli, "submit", str(manifest), "--queue", str(queue), "--out", str(store), "--quiet",
                      *(arg for kv in args.option for arg in ("--option", kv))]
        run_cmd = [*cli, "run", "--queue", str(queue), "--workers", str(args.workers), "--quiet"]
        t_submit, s_submit, _ = timed(submit_cmd, every=args.every, cwd=work)
        print(f"submit: {t_submit:.1f} s", flush=True)
        t_run, s_run, _ = timed(run_cmd, every=args.every, cwd=work)
        load_after = os.getloadavg()
        print(f"run: {t_run:.1f} s", flush=True)
        evaluation = work / "evaluate.json"
        subprocess.run([*cli, "evaluate", "--queue", str(queue), "--json", str(evaluation)],
                       check=True, capture_output=True, cwd=work)  # fmt: skip
        records = {r["pair_id"]: r for r in json.loads(evaluation.read_text())["pairs"]}

        workers = s_run.workers()
        seconds = t_submit + t_run
        per_pair = []
        for p in pairs:
            r = records.get(p.pair_id, {})
            per_pair.append({
                "pair_id": p.pair_id, "state": r.get("state"), "seconds": r.get("seconds"),
                "extra_rotation_deg": round(p.degrees, 3), "extra_shift_px": [round(v, 1) for v in p.shift],
                "identity_rtre_median": r.get("identity_rtre_median"), "rtre_median": r.get("rtre_median"),
                "floor_rtre_median": r.get("floor_rtre_median"), "tre_median_px": r.get("tre_median_px"),
            })  # fmt: skip
        done = sum(1 for p in per_pair if p["state"] == "done")
        record: dict[str, Any] = {
            "machine": machine, "size": args.size, "pairs": len(pairs), "done": done, "workers": args.workers,
            "options": list(args.option),
            "fixed_shape": list(fixed_shape), "moving_shapes": [list(s) for s in shapes.values()],
            "slides_mb": round(mb), "generate_s": round(made, 1),
            "submit_s": round(t_submit, 2), "run_s": round(t_run, 2), "seconds": round(seconds, 2),
            "pairs_per_hour": round(done / seconds * 3600, 1),
            "worker_peak_rss_gb": [_gb(w) for w in workers], "driver_peak_rss_gb": _gb(s_run.driver()),
            "tree_peak_rss_gb": _gb(s_run.tree), "submit_tree_peak_rss_gb": _gb(s_submit.tree),
            "processes": sorted(([_role(pid, cmd, s_run.pid), _gb(rss)] for pid, (cmd, rss) in s_run.procs.items()),
                                key=lambda r: -r[1]),
            "rss_samples": s_run.samples, "every_s": args.every,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after],
            "per_pair": per_pair, "targets": {"worker_peak_rss_gb": "< 2"},
            "command": " ".join(["python", "benchmarks/batch_slides.py", *(argv if argv is not None else sys.argv[1:])]),
        }  # fmt: skip
        print()
        print(f"{'pair':<16} {'state':<7} {'seconds':>8} {'rTRE before':>12} {'rTRE after':>11} {'floor':>8}")
        for p in per_pair:
            cells = [_fmt(p["seconds"], ".1f"), _fmt(p["identity_rtre_median"], ".4f"), _fmt(p["rtre_median"], ".4f"),
                     _fmt(p["floor_rtre_median"], ".4f")]  # fmt: skip
            print(f"{p['pair_id']:<16} {p['state'] or '-':<7} {cells[0]:>8} {cells[1]:>12} {cells[2]:>11} {cells[3]:>8}")
        print()
        peak = max(workers) if workers else 0
        print(f"batch: {done}/{len(pairs)} pairs in {seconds:.1f} s (submit {t_submit:.1f} s + run {t_run:.1f} s) "
              f"= {record['pairs_per_hour']:.1f} pairs/hour with {args.workers} workers")  # fmt: skip
        print(f"peak RSS per worker: {', '.join(f'{w / 1e9:.2f}' for w in workers) or '-'} GB "
              f"(target < 2 GB: {'met' if 0 < peak < 2e9 else 'NOT met'}); driver {s_run.driver() / 1e9:.2f} GB; "
              f"whole tree {s_run.tree / 1e9:.2f} GB (sum of RSS, {s_run.samples} samples)")  # fmt: skip
        print(f"load average (1, 5, 15 min): before {', '.join(f'{v:.2f}' for v in load_before)}; "
              f"after {', '.join(f'{v:.2f}' for v in load_after)}")  # fmt: skip
        print(json.dumps(record))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=2) + "\n")
    finally:
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _role(pid: int, cmdline: str, root: int) -> str:
    """``driver``, ``worker`` or ``other`` (the resource tracker, ...): no paths in the figures."""
    return "driver" if pid == root else ("worker" if is_worker(cmdline) else "other")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    raise SystemExit(main())
