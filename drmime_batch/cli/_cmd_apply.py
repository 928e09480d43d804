"""``drmime-batch apply points|geojson|slide``: a stored transform applied to other data.

A thin layer over :mod:`drmime_batch.transforms`: parse, open the transform, call the library,
print one line of what was written. By default data goes from the **moving** section into the
**fixed** frame (what the registered image shows); ``--inverse`` goes the other way.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["add_commands", "report_warnings"]

_DIRECTION = (
    "By default from the moving section into the fixed frame (what the registered image shows); "
    "--inverse goes from the fixed frame to the moving section."
)


def _common(p: argparse.ArgumentParser, what: str, out: str) -> None:
    p.add_argument("store", metavar="STORE", help="the batch output store (OUT.zarr)")
    p.add_argument("entry", metavar="ENTRY", help="a pair id of the store")
    p.add_argument("input", metavar=what, help=f"the {what.split('.')[0].lower()} file to map")
    p.add_argument("--out", required=True, metavar=out, help=f"where to write the result ({out})")
    p.add_argument("--inverse", action="store_true", help="map from the fixed frame to the moving section")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``apply`` and its three forms."""
    p = subparsers.add_parser(
        "apply",
        help="apply a stored transform to points, GeoJSON annotations or another slide",
        description="Apply the transform stored for one pair to points, annotations or a slide. " + _DIRECTION,
    )
    forms = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    pts = forms.add_parser(
        "points", help="an ANHIR point CSV (',X,Y'; other columns kept)",
        description="Map the X/Y columns of a CSV (ANHIR ',X,Y': X = column, Y = row, full-resolution "
                    "pixels); every other column is kept. " + _DIRECTION,
    )  # fmt: skip
    _common(pts, "IN.csv", "OUT.csv")
    pts.add_argument(
        "--units",
        choices=("px", "um"),
        default="px",
        help="coordinates in pixels (default) or micrometres (from the slides' pixel sizes)",
    )
    pts.set_defaults(func=run_points)

    geo = forms.add_parser(
        "geojson", help="a GeoJSON file (QuPath export): positions mapped, ids and properties kept",
        description="Map every position of a GeoJSON FeatureCollection or list of Features (QuPath "
                    "exports, full-resolution pixels); ids and properties are kept. " + _DIRECTION,
    )  # fmt: skip
    _common(geo, "IN.geojson", "OUT.geojson")
    geo.set_defaults(func=run_geojson)

    sld = forms.add_parser(
        "slide", help="another slide, warped at full resolution (OME-Zarr or OME-TIFF)",
        description="Warp a slide (another stain of the moving section, a mask, a label image) at full "
                    "resolution and write it as OUT.ome.zarr (OME-Zarr 0.5) or OUT.ome.tif (pyramidal "
                    "OME-TIFF), atomically. " + _DIRECTION + " The output has the fixed image's grid "
                    "(with --inverse, the moving image's).",
    )  # fmt: skip
    _common(sld, "SLIDE", "OUT.ome.zarr|OUT.ome.tif")
    sld.add_argument(
        "--order",
        choices=("linear", "nearest"),
        default="linear",
        help="interpolation: linear (default) or nearest (masks, label images: values kept)",
    )
    sld.add_argument(
        "--like",
        metavar="IMAGE",
        default=None,
        help="an image whose full-resolution size the output takes (default: the target image recorded in the store)",
    )
    sld.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 1) a SLIDE whose full-resolution size differs from the image the transform was "
             "computed on (the moving image; with --inverse the fixed one), instead of warning and warping it "
             "all the same",
    )  # fmt: skip
    sld.set_defaults(func=run_slide)


def report_warnings(command: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``, printing each drmime_batch warning as one line ``drmime-batch CMD: warning: ...``."""
    from drmime_batch.errors import DrmimeWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DrmimeWarning)
        result = fn()
    for w in caught:
        if issubclass(w.category, DrmimeWarning):
            print(f"drmime-batch {command}: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
        else:  # not ours: let Python show it as it would have
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return result


def _direction(args: argparse.Namespace) -> str:
    return "fixed frame -> moving section" if args.inverse else "moving section -> fixed frame"


def run_points(args: argparse.Namespace) -> int:
    """Run ``apply points``."""
    from drmime_batch.transforms import open_transform, transform_points_csv

    transform = open_transform(args.store, args.entry)
    counts = report_warnings("apply", lambda: transform_points_csv(
        transform, args.input, args.out, inverse=args.inverse, units=args.units))  # fmt: skip
    print(f"{counts['points']} points of {args.input} mapped ({_direction(args)}, {args.units}) to {args.out}")
    return 0


def run_geojson(args: argparse.Namespace) -> int:
    """Run ``apply geojson``."""
    from drmime_batch.transforms import open_transform, read_geojson, write_geojson
    from drmime_batch.transforms._geojson import map_geojson

    transform = open_transform(args.store, args.entry)
    doc = read_geojson(args.input)
    mapped = map_geojson(
        doc, lambda p: transform.map_points(p, inverse=args.inverse), name=f"GeoJSON file {args.input}"
    )
    write_geojson(args.out, mapped)
    n = len(doc) if isinstance(doc, list) else len(doc.get("features", [doc]))
    print(f"{n} feature{'s' if n != 1 else ''} of {args.input} mapped ({_direction(args)}) to {args.out}")
    return 0


def run_slide(args: argparse.Namespace) -> int:
    """Run ``apply slide``."""
    from drmime_batch.transforms import open_transform

    transform = open_transform(args.store, args.entry)
    written = report_warnings("apply", lambda: transform.warp_slide(
        args.input, args.out, inverse=args.inverse, order=args.order,
        like=args.like, strict=args.strict))  # fmt: skip
    print(f"{args.input} warped ({_direction(args)}, {args.order}) to {written}")
    return 0
