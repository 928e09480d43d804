"""Warp-and-write a generated slide: peak memory and throughput against a plain dask zarr copy.

Generates an N x N x 3 uint8 slide (zarr v3, 2048-pixel zstd shards), then runs, each in its own
child process so that peak RSS is that phase's alone:

- ``copy``: ``da.from_zarr`` -> ``da.store`` into an identically configured array (the peer);
- ``warp``: :func:`drmime_batch.io.warp` (a small rotation) written as the OME-Zarr base level;
- ``registered``: :func:`drmime_batch.io.write_registered` (warp + base + pyramid, atomic).

Targets (issue 4): peak memory < 2 GB and warp throughput >= 50 % of the copy's.

    python benchmarks/warp.py --size 8000 --tmp /some/scratch      # quick
    python benchmarks/warp.py                                       # 40 000 x 40 000 x 3 (4.8 GB)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARD, CHUNK = 2048, 512



def _texture(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    base = 150 + 50 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + 30 * np.sin((xx + yy) / 211.0)
    rng = np.random.default_rng(y0 * 7919 + x0)
    noise = rng.integers(0, 12, base.shape, dtype=np.uint8)
    out = np.empty(block.shape, np.uint8)
    for c in range(3):
        out[..., c] = np.clip(base - 25 * c, 0, 255).astype(np.uint8) + noise
    return out


def _create(path: Path, shape: tuple[int, ...]) -> object:
    import zarr
    from zarr.codecs import ZstdCodec

    return zarr.create_array(
        store=str(path), shape=shape, dtype="uint8", chunks=(CHUNK, CHUNK, 3), shards=(SHARD, SHARD, 3),
        compressors=ZstdCodec(level=3), fill_value=0, zarr_format=3, overwrite=True,
    )  # fmt: skip


def generate(path: Path, size: int) -> None:
    import dask.array as da

    template = da.empty((size, size, 3), dtype=np.uint8, chunks=(SHARD, SHARD, 3))
    da.store(template.map_blocks(_texture, dtype=np.uint8), _create(path, (size, size, 3)), lock=False)


def _matrix(size: int) -> np.ndarray:
    theta, c = 0.02, (size - 1) / 2
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    to_c = np.array([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]])
    return np.linalg.inv(to_c) @ rot @ to_c @ np.array([[1, 0, 13.4], [0, 1, -7.7], [0, 0, 1.0]])


def phase(name: str, src: Path, dst: Path) -> None:
    """Run one phase in this (child) process."""
    import dask.array as da

    from drmime_batch.io import open_image, warp, write_registered, write_transform
    from drmime_batch.io._omezarr import write_ome_zarr

    size = int(open_image(src).shape[0])
    if name == "copy":
        arr = da.from_zarr(str(src), chunks=(SHARD, SHARD, 3))  # one task per shard, as the warp
        da.store(arr, _create(dst, arr.shape), lock=False)
    elif name == "warp":
        img = open_image(src)
        write_ome_zarr(dst, warp(img, _matrix(size), like=img, chunks=SHARD), name="w", min_side=10**9)
    elif name == "registered":
        img = open_image(src)
        write_transform(dst, "pair", _matrix(size), attrs={"transform": "affine"})
        write_registered(dst, "pair", warp(img, _matrix(size), like=img, chunks=SHARD), pixel_size=(0.5, 0.5))
    else:
        raise SystemExit(f"unknown phase {name!r}")


def run_child(name: str, src: Path, dst: Path) -> tuple[float, float]:
    """(seconds, peak RSS in GB) of one phase run in a child process."""
    shutil.rmtree(dst, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--phase", name, "--src", str(src), "--dst", str(dst)])
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"phase {name} failed with status {status}")
    return elapsed, usage.ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40_000, help="slide side in pixels (default 40000)")
    parser.add_argument("--tmp", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dst", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        phase(args.phase, args.src, args.dst)
        return 0

    work = Path(tempfile.mkdtemp(prefix="drmime-warp-bench-", dir=args.tmp))
    try:
        n = args.size
        gb = n * n * 3 / 1e9
        from drmime_batch.evaluation import machine_summary

        print(f"machine: {machine_summary()}")
        print(f"slide: {n} x {n} x 3 uint8 = {gb:.2f} GB, zarr v3 shards {SHARD}, chunks {CHUNK}, zstd-3")
        t0 = time.perf_counter()
        generate(work / "src.zarr", n)
        print(f"generated in {time.perf_counter() - t0:.1f} s")
        results = {}
        for name in ("copy", "warp", "registered"):
            dst = work / f"{name}.zarr"
            sec, peak = run_child(name, work / "src.zarr", dst)
            results[name] = {"seconds": round(sec, 2), "peak_rss_gb": round(peak, 3), "mb_per_s": round(gb * 1e3 / sec, 1)}
            print(f"{name:>10}: {sec:8.1f} s  {gb * 1e3 / sec:8.1f} MB/s  peak RSS {peak:.2f} GB")
            shutil.rmtree(dst, ignore_errors=True)
        ratio = results["copy"]["seconds"] / results["warp"]["seconds"]
        print(f"warp throughput / copy throughput = {ratio:.2f}  (target >= 0.50)")
        peak = max(r["peak_rss_gb"] for r in results.values())
        print(f"peak RSS of any phase = {peak:.2f} GB  (target < 2 GB)")
        print(json.dumps({"size": n, **results, "ratio_warp_vs_copy": round(ratio, 3)}))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
