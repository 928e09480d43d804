"""``drmime-batch export``: a stored transform written for other tools (ITK, NGFF 0.6, plain JSON)."""

from __future__ import annotations

import argparse

__all__ = ["add_commands"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``export``."""
    p = subparsers.add_parser(
        "export",
        help="write a stored transform as an ITK transform file, NGFF 0.6 JSON or plain JSON",
        description=(
            "Write the transform stored for one pair for other tools. itk: an ITK text transform "
            "(*.tfm or *.txt) that SimpleITK.ReadTransform reads, fixed -> moving in micrometres (1 µm "
            "per pixel where the store knows no pixel size, with a warning), ready for "
            "sitk.Resample(moving, fixed, transform). ngff: NGFF 0.6 coordinate systems 'fixed' and "
            "'moving' with the forward and inverse affine. json: both matrices in pixels (and "
            "micrometres when known), the images and their pixel sizes."
        ),
    )
    p.add_argument("store", metavar="STORE", help="the batch output store (OUT.zarr)")
    p.add_argument("entry", metavar="ENTRY", help="a pair id of the store")
    p.add_argument("--format", required=True, choices=("itk", "ngff", "json"), help="what to write")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write (atomically)")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Run ``export``."""
    from drmime_batch.cli._cmd_apply import report_warnings
    from drmime_batch.transforms import export_transform, open_transform

    transform = open_transform(args.store, args.entry)
    written = report_warnings("export", lambda: export_transform(transform, args.out, args.format))
    print(f"transform of {args.entry} ({transform.kind}) written as {args.format} to {written}")
    return 0
