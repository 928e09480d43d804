"""``drmime-batch register``: one pair of image files, here and now, without a queue or a cluster.

It opens both files lazily (:func:`drmime_batch.io.open_image`), reads for each the pyramid level
whose longer side is at most ``--max-size`` (the file's own level of a whole-slide pyramid, or one
built by halving), registers them with :func:`drmime_batch.register`, and expresses the matrix at
the full resolution of each file, exactly as a batch worker does. It prints the 3x3 matrix, the
final similarity and the time taken; ``--out`` also writes the result record as JSON (written to
a temporary file, then renamed).

``--fixed-mask`` / ``--moving-mask`` give tissue masks (image files, non-zero = tissue, at the
image's resolution or a lower one of the same aspect ratio), each read at its pyramid level
closest to, and not smaller than, the image level registered, as a batch worker does.

A missing, unreadable or constant image (or mask, or a mask of another aspect ratio or covering
nothing) ends the command with one line
``drmime-batch register: error: <file>: <cause>`` on stderr and exit status 1, like the batch
commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from drmime_batch.cli._options import add_registration_arguments, registration_options
from drmime_batch.errors import CorruptImageError, DrmimeError, ImageNotFoundError, InputImageError

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


def _on_file(path: str, role: str, fn: Callable[[], Any], kind: str = "image") -> Any:
    """Run ``fn``; re-raise a file problem as one line ``<path>: <cause>`` of the same error type.

    ``role`` and ``kind`` name the file in the message (``fixed image``, ``moving mask``).
    """
    try:
        return fn()
    except ImageNotFoundError:
        raise ImageNotFoundError(f"{path}: no such file or directory ({role} {kind})") from None
    except DrmimeError as exc:
        cause = " ".join(str(exc).split())
        name = Path(path).name
        if cause.startswith(f"{name}: "):
            cause = cause[len(name) + 2:]
        raise type(exc)(f"{path}: {cause}") from None
    except Exception as exc:  # noqa: BLE001 - a reader (or a storage client) failing in its own way
        text = " ".join(str(exc).split())
        raise CorruptImageError(f"{path}: cannot read the {role} {kind}: {type(exc).__name__}: {text}") from None


def _check_device(device: str) -> None:
    from drmime_batch.core import resolve_device

    try:
        resolve_device(device)
    except (ValueError, RuntimeError) as exc:
        raise _CommandError(str(exc)) from None


def _shape_text(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _cmd_register(args: argparse.Namespace) -> int:
    from rich.table import Table

    from drmime_batch import register
    from drmime_batch.cli._console import make_console
    from drmime_batch.core import RegistrationConfig, matrix_from_crop, matrix_from_level
    from drmime_batch.io import open_image, read_mask, read_tissue

    t0 = time.perf_counter()
    options = registration_options(args)
    config = RegistrationConfig.from_dict(options)  # checked already: the defaults filled in
    _check_device(config.device)
    max_size = config.max_size
    console = make_console()

    images = {}
    for role, path in (("fixed", args.fixed), ("moving", args.moving)):
        img = _on_file(path, role, lambda p=path: open_image(p))
        level = _on_file(path, role, lambda i=img: i.level_for(max_size=max_size))
        pixels = _on_file(path, role, lambda i=img, lv=level: i.read_level(lv))
        images[role] = (img, level, pixels)
    mask_files = {"fixed": args.fixed_mask, "moving": args.moving_mask}
    masks = {
        f"{role}_mask": _on_file(path, role, lambda p=path, a=images[role][2]: read_mask(p, np.shape(a)), "mask")
        for role, path in mask_files.items()
        if path
    }
    # small tissue on a large slide: its box from a finer level (as a batch worker does)
    offsets, crops = {"fixed": (0, 0), "moving": (0, 0)}, {"fixed": None, "moving": None}
    for role in ("fixed", "moving"):
        if config.mask != "none" and not mask_files[role]:
            img, level, pixels = images[role]
            pixels, level, offsets[role], crops[role] = _on_file(
                getattr(args, role), role, lambda i=img, lv=level, px=pixels: read_tissue(i, lv, px, max_size)
            )
            images[role] = (img, level, pixels)
    (f_img, f_level, fixed), (m_img, m_level, moving) = images["fixed"], images["moving"]

    def progress(iteration: int, value: float) -> None:
        if status is not None:
            status.update(f"registering: iteration {iteration}, similarity {value:.4f}")

    status = console.status("registering ...") if console.is_terminal else None
    try:
        if status is not None:
            status.start()
        try:
            result = register(fixed, moving, callback=progress, **masks, **options)
        except InputImageError as exc:  # names "fixed" or "moving" (image or mask): point at the file instead
            text = " ".join(str(exc).split())
            role = "moving" if text.startswith("moving") else "fixed"
            path = mask_files[role] if text.startswith(f"{role} mask") and mask_files[role] else getattr(args, role)
            raise InputImageError(f"{path}: {text}") from None
    finally:
        if status is not None:
            status.stop()

    f_ds, m_ds = f_img.downsamples[f_level], m_img.downsamples[m_level]
    level_matrix = matrix_from_crop(result.matrix, fixed_offset=offsets["fixed"], moving_offset=offsets["moving"])
    matrix = matrix_from_level(level_matrix, fixed_downsample=f_ds, moving_downsample=m_ds)
    if not np.all(np.isfinite(matrix)):
        raise _CommandError(f"registering {args.moving} onto {args.fixed}: non-finite matrix")
    full = dataclasses.replace(
        result, matrix=matrix, fixed_shape=tuple(f_img.shape), moving_shape=tuple(m_img.shape)
    )
    seconds = time.perf_counter() - t0
    record = full.to_dict() | {
        "fixed": str(args.fixed),
        "moving": str(args.moving),
        "fixed_level": int(f_level),
        "moving_level": int(m_level),
        "fixed_downsample": [float(v) for v in f_ds],
        "moving_downsample": [float(v) for v in m_ds],
        "fixed_crop": crops["fixed"],
        "moving_crop": crops["moving"],
        "fixed_mask": None if args.fixed_mask is None else str(args.fixed_mask),
        "moving_mask": None if args.moving_mask is None else str(args.moving_mask),
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
    console.print(
        f"registered fixed level {f_level} ({_shape_text(fixed.shape)} of {_shape_text(f_img.shape)}) with "
        f"moving level {m_level} ({_shape_text(moving.shape)} of {_shape_text(m_img.shape)})"
        + (f"; record written to {args.out}" if args.out is not None else ""),
        markup=False, highlight=False,
    )
    for role, path in mask_files.items():
        rec = dict(full.masks.get(role, {})) if path else {}
        if rec.get("source") == "user":
            console.print(f"{role} mask {path}: {100 * float(rec.get('fraction', 0.0)):.1f} % tissue",
                          markup=False, highlight=False)
    return 0
