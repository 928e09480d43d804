"""A stored transform written for other tools: ITK, NGFF 0.6 coordinate transformations, plain JSON.

``itk``
    An ITK text transform file (``.tfm``/``.txt``) that ``SimpleITK.ReadTransform`` and
    ``itk.transformread`` read: an ``AffineTransform_double_2_2`` mapping a **fixed** physical
    point to the **moving** one, in micrometres (images with origin 0 and spacing = pixel size,
    the pixel centre convention ITK uses too), which is what ``sitk.Resample(moving, fixed,
    transform)`` needs. A pixel size the store does not know is taken as 1 µm per pixel, with a
    :class:`~drmime_batch.errors.DrmimeWarning` saying so.
``ngff``
    JSON with NGFF 0.6 (RFC-5) ``coordinateSystems`` (``fixed`` and ``moving``, axes ``y, x`` in
    micrometres when both pixel sizes are known, else in pixels) and one ``bijection`` from
    ``moving`` to ``fixed`` (the default direction of ``apply``) whose ``forward`` and
    ``inverse`` are ``affine`` matrices in array order (rows and columns ``y, x``).
``json``
    Plain JSON: both matrices (fixed → moving and moving → fixed) in pixels, in micrometres when
    the pixel sizes are known, the convention, the images and their pixel sizes.

Homographies have no ITK or NGFF affine form; they export as ``json`` only.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from drmime_batch.core._convention import matrix_to_physical
from drmime_batch.errors import ConfigError, DrmimeWarning

if TYPE_CHECKING:
    from drmime_batch.io._fs import Location
    from drmime_batch.transforms._stored import StoredTransform

__all__ = ["EXPORT_FORMATS", "export_document", "export_transform", "itk_text"]

EXPORT_FORMATS = ("itk", "ngff", "json")
NGFF_VERSION = "0.6"
_YX = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _matrix(transform: StoredTransform, fmt: str) -> np.ndarray:
    m = transform.matrix
    if m is None:
        raise ConfigError(
            f"the transform of {transform.entry!r} in {transform.store} is not a matrix: it has no {fmt} form"
        )
    return np.asarray(m, dtype=np.float64)


def _affine_only(transform: StoredTransform, m: np.ndarray, fmt: str) -> None:
    if not np.allclose(m[2], [0.0, 0.0, 1.0], atol=1e-12):
        raise ConfigError(
            f"the transform of {transform.entry!r} in {transform.store} is a homography, which an {fmt} "
            "affine cannot express: export it as json"
        )


def _sizes(transform: StoredTransform) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    return transform.pixel_size("fixed"), transform.pixel_size("moving")


def _plain(m: np.ndarray) -> list[list[float]]:
    return [[float(v) for v in row] for row in m]


def itk_text(transform: StoredTransform) -> str:
    """The ITK text transform file of a stored affine (fixed → moving, micrometres).

    Examples
    --------
    >>> import tempfile
    >>> from drmime_batch.io import write_transform
    >>> from drmime_batch.transforms import open_transform
    >>> out = Path(tempfile.mkdtemp()) / "out.zarr"
    >>> write_transform(out, "p1", [[1, 0, 5], [0, 1, -2], [0, 0, 1]], attrs={},
    ...                 fixed_pixel_size=(0.5, 0.5), moving_pixel_size=(0.5, 0.5))
    >>> print(itk_text(open_transform(out, "p1")))
    #Insight Transform File V1.0
    # drmime_batch p1: fixed -> moving point, micrometres (fixed 0.5x0.5 um/px, moving 0.5x0.5 um/px)
    #Transform 0
    Transform: AffineTransform_double_2_2
    Parameters: 1.0 0.0 0.0 1.0 2.5 -1.0
    FixedParameters: 0.0 0.0
    <BLANKLINE>
    """
    m = _matrix(transform, "ITK")
    _affine_only(transform, m, "ITK")
    fixed, moving = _sizes(transform)
    if fixed is None or moving is None:
        unknown = " and ".join(r for r, s in (("fixed", fixed), ("moving", moving)) if s is None)
        warnings.warn(
            f"the {unknown} pixel size of {transform.entry!r} in {transform.store} is unknown: "
            "the ITK transform assumes 1 µm per pixel there",
            DrmimeWarning,
            stacklevel=3,
        )
    m_um = matrix_to_physical(m, fixed_pixel_size=fixed or (1.0, 1.0), moving_pixel_size=moving or (1.0, 1.0))
    params = [m_um[0, 0], m_um[0, 1], m_um[1, 0], m_um[1, 1], m_um[0, 2], m_um[1, 2]]
    # ITK skips '#' lines: say what the numbers are, and what was assumed
    sizes = ", ".join(
        f"{role} {'x'.join(f'{v:g}' for v in size)} um/px" if size else f"{role} unknown (1 um/px assumed)"
        for role, size in (("fixed", fixed), ("moving", moving))
    )
    return (
        "#Insight Transform File V1.0\n"
        f"# drmime_batch {transform.entry}: fixed -> moving point, micrometres ({sizes})\n"
        "#Transform 0\nTransform: AffineTransform_double_2_2\n"
        f"Parameters: {' '.join(repr(float(v)) for v in params)}\nFixedParameters: 0.0 0.0\n"
    )


def _ngff(transform: StoredTransform) -> dict[str, Any]:
    m = _matrix(transform, "NGFF")
    _affine_only(transform, m, "NGFF")
    fixed, moving = _sizes(transform)
    physical = fixed is not None and moving is not None
    if physical:
        m = matrix_to_physical(m, fixed_pixel_size=fixed, moving_pixel_size=moving)  # type: ignore[arg-type]
    space: dict[str, Any] = {"type": "space", **({"unit": "micrometer"} if physical else {})}
    systems = [{"name": role, "axes": [{"name": "y", **space}, {"name": "x", **space}]} for role in ("fixed", "moving")]
    to_moving = _YX @ m @ _YX  # (x, y) -> array order (y, x)
    to_fixed = np.linalg.inv(to_moving)
    doc: dict[str, Any] = {
        "ome": {
            "version": NGFF_VERSION,
            "coordinateSystems": systems,
            "coordinateTransformations": [
                {
                    "type": "bijection",
                    "name": f"{transform.entry}: moving to fixed",
                    "input": "moving",
                    "output": "fixed",
                    "forward": {"type": "affine", "affine": _plain(to_fixed[:2])},
                    "inverse": {"type": "affine", "affine": _plain(to_moving[:2])},
                }
            ],
        },
        "drmime_batch": _provenance(transform),
    }
    if not physical:
        doc["drmime_batch"]["note"] = "pixel sizes unknown: coordinates are full-resolution pixels"
    return doc


def _provenance(transform: StoredTransform) -> dict[str, Any]:
    fixed, moving = _sizes(transform)
    return {
        "store": str(transform.store),
        "entry": transform.entry,
        "kind": transform.kind,
        "fixed": transform.image_path("fixed"),
        "moving": transform.image_path("moving"),
        "fixed_pixel_size_um": None if fixed is None else list(fixed),
        "moving_pixel_size_um": None if moving is None else list(moving),
        "transform_write_id": transform.attrs.get("write_id"),
    }


def _json(transform: StoredTransform) -> dict[str, Any]:
    from drmime_batch.io._writers import CONVENTION

    m = _matrix(transform, "JSON")
    fixed, moving = _sizes(transform)
    doc: dict[str, Any] = {
        **_provenance(transform),
        "convention": CONVENTION,
        "units": "pixel",
        "fixed_to_moving": _plain(m),
        "moving_to_fixed": _plain(np.linalg.inv(m)),
        "fixed_shape": _shape(transform, "fixed"),
        "moving_shape": _shape(transform, "moving"),
    }
    if fixed is not None and moving is not None:
        m_um = matrix_to_physical(m, fixed_pixel_size=fixed, moving_pixel_size=moving)
        doc["fixed_to_moving_um"] = _plain(m_um)
        doc["moving_to_fixed_um"] = _plain(np.linalg.inv(m_um))
    return doc


def _shape(transform: StoredTransform, role: Literal["fixed", "moving"]) -> list[int] | None:
    shape = transform.image_shape(role)
    return None if shape is None else list(shape)


def export_document(transform: StoredTransform, format: str) -> str:
    """The text of an export (see the module docstring for the three formats)."""
    if format == "itk":
        return itk_text(transform)
    if format == "ngff":
        return json.dumps(_ngff(transform), indent=2) + "\n"
    if format == "json":
        return json.dumps(_json(transform), indent=2) + "\n"
    raise ConfigError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")


def export_transform(transform: StoredTransform, out: str | Path, format: str) -> Location:
    """Write a stored transform as ``format`` (``itk``, ``ngff`` or ``json``) to ``out``, atomically.

    An ITK file must be named ``*.tfm`` or ``*.txt`` (ITK picks its reader by the name).

    Raises
    ------
    ConfigError
        An unknown format, an ITK name ITK would not read as text, or a homography asked as
        ``itk`` or ``ngff``.

    Examples
    --------
    >>> import tempfile
    >>> from drmime_batch.io import write_transform
    >>> from drmime_batch.transforms import open_transform
    >>> d = Path(tempfile.mkdtemp())
    >>> write_transform(d / "out.zarr", "p1", np.diag([2.0, 2.0, 1.0]), attrs={})
    >>> path = export_transform(open_transform(d / "out.zarr", "p1"), d / "p1.json", "json")
    >>> json.loads(path.read_text())["moving_to_fixed"][0]
    [0.5, 0.0, 0.0]
    """
    from drmime_batch.io._atomic import replace_path, staging
    from drmime_batch.io._fs import is_url, location, write_bytes

    if format == "itk" and not str(out).lower().endswith((".tfm", ".txt")):
        raise ConfigError(f"ITK transform file {out}: name it *.tfm or *.txt (ITK chooses its reader by the name)")
    text = export_document(transform, format)
    final = location(out)
    with staging(final) as tmp:
        if is_url(tmp):
            write_bytes(tmp, text.encode("utf-8"))
        else:
            Path(tmp).write_text(text, encoding="utf-8")
        replace_path(tmp, final)
    return final
