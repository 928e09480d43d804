"""``open_image``: TIFF-family, OME-Zarr / zarr and PNG/JPEG files as lazy multiscale images."""

from __future__ import annotations

import contextlib
import logging
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, cast

import numpy as np

from drmime_batch.errors import CorruptImageError, ImageNotFoundError, StorageAccessError, UnsupportedFormatError
from drmime_batch.io._fs import (
    Location,
    basename,
    exists,
    is_url,
    join,
    location,
    open_input,
    read_head,
    stamp,
    url_fs,
)
from drmime_batch.io._multiscale import MultiscaleImage
from drmime_batch.io._sources import AxisMap, PILSource, TiffSource, ZarrSource, pil_mode_plan

__all__ = ["open_image"]

logger = logging.getLogger(__name__)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PIL_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG"}

#: micrometres per unit, for OME / NGFF unit names
_UNIT_UM = {
    "µm": 1.0, "um": 1.0, "micrometer": 1.0, "micron": 1.0, "nm": 1e-3, "nanometer": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
    "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "picometer": 1e-6,
}  # fmt: skip
#: plausible microscopy pixel sizes (µm); TIFF resolution tags outside this are screen DPI noise
_PLAUSIBLE_UM = (1e-3, 100.0)
_SVS_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


def open_image(path: str | Path) -> MultiscaleImage:
    """Open an image file lazily as a :class:`MultiscaleImage`; reads metadata only.

    Parameters
    ----------
    path : str or Path
        A TIFF / BigTIFF / OME-TIFF / SVS / NDPI (or other pyramidal TIFF) file, an OME-Zarr
        (NGFF 0.4 or 0.5) or plain zarr array/group directory, or a PNG/JPEG file. Also an fsspec
        URL of one (``s3://bucket/slides/a.svs``, ``gs://bucket/b.ome.zarr``; the scheme's
        back-end, e.g. s3fs or gcsfs, must be installed): TIFF tiles are fetched by byte range,
        zarr chunks through :class:`zarr.storage.FsspecStore`; ``file://`` URLs are local paths.

    Returns
    -------
    MultiscaleImage
        Levels as dask arrays ``(y, x[, c])``; the file's pyramid levels first, then levels
        built lazily down to 256 pixels.

    Raises
    ------
    ImageNotFoundError
        ``path`` does not exist.
    UnsupportedFormatError
        The file is none of the formats above (or the URL's fsspec back-end is not installed).
    CorruptImageError
        The file claims a supported format but its header cannot be decoded.

    Examples
    --------
    >>> from importlib.resources import files
    >>> jpg = files("drmime_batch") / "examples/cima-lung-lesion3/images/29-041-Izd2-w35-He-les3.jpg"
    >>> img = open_image(jpg)
    >>> img.shape, img.dtype, img.channels, img.pixel_size
    ((661, 892, 3), dtype('uint8'), 3, None)
    """
    loc = location(path)
    if is_url(loc):
        return _open_url(str(loc))
    p = Path(loc)
    if not p.exists():
        raise ImageNotFoundError(f"image not found: {p} (check the path and the working directory)")
    if p.is_dir():
        return _open_zarr(p)
    with p.open("rb") as fh:
        head = fh.read(8)
    return _open_file(p, head)


def _open_file(loc: Location, head: bytes) -> MultiscaleImage:
    """Dispatch a file (local or an object) on its first bytes."""
    name = basename(loc)
    if head[:4] in _TIFF_MAGIC:
        return _open_tiff(loc)
    for magic, kind in _PIL_MAGIC.items():
        if head.startswith(magic):
            return _open_pil(loc, kind)
    suffix = Path(name).suffix
    if suffix.lower() in (".tif", ".tiff", ".svs", ".ndpi", ".png", ".jpg", ".jpeg", ".btf", ".scn"):
        raise CorruptImageError(f"{name}: the extension says {suffix} but the file header {head!r} does not")
    raise UnsupportedFormatError(
        f"{name}: not a supported image (TIFF/OME-TIFF/SVS/NDPI, OME-Zarr or zarr directory, PNG, JPEG)"
    )


def _open_url(url: str) -> MultiscaleImage:
    """An fsspec URL: a zarr store (a prefix with zarr metadata) or one object."""
    try:
        fs, path = url_fs(url)
    except ImportError as exc:
        raise UnsupportedFormatError(f"{url}: {exc}") from exc
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise ImageNotFoundError(f"image not found: {url} (check the URL: no object or prefix there)") from exc
    except Exception as exc:  # noqa: BLE001 - each storage client fails in its own way (credentials, network)
        cause = " ".join(str(exc).split()) or "no details"
        raise StorageAccessError(f"{url}: the object store refused access: {type(exc).__name__}: {cause}") from exc
    if info.get("type") == "directory":
        return _open_zarr(url)
    return _open_file(url, read_head(url, 8))


# ------------------------------------------------------------------------------------------- TIFF


def _tiff_pixel_size(tif: Any, series: Any) -> tuple[float, float] | None:
    if tif.is_ome and tif.ome_metadata:
        ps = _ome_xml_pixel_size(tif.ome_metadata, 0)  # series 0 is read
        if ps is not None:
            return ps
    page = series.keyframe
    if tif.is_svs:
        match = _SVS_MPP.search(tif.pages[0].description or "")
        if match and float(match.group(1)) > 0:
            return float(match.group(1)), float(match.group(1))
    try:
        unit = int(page.resolutionunit)
        xres, yres = page.get_resolution()
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return None
    unit_um = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(unit)
    if unit_um is None or not xres or not yres:
        return None
    ps = (unit_um / float(xres), unit_um / float(yres))
    if not all(_PLAUSIBLE_UM[0] <= v <= _PLAUSIBLE_UM[1] for v in ps):
        logger.debug("%s: ignoring resolution tags (%s um/px is not a microscope pixel)", tif.filename, ps)
        return None
    return ps


def _ome_xml_pixel_size(xml: str, index: int) -> tuple[float, float] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"]
    if not pixels:
        return None
    el = pixels[min(index, len(pixels) - 1)]
    out = []
    for ax in ("X", "Y"):
        value = el.get(f"PhysicalSize{ax}")
        if value is None:
            return None
        unit = el.get(f"PhysicalSize{ax}Unit", "µm").lower()
        if unit not in _UNIT_UM:
            logger.warning("unknown OME length unit %r; pixel size ignored", unit)
            return None
        out.append(float(value) * _UNIT_UM[unit])
    return out[0], out[1]


def _open_tiff(p: Location) -> MultiscaleImage:
    import tifffile

    name = basename(p)
    remote = is_url(p)
    version = stamp(p) if remote else ()
    try:
        handle = open_input(str(p)) if remote else None
        try:
            with tifffile.TiffFile(handle if handle is not None else p) as tif:
                if not tif.series:
                    raise CorruptImageError(f"{name}: TIFF with no image series")
                series = tif.series[0]
                if len(tif.series) > 1:
                    logger.debug("%s: %d series, reading series 0 (%s)", name, len(tif.series), series.name)
                axes = series.axes  # squeezed, as tifffile's zarr view presents them
                sources, native = [], []
                for li, level in enumerate(series.levels):
                    amap = AxisMap.from_axes(tuple(axes), tuple(level.shape))
                    sources.append(TiffSource(str(p), 0, li, amap, np.dtype(level.dtype), version))
                    kf = level.keyframe
                    native.append((kf.tilelength, kf.tilewidth) if kf.is_tiled else (kf.rowsperstrip, 0))
                pixel_size = _tiff_pixel_size(tif, series)
                kind = "svs" if tif.is_svs else ("ome-tiff" if tif.is_ome else "tiff")
                meta = {"format": kind, "series": series.name}
        finally:
            if handle is not None:
                handle.close()
    except CorruptImageError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, struct.error) as exc:
        raise CorruptImageError(f"{name}: cannot decode TIFF header: {exc}") from exc
    return MultiscaleImage(p, sources, pixel_size=pixel_size, native_chunks=native, metadata=meta)


# ------------------------------------------------------------------------------------------- zarr


def _ngff_multiscales(attrs: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    if "ome" in attrs and isinstance(attrs["ome"], dict) and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"], str(attrs["ome"].get("version", "0.5"))
    if "multiscales" in attrs:
        ms = attrs["multiscales"]
        return ms, str(ms[0].get("version", "0.4")) if ms else None
    return None, None


def _guess_axes(shape: tuple[int, ...], attrs: dict[str, Any]) -> tuple[str, ...]:
    dims = attrs.get("_ARRAY_DIMENSIONS")
    if dims and len(dims) == len(shape):
        names = tuple(str(d).lower().rstrip("0123456789") for d in dims)
        if "y" in names and "x" in names:
            return names
    if len(shape) == 2:
        return ("y", "x")
    if len(shape) == 3:
        return ("y", "x", "c") if shape[2] <= 4 else ("c", "y", "x")
    return ("t", "c", "z", "y", "x")[-len(shape):] if len(shape) <= 5 else tuple("?" * len(shape))


def _ngff_pixel_size(ms: dict[str, Any], axes: list[dict[str, Any]]) -> tuple[float, float] | None:
    names = [a["name"].lower() if isinstance(a, dict) else str(a).lower() for a in axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    scale = None
    for ct in ms["datasets"][0].get("coordinateTransformations", []):
        if ct.get("type") == "scale":
            scale = ct.get("scale")
    if scale is None or "x" not in names or "y" not in names:
        return None
    out = []
    for ax in ("x", "y"):
        i = names.index(ax)
        unit = (units[i] or "").lower()
        if unit not in _UNIT_UM:
            return None
        out.append(float(scale[i]) * _UNIT_UM[unit])
    return out[0], out[1]


def _zarr_version(p: Location) -> tuple[Any, ...]:
    """Stamp of a remote store's root metadata (its identity in dask tokens); ``()`` locally."""
    if not is_url(p):
        return ()
    for meta in ("zarr.json", ".zgroup", ".zarray"):
        try:
            return stamp(join(p, meta))
        except FileNotFoundError:
            continue
    return ()


def _open_zarr(p: Location) -> MultiscaleImage:
    import zarr

    name = basename(p)
    try:
        node = zarr.open(store=str(p), mode="r")
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        if not any(exists(join(p, n)) for n in ("zarr.json", ".zgroup", ".zarray")):
            raise UnsupportedFormatError(
                f"{name}: a directory but not a zarr store (no zarr.json/.zgroup/.zarray)"
            ) from exc
        raise CorruptImageError(f"{name}: cannot open zarr store: {exc}") from exc
    store_stamp = _zarr_version(p)
    if isinstance(node, zarr.Array):
        amap = AxisMap.from_axes(_guess_axes(node.shape, dict(node.attrs)), node.shape)
        src = ZarrSource(str(p), "", amap, np.dtype(node.dtype), store_stamp)
        return MultiscaleImage(p, [src], native_chunks=[node.chunks], metadata={"format": "zarr"})
    attrs = dict(node.attrs)
    multiscales, ngff_version = _ngff_multiscales(attrs)
    if multiscales:
        ms = multiscales[0]
        paths = [d["path"] for d in ms["datasets"]]
        axes = ms.get("axes")
        arrays = [cast("zarr.Array[Any]", node[path]) for path in paths]  # NGFF datasets name arrays
        names = (
            tuple((a["name"] if isinstance(a, dict) else a) for a in axes)
            if axes
            else _guess_axes(arrays[0].shape, dict(arrays[0].attrs))
        )
        pixel_size = _ngff_pixel_size(ms, axes) if axes else None
        meta = {"format": "ome-zarr", "ngff_version": ngff_version, "name": ms.get("name")}
    else:
        members = [(k, a) for k, a in node.arrays()]
        if not members:
            raise UnsupportedFormatError(f"{name}: zarr group without arrays or NGFF multiscales metadata")
        members.sort(key=lambda kv: -int(np.prod(kv[1].shape)))
        ndim = members[0][1].ndim
        members = [kv for kv in members if kv[1].ndim == ndim]
        paths = [k for k, _ in members]
        arrays = [a for _, a in members]
        names = _guess_axes(arrays[0].shape, dict(arrays[0].attrs))
        pixel_size = None
        meta = {"format": "zarr"}
    sources = []
    for path, arr in zip(paths, arrays, strict=True):
        amap = AxisMap.from_axes(names, arr.shape)
        sources.append(ZarrSource(str(p), str(path), amap, np.dtype(arr.dtype), store_stamp))
    native = []
    for src, arr in zip(sources, arrays, strict=True):
        shards = getattr(arr, "shards", None)
        chunks = arr.chunks if shards is None else shards
        native.append((chunks[src.axis_map.y_axis], chunks[src.axis_map.x_axis]))
    return MultiscaleImage(p, sources, pixel_size=pixel_size, native_chunks=native, metadata=meta)


# --------------------------------------------------------------------------------------- PNG/JPEG


def _open_pil(p: Location, kind: str) -> MultiscaleImage:
    from PIL import Image, UnidentifiedImageError

    remote = is_url(p)
    try:
        with contextlib.ExitStack() as stack:
            fh = stack.enter_context(open_input(str(p))) if remote else p
            im = stack.enter_context(Image.open(fh))
            _, channels, dtype = pil_mode_plan(im.mode)
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise CorruptImageError(f"{basename(p)}: cannot decode {kind} header: {exc}") from exc
    shape = (h, w) if channels == 1 else (h, w, channels)
    source = PILSource(str(p), shape, dtype, stamp(p) if remote else ())
    return MultiscaleImage(p, [source], metadata={"format": kind.lower()})
