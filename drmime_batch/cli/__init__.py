"""The ``drmime-batch`` command.

Each ``_cmd_*.py`` module in this package contributes its sub-commands through a function
``add_commands(subparsers)``; every sub-parser sets ``func`` (taking the parsed namespace and
returning an exit status). Commands hold no logic of their own: they parse, call the library and
render with rich.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import traceback
from typing import Sequence

from drmime_batch.errors import DrmimeError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command found in this package."""
    from drmime_batch import __version__

    parser = argparse.ArgumentParser(
        prog="drmime-batch",
        description="Batch registration of whole-slide histology images with DRMIME on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"drmime-batch {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output, and the traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_cmd_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            module.add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DrmimeError as exc:
        # a problem of the input or the environment: one line (the traceback with -v)
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        print(f"drmime-batch {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"drmime-batch {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - anything else is a bug: its traceback, always
        traceback.print_exc(file=sys.stderr)
        print(f"drmime-batch {args.command}: internal error (a bug, please report it with the traceback "
              f"above): {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 70  # EX_SOFTWARE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
