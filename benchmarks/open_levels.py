"""Time to open a pyramidal slide and read its registration level, for 10k and 40k slides.

Writes tiled pyramidal OME-TIFFs (levels /1, /4, /16; zlib tiles of a repeated texture, so the
40k file is quick to make) and times ``open_image`` + ``level_for(2048)`` + ``read_level``.
Target (issue 4): under 1 s regardless of level-0 size.

    python benchmarks/open_levels.py --sizes 10000 40000 --tmp /some/scratch
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 256


def make_slide(path: Path, size: int) -> None:
    import tifffile

    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 255, (TILE, TILE, 3), dtype=np.uint8) for _ in range(4)]

    def gen(h: int, w: int):  # noqa: ANN202 - a generator of tiles
        n = -(-h // TILE) * -(-w // TILE)
        for i in range(n):
            yield tiles[i % 4]

    opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "zlib", "compressionargs": {"level": 1}}
    shapes = [(size, size), (size // 4, size // 4), (size // 16, size // 16)]
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(gen(size, size), shape=(size, size, 3), dtype=np.uint8, subifds=2,
                 metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}, **opts)  # fmt: skip
        for h, w in shapes[1:]:
            tw.write(gen(h, w), shape=(h, w, 3), dtype=np.uint8, subfiletype=1, metadata=None, **opts)


def main(argv: list[str] | None = None) -> int:
    from drmime_batch.io import open_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--max-size", type=int, default=2048)
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="drmime-open-bench-", dir=args.tmp))
    try:
        warm = work / "warmup.ome.tif"
        make_slide(warm, 1024)
        t0 = time.perf_counter()
        img = open_image(warm)
        img.read_level(img.level_for(args.max_size))
        print(f"first open+read in a fresh process (imports, zarr event loop): {time.perf_counter() - t0:.2f} s, once")
        for size in args.sizes:
            path = work / f"slide{size}.ome.tif"
            t0 = time.perf_counter()
            make_slide(path, size)
            made = time.perf_counter() - t0
            t0 = time.perf_counter()
            img = open_image(path)
            t_open = time.perf_counter() - t0
            k = img.level_for(args.max_size)
            arr = img.read_level(k)
            total = time.perf_counter() - t0
            print(
                f"{size:>6} px slide ({path.stat().st_size / 1e6:.0f} MB file, made in {made:.0f} s): "
                f"open {t_open * 1e3:.0f} ms, level {k} {arr.shape} read, open+choose+read {total:.2f} s "
                f"(target < 1 s)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
