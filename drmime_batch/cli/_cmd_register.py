"""``drmime-batch register``: one pair of image files, here and now, without a queue or a cluster.

It calls :func:`drmime_batch.register_files`, the function a batch worker calls: both files are
opened lazily, each is registered at the pyramid level whose longer side is at most
``--max-size`` (the file's own level of a whole-slide pyramid, or one built by halving), and the
matrix is expressed at the full resolution of each file. It prints the 3x3 matrix, the
final similarity and the time taken; ``--out`` also writes the result record as JSON (written to
a temporary file, then renamed).

``--fixed-mask`` / ``--moving-mask`` give tissue masks (image files, non-zero = tissue, at the
image's resolution or a lower one of the same aspect ratio), each read at its pyramid level
closest to, and not smaller than, the image level registered, as a batch worker does.

A missing, unreadable or constant image (or mask, or a mask of another aspect ratio or covering
nothing) ends the command with one line
``drmime-batch register: error: <role> image|mask <file>: <cause>`` on stderr and exit status 1,
like the batch commands (``-v`` adds the traceback).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from drmime_batch.cli._options import add_registration_arguments, registration_options
from drmime_batch.errors import DrmimeError

__all__ = ["add_commands", "format_matrix", "write_record"]


class _CommandError(DrmimeError):
    """A problem of this invocation (e.g. ``--device cuda`` without CUDA); printed on one line."""


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``register``."""
    p = subparsers.add_parser(
        "register",
        help="register one pair of image files now and print the matrix",
        description=(
            "Register MOVING onto FIXED (TIFF/OME-TIFF/SVS/NDPI, OME-Zarr/zarr, PNG, JPEG) and print "
            "the 3x3 fixed -> moving matrix in full-resolution pixels (x = column, y = row, origin at "
            "the centre of the top-left pixel; registered(p) = moving(M p)). Whole-slide pyramids are "
            "registered on the level whose longer side is at most --max-size."
        ),
    )
    p.add_argument("fixed", metavar="FIXED", help="the fixed (reference) image")
    p.add_argument("moving", metavar="MOVING", help="the moving image, mapped onto FIXED")
    p.add_argument("--out", metavar="FILE", help="write the result record (JSON) to FILE (a path or an s3://... URL)")
    p.add_argument("--fixed-mask", metavar="FILE",
                   help="tissue mask of FIXED (an image, non-zero = tissue; its size or a lower resolution "
                        "of the same aspect ratio); default: the --option mask=auto|none rule")
    p.add_argument("--moving-mask", metavar="FILE", help="tissue mask of MOVING (as --fixed-mask)")
    reg = p.add_argument_group("registration options")
    add_registration_arguments(reg, device_help="device: auto (CUDA when available, default), cpu, cuda")
    p.set_defaults(func=_cmd_register)


def format_matrix(matrix: np.ndarray) -> list[list[str]]:
    """The cells of a 3x3 matrix as aligned text (what the table shows).

    Examples
    --------
    >>> format_matrix(np.array([[1.0, 0.0, 3.25], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]]))[0]
    ['1.000000', '0.000000', '3.250000']
    """
    return [[f"{float(v):.6f}" if abs(float(v)) < 1e6 else f"{float(v):.6g}" for v in row] for row in matrix]


def write_record(path: str | Path, record: dict[str, Any]) -> str | Path:
    """Write ``record`` as JSON to ``path`` atomically: a temporary sibling file, then a rename.

    A reader never sees a half-written file; an interrupted write leaves ``path`` as it was. An
    object-store URL (``s3://...``) is written in one PUT, which is all or nothing as well.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = write_record(Path(d) / "r.json", {"matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    ...     json.loads(out.read_text())["matrix"][2], sorted(p.name for p in Path(d).iterdir())
    ([0, 0, 1], ['r.json'])
    """
    from drmime_batch.io._atomic import replace_path, staging
    from drmime_batch.io._fs import is_url, location, write_bytes

    target = location(path) if isinstance(path, str) else Path(path)
    data = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    if is_url(target):
        write_bytes(target, data)
        return target
    with staging(target) as tmp:
        Path(tmp).write_bytes(data)
        replace_path(tmp, target)
    return target


def _check_device(device: str) -> None:
    from drmime_batch.core import resolve_device

    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise _CommandError(str(exc)) from None


def _cmd_register(args: argparse.Namespace) -> int:
    from rich.table import Table

    from drmime_batch._files import register_files
    from drmime_batch.cli._console import make_console
    from drmime_batch.core import RegistrationConfig

    t0 = time.perf_counter()
    options = registration_options(args)
    config = RegistrationConfig.from_dict(options)  # checked already: the defaults filled in
    _check_device(config.device)
    console = make_console()

    def progress(iteration: int, value: float) -> None:
        if status is not None:
            status.update(f"registering: iteration {iteration}, similarity {value:.4f}")

    status = console.status("registering ...") if console.is_terminal else None
    try:
        if status is not None:
            status.start()
        reg = register_files(args.fixed, args.moving, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
                             callback=progress, **options)
    finally:
        if status is not None:
            status.stop()

    full, matrix = reg.result, reg.matrix
    seconds = time.perf_counter() - t0
    record = full.to_dict() | {
        "fixed": str(args.fixed),
        "moving": str(args.moving),
        "fixed_level": reg.fixed.level,
        "moving_level": reg.moving.level,
        "fixed_downsample": list(reg.fixed.downsample),
        "moving_downsample": list(reg.moving.downsample),
        "fixed_crop": None if reg.fixed.crop is None else list(reg.fixed.crop),
        "moving_crop": None if reg.moving.crop is None else list(reg.moving.crop),
        "fixed_mask": None if args.fixed_mask is None else str(args.fixed_mask),
        "moving_mask": None if args.moving_mask is None else str(args.moving_mask),
        "fixed_pixel_size": None if reg.fixed.pixel_size is None else list(reg.fixed.pixel_size),
        "moving_pixel_size": None if reg.moving.pixel_size is None else list(reg.moving.pixel_size),
        "seconds": seconds,
    }
    if args.out is not None:
        write_record(args.out, record)

    console.print(f"{args.moving} onto {args.fixed}: fixed -> moving matrix in full-resolution pixels",
                  markup=False, highlight=False)
    table = Table(show_header=False)
    for _ in range(3):
        table.add_column(justify="right")
    for row in format_matrix(matrix):
        table.add_row(*row)
    console.print(table)
    label = "final MI" if full.metric in ("mine", "mi") else f"final similarity ({full.metric})"
    unit = " nats" if full.metric in ("mine", "mi") else ""
    console.print(
        f"{label} {full.final_mi:.4f}{unit}, {full.transform}, {full.iterations} iterations on {full.device}, "
        f"{seconds:.1f} s (registration {full.timings.get('total_s', float('nan')):.1f} s)",
        markup=False, highlight=False,
    )
    levels = {}
    for role, side in (("fixed", reg.fixed), ("moving", reg.moving)):
        h, w = side.shape[:2]
        if side.crop is not None:
            y0, y1, x0, x1 = side.crop
            size = f"{x1 - x0}x{y1 - y0} crop"
        else:
            size = f"{round(w / side.downsample[0])}x{round(h / side.downsample[1])}"
        levels[role] = f"{role} level {side.level} ({size} of {w}x{h})"
    console.print(
        f"registered {levels['fixed']} with {levels['moving']}"
        + (f"; record written to {args.out}" if args.out is not None else ""),
        markup=False, highlight=False,
    )
    for role, path in (("fixed", args.fixed_mask), ("moving", args.moving_mask)):
        rec = dict(full.masks.get(role, {})) if path else {}
        if rec.get("source") == "user":
            console.print(f"{role} mask {path}: {100 * float(rec.get('fraction', 0.0)):.1f} % tissue",
                          markup=False, highlight=False)
    return 0
