"""The one rule for pair ids, shared by the manifest, the queue and the output writer.

A pair id names the pair's group in the output store (``OUT.zarr/<pair_id>``), so it must be a
safe file and object name everywhere the store may live: 1 to 200 characters from letters, digits
and ``. _ - + =``, starting with a letter or digit (so never ``.``/``..``, a hidden staging name or
a zarr-reserved ``__`` name), and not ``zarr.json`` (the store's own metadata file).

The writer adds no normalisation of its own, but case-insensitive storage (macOS and Windows
disks, SMB/CIFS shares) does: ``P1`` and ``p1`` would share one folder. :func:`pair_id_key` gives
the name a pair id has there; ids of one output store must differ in it.

Imports nothing but the standard library and :mod:`drmime_batch.errors`: the queue commands use it
without torch, dask or zarr.
"""

from __future__ import annotations

import re

from drmime_batch.errors import OutputStoreError

__all__ = ["MAX_PAIR_ID_LENGTH", "check_pair_id", "pair_id_key", "safe_pair_id_part"]

MAX_PAIR_ID_LENGTH = 200
_PAIR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
_RESERVED = frozenset({"zarr.json"})


def check_pair_id(pair_id: object) -> str:
    """Return ``pair_id`` when it is a usable pair id, else raise :class:`OutputStoreError`.

    Parameters
    ----------
    pair_id : str
        The id to check (anything else is refused).

    Returns
    -------
    str
        ``pair_id`` unchanged.

    Raises
    ------
    OutputStoreError
        The id breaks the rule (see the module docstring); the message names the id and why.
        It is also a ``ValueError``.

    Examples
    --------
    >>> check_pair_id("CD31-to-He")
    'CD31-to-He'
    >>> check_pair_id("a/b")
    Traceback (most recent call last):
    ...
    drmime_batch.errors.OutputStoreError: pair id 'a/b' is not usable: use letters, digits and . _ - + = (no spaces, slashes or @), starting with a letter or digit
    """
    if not isinstance(pair_id, str):
        raise OutputStoreError(f"pair id {pair_id!r} is not usable: it must be a string")
    if not _PAIR_ID.fullmatch(pair_id):
        raise OutputStoreError(
            f"pair id {pair_id!r} is not usable: use letters, digits and . _ - + = "
            "(no spaces, slashes or @), starting with a letter or digit"
        )
    if len(pair_id) > MAX_PAIR_ID_LENGTH:
        raise OutputStoreError(
            f"pair id {pair_id[:40]!r}... is not usable: {len(pair_id)} characters, at most {MAX_PAIR_ID_LENGTH}"
        )
    if pair_id.lower() in _RESERVED:
        raise OutputStoreError(f"pair id {pair_id!r} is not usable: it is the name of the store's own metadata file")
    return pair_id


def pair_id_key(pair_id: str) -> str:
    """The name ``pair_id``'s folder gets on case-insensitive storage; two ids of one store must differ in it.

    Examples
    --------
    >>> pair_id_key("He-to-CD31") == pair_id_key("he-to-cd31")
    True
    """
    return pair_id.lower()  # ids are ASCII (check_pair_id), so lower() is the whole case fold


def safe_pair_id_part(text: str) -> str:
    """``text`` with every character the rule refuses replaced by ``_`` (to build ids from file names).

    Examples
    --------
    >>> safe_pair_id_part("29-041 He@les3")
    '29-041_He_les3'
    """
    return _UNSAFE.sub("_", text)
