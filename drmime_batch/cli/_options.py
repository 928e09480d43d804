"""Registration options on the command line, shared by ``submit`` and ``register``.

Both commands offer the same flags (the common :class:`~drmime_batch.core.RegistrationConfig`
fields, ``--device`` and ``--option KEY=VALUE`` for any other field) and check them the same way,
before any work starts.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from drmime_batch.errors import ManifestError

__all__ = ["REG_OPTIONS", "add_registration_arguments", "registration_options"]

#: flag, dest, type, help
REG_OPTIONS = (
    ("--transform", "transform", str, "transform family: translation, rigid, similarity, affine (default), homography"),
    ("--metric", "metric", str, "similarity: mine (DRMIME, default), mse, ncc, mi"),
    ("--max-iterations", "max_iterations", int, "iteration cap of the optimiser"),
    ("--max-size", "max_size", int, "longest side (px) of the pyramid level registered (default 1024)"),
    ("--levels", "levels", int, "pyramid levels optimised jointly"),
    ("--points", "points", int, "points sampled per level and iteration"),
    ("--seed", "seed", int, "random seed"),
    ("--init", "init", str, "initialisation: search (default), moments, none"),
)


def add_registration_arguments(group: argparse._ActionsContainer, *, device_help: str = "device (default auto)") -> None:
    """Add the registration flags, ``--device`` and ``--option`` to a parser or argument group.

    Every flag defaults to ``None`` (meaning: the configuration's default).

    Examples
    --------
    >>> p = argparse.ArgumentParser()
    >>> add_registration_arguments(p)
    >>> registration_options(p.parse_args(["--transform", "rigid", "--option", "lr_fine=0.001"]))
    {'transform': 'rigid', 'lr_fine': 0.001}
    >>> registration_options(p.parse_args(["--no-consensus"]))
    {'consensus': False}
    """
    for flag, dest, typ, text in REG_OPTIONS:
        group.add_argument(flag, dest=dest, type=typ, help=text)
    group.add_argument("--deformable", dest="deformable", action="store_true", default=None,
                       help="after the linear stage, a dense deformation trained by the same MINE objective "
                            "(kept only when it raises the similarity and does not fold)")
    group.add_argument("--no-consensus", dest="consensus", action="store_false", default=None,
                       help="keep the linear stage's optimum as it is (default: replace it by the transform "
                            "that best follows a short coarse deformation over the tissue)")
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), help=device_help)
    group.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other RegistrationConfig field")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def registration_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options given on the command line, checked against ``RegistrationConfig`` now.

    Raises
    ------
    ManifestError
        ``--option`` not of the form ``KEY=VALUE``, an unknown field or an invalid value; the
        message names it.
    """
    options: dict[str, Any] = {}
    for _flag, dest, _type, _help in REG_OPTIONS:
        value = getattr(args, dest, None)
        if value is not None:
            options[dest] = value
    if getattr(args, "device", None) is not None:
        options["device"] = args.device
    if getattr(args, "deformable", None):
        options["deformable"] = True
    if getattr(args, "consensus", None) is False:
        options["consensus"] = False
    for item in getattr(args, "option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ManifestError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip().replace("-", "_")] = _parse_value(value)
    from drmime_batch.config import RegistrationConfig

    try:
        RegistrationConfig.from_dict(options)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"invalid registration option: {exc}") from None
    return options
