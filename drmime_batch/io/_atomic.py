"""Atomic placement of files and directories, and the pair store's groups.

On an object store (an fsspec URL, see :mod:`drmime_batch.io._fs`) there is no rename: a
"directory" is a prefix of many objects and a copy is not atomic either. There, :func:`staging`
yields the final URL itself (after deleting what was there) and :func:`replace_path` does
nothing: the output is written in place, and only the completion marker of
:mod:`drmime_batch.io._writers`, set last, says it is finished. An interrupted remote write may
leave a partial output behind that is never reported complete; the next write removes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from drmime_batch.io._fs import Location, basename, is_url, join, list_names, remove

__all__ = ["new_write_id", "replace_path", "remove_path", "staging", "sweep_staging"]

logger = logging.getLogger(__name__)

_STAGING_PREFIX = ".drmime-tmp-"
_TRASH_PREFIX = ".drmime-old-"


def new_write_id() -> str:
    """A fresh random id that names one write of one output."""
    return uuid.uuid4().hex


def _sibling(path: Location, prefix: str) -> Location:
    name = f"{prefix}{basename(path)}-{new_write_id()[:12]}"
    if is_url(path):
        return join(str(path).rsplit("/", 1)[0], name)
    return Path(path).with_name(name)


def remove_path(path: Location) -> None:
    """Remove a file or directory tree if it exists (first renamed aside, so removal is atomic).

    A URL's objects are deleted where they are (not atomic: the marker was cleared before).
    """
    if is_url(path):
        remove(path)
        return
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{new_write_id()[:8]}")
    os.replace(path, trash)
    _rm(trash)


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def replace_path(tmp: Location, final: Location) -> None:
    """Move ``tmp`` to ``final``, replacing whatever was there.

    A file is replaced in one ``os.replace``. A directory cannot replace a non-empty directory in
    one step, so the old one is first renamed aside and deleted after: there is a moment with no
    ``final`` at all, never one with a half-written ``final``. On an object store ``tmp`` is
    ``final`` (see :func:`staging`) and nothing moves.
    """
    if is_url(final):
        if str(tmp) != str(final):
            raise ValueError(f"object stores have no rename: write {final} in place (got {tmp})")
        return
    tmp, final = Path(tmp), Path(final)
    if final.exists() and final.is_dir() and not final.is_symlink():
        trash = final.with_name(f"{_TRASH_PREFIX}{final.name}-{new_write_id()[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        _rm(trash)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def staging(final: Location, *, in_place: bool = True) -> Iterator[Location]:
    """Yield a temporary sibling path of ``final``; remove it if the block raises.

    The caller writes to the yielded path and calls :func:`replace_path` itself when done. For a
    URL with ``in_place`` (no rename exists there) the yielded location is ``final`` itself,
    emptied first; ``in_place=False`` asks for a hidden sibling anyway (scratch space that is
    deleted, never renamed).
    """
    if is_url(final):
        tmp: Location = final if in_place else _sibling(final, _STAGING_PREFIX)
        remove(tmp)
        try:
            yield tmp
        except BaseException:
            remove(tmp)
            raise
        return
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(final, _STAGING_PREFIX)
    try:
        yield tmp
    except BaseException:
        _rm(Path(tmp))
        raise


def sweep_staging(directory: Location, name: str) -> None:
    """Delete leftovers of interrupted writes of ``name`` in ``directory`` (killed processes)."""
    if is_url(directory):
        for entry in list_names(directory):
            if entry.startswith((f"{_STAGING_PREFIX}{name}-", f"{_TRASH_PREFIX}{name}-")):
                logger.debug("removing leftover of an interrupted write: %s/%s", directory, entry)
                remove(join(directory, entry))
        return
    directory = Path(directory)
    if not directory.is_dir():
        return
    for prefix in (_STAGING_PREFIX, _TRASH_PREFIX):
        for leftover in directory.glob(f"{prefix}{name}-*"):
            logger.debug("removing leftover of an interrupted write: %s", leftover)
            _rm(leftover)
