"""Atomic placement of files and directories, and the pair store's groups."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

__all__ = ["new_write_id", "replace_path", "remove_path", "staging", "sweep_staging"]

logger = logging.getLogger(__name__)

_STAGING_PREFIX = ".drmime-tmp-"
_TRASH_PREFIX = ".drmime-old-"


def new_write_id() -> str:
    """A fresh random id that names one write of one output."""
    return uuid.uuid4().hex


def remove_path(path: Path) -> None:
    """Remove a file or directory tree if it exists (first renamed aside, so removal is atomic)."""
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


def replace_path(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing whatever was there.

    A file is replaced in one ``os.replace``. A directory cannot replace a non-empty directory in
    one step, so the old one is first renamed aside and deleted after: there is a moment with no
    ``final`` at all, never one with a half-written ``final``.
    """
    if final.exists() and final.is_dir() and not final.is_symlink():
        trash = final.with_name(f"{_TRASH_PREFIX}{final.name}-{new_write_id()[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        _rm(trash)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def staging(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path of ``final``; remove it if the block raises.

    The caller writes to the yielded path and calls :func:`replace_path` itself when done.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{_STAGING_PREFIX}{final.name}-{new_write_id()[:12]}")
    try:
        yield tmp
    except BaseException:
        _rm(tmp)
        raise


def sweep_staging(directory: Path, name: str) -> None:
    """Delete leftovers of interrupted writes of ``name`` in ``directory`` (killed processes)."""
    if not directory.is_dir():
        return
    for prefix in (_STAGING_PREFIX, _TRASH_PREFIX):
        for leftover in directory.glob(f"{prefix}{name}-*"):
            logger.debug("removing leftover of an interrupted write: %s", leftover)
            _rm(leftover)
