"""Locations: local paths and fsspec URLs (``s3://``, ``gs://``, ...) behind one small API.

A *location* is either a :class:`pathlib.Path` (a local or shared POSIX file or directory) or a
URL string with a scheme other than ``file://`` (an object in an fsspec file system). URLs stay
strings everywhere: ``Path("s3://bucket/key")`` would collapse the double slash. ``file://``
URLs become local paths, so they keep every local guarantee (atomic renames).

Only what the readers and writers need is here: joining names, existence, whole-object reads,
removal, listing, a version stamp, and an opened read handle. Directory listings of fsspec file
systems are cached per instance; every query here first drops the cache entry of its path, so
objects written by another process (or by zarr's own file-system instance) are seen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

__all__ = [
    "Location",
    "basename",
    "exists",
    "is_url",
    "join",
    "list_names",
    "location",
    "open_input",
    "read_bytes",
    "read_head",
    "remove",
    "stamp",
    "url_fs",
    "write_bytes",
]

Location = Path | str

#: read-ahead block of an opened remote file: an IFD or a tile or two, not a whole level
_BLOCK_SIZE = 64 * 1024
#: back-ends users are told to install, by scheme
_BACKENDS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(value: Any) -> bool:
    """Whether ``value`` names an fsspec object rather than a local path (``file://`` is local).

    Examples
    --------
    >>> is_url("s3://bucket/a.svs"), is_url("file:///data/a.svs"), is_url(Path("a.svs"))
    (True, False, False)
    """
    return isinstance(value, str) and "://" in value and not value.startswith("file://")


def location(value: str | os.PathLike[str]) -> Location:
    """``value`` as a location: a URL string (without a trailing slash) or a :class:`Path`.

    Examples
    --------
    >>> location("s3://bucket/out.zarr/"), location("file:///data/x.tif")
    ('s3://bucket/out.zarr', PosixPath('/data/x.tif'))
    """
    if isinstance(value, str):
        if is_url(value):
            head, _, rest = value.partition("://")
            return f"{head}://{rest.rstrip('/')}" if rest.rstrip("/") else value
        if value.startswith("file://"):
            parsed = urlparse(value)
            return Path(unquote(parsed.path))
        return Path(value)
    return Path(os.fspath(value))


def join(base: Location, *names: str) -> Location:
    """``base`` / ``names`` (URL strings joined with ``/``).

    Examples
    --------
    >>> join("s3://bucket/out.zarr", "p1", "transform")
    's3://bucket/out.zarr/p1/transform'
    """
    if is_url(base):
        return "/".join([str(base).rstrip("/"), *names])
    return Path(base).joinpath(*names)


def basename(loc: Location) -> str:
    """The last component (a file or object name).

    Examples
    --------
    >>> basename("gs://bucket/slides/a.svs"), basename(Path("/data/b.tif"))
    ('a.svs', 'b.tif')
    """
    if is_url(loc):
        return str(loc).rstrip("/").rsplit("/", 1)[-1]
    return Path(loc).name


def url_fs(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it.

    Raises
    ------
    ImportError
        The scheme's back-end is not installed; the message says which package to install.
    """
    import fsspec

    try:
        fs_and_path: tuple[Any, str] = fsspec.core.url_to_fs(url)
        return fs_and_path
    except ImportError as exc:
        scheme = url.split("://", 1)[0]
        package = _BACKENDS.get(scheme, f"the fsspec back-end of {scheme}://")
        raise ImportError(
            f"{scheme}:// needs {package} where this runs (pip install 'drmime-batch[cloud]'): {exc}"
        ) from exc


def _fresh(url: str) -> tuple[Any, str]:
    fs, path = url_fs(url)
    try:
        fs.invalidate_cache(path)
    except Exception:  # noqa: BLE001 - a cache without entries for this path
        pass
    return fs, path


def exists(loc: Location) -> bool:
    """Whether a file, directory, object or object prefix exists at ``loc``."""
    if not is_url(loc):
        return Path(loc).exists()
    fs, path = _fresh(str(loc))
    return bool(fs.exists(path))


def read_bytes(loc: Location) -> bytes:
    """The whole content of a file or object.

    Raises
    ------
    FileNotFoundError
        Nothing at ``loc``.
    """
    if not is_url(loc):
        return Path(loc).read_bytes()
    fs, path = url_fs(str(loc))
    return bytes(fs.cat_file(path))


def read_head(loc: Location, n: int) -> bytes:
    """The first ``n`` bytes of a file or object (one range request remotely)."""
    if not is_url(loc):
        with Path(loc).open("rb") as fh:
            return fh.read(n)
    fs, path = url_fs(str(loc))
    return bytes(fs.cat_file(path, start=0, end=n))


def write_bytes(loc: Location, data: bytes) -> None:
    """Put ``data`` at ``loc`` in one piece (one PUT on object stores: it appears whole or not at all)."""
    if not is_url(loc):
        Path(loc).write_bytes(data)
        return
    fs, path = url_fs(str(loc))
    fs.pipe_file(path, data)
    fs.invalidate_cache(path)


def remove(loc: Location) -> None:
    """Remove an object, or every object under a prefix, if any (URLs only; not atomic)."""
    if not is_url(loc):
        raise ValueError(f"remove() takes URLs; local paths go through _atomic.remove_path: {loc}")
    fs, path = _fresh(str(loc))
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path)


def list_names(loc: Location) -> list[str]:
    """Names of the entries directly under a directory or prefix (``[]`` when there is none)."""
    if not is_url(loc):
        p = Path(loc)
        return [c.name for c in p.iterdir()] if p.is_dir() else []
    fs, path = _fresh(str(loc))
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries if str(e).rstrip("/") != path.rstrip("/")]


def stamp(loc: Location) -> tuple[Any, ...]:
    """A version stamp of a file or object: ``(mtime_ns, size)`` locally, ``(etag, size)`` remotely.

    Raises
    ------
    FileNotFoundError
        Nothing at ``loc``.
    """
    if not is_url(loc):
        st = os.stat(loc)
        return st.st_mtime_ns, st.st_size
    fs, path = _fresh(str(loc))
    info = fs.info(path)
    version = next(
        (info[k] for k in ("ETag", "etag", "generation", "md5Hash", "mtime", "LastModified", "updated") if info.get(k)),
        None,
    )
    return str(version), int(info.get("size") or 0)


def open_input(url: str) -> BinaryIO:
    """A seekable binary read handle of an object that fetches only the byte ranges read.

    Each miss fetches one byte range: what is read plus 64 KiB of read-ahead (a TIFF IFD, a tile
    or two); a level that is never read is never fetched.
    """
    fs, path = url_fs(url)
    try:
        return fs.open(path, "rb", block_size=_BLOCK_SIZE, cache_type="readahead")  # type: ignore[no-any-return]
    except TypeError:  # a file system without block caching options
        return fs.open(path, "rb")  # type: ignore[no-any-return]
