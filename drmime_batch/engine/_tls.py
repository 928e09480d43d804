"""TLS between the driver, the scheduler and the workers, from a cluster configuration file.

The file's ``distributed.comm.tls`` section is distributed's own schema
(https://distributed.dask.org/en/stable/tls.html); this module checks it (files exist, a cert
comes with its key, encryption is not required without a CA) and turns it into a
:class:`distributed.Security`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import dask
import dask.config

from drmime_batch.engine._cluster_config import (
    TLS_FILE_KEYS,
    config_or_empty,
    dask_sections,
    source_name,
)
from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed import Security

__all__ = ["load_security", "security_from_current_config"]


def security_from_current_config(source: str) -> Security | None:
    """The :class:`distributed.Security` the *current* dask config describes, checked.

    Parameters
    ----------
    source : str
        Name used in error messages (the file).

    Returns
    -------
    distributed.Security or None
        None when no ``distributed.comm.tls.ca-file`` is set.

    Raises
    ------
    ClusterConfigError
        A certificate file is missing, a cert comes without its key, or encryption is required
        without a CA.
    """
    from distributed import Security

    tls = dask.config.get("distributed.comm.tls", default={}) or {}
    required = bool(dask.config.get("distributed.comm.require-encryption", default=False))
    ca_file = tls.get("ca-file")
    if not ca_file:
        if required:
            raise ClusterConfigError(
                f"{source}: distributed.comm.require-encryption is true but "
                "distributed.comm.tls.ca-file is not set"
            )
        return None
    for role in ("client", "scheduler", "worker"):
        part = tls.get(role) or {}
        if bool(part.get("cert")) != bool(part.get("key")):
            raise ClusterConfigError(
                f"{source}: distributed.comm.tls.{role} needs both 'cert' and 'key', "
                f"got {sorted(k for k in ('cert', 'key') if part.get(k))}"
            )
    for keys in TLS_FILE_KEYS:
        value: Any = tls
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        if value and "\n" not in str(value) and not Path(str(value)).is_file():
            raise ClusterConfigError(
                f"{source}: distributed.comm.tls.{'.'.join(keys)} file not found: {value}"
            )
    return Security(require_encryption=True if required else None)


def load_security(config_path: str | os.PathLike[str] | None) -> Security | None:
    """The TLS :class:`distributed.Security` described by a cluster configuration file.

    Parameters
    ----------
    config_path : path-like or None
        Cluster configuration file (see :func:`load_cluster_config`). Its
        ``distributed.comm.tls`` section (distributed's own schema: ``ca-file`` and
        ``client``/``scheduler``/``worker`` ``cert``/``key``) and
        ``distributed.comm.require-encryption`` are used.

    Returns
    -------
    distributed.Security or None
        None when no file is given or it sets no ``ca-file``. Certificate contents are never
        logged.

    Raises
    ------
    ClusterConfigError
        A certificate file is missing, a cert comes without its key, or encryption is required
        without a CA.

    Examples
    --------
    >>> load_security(None) is None
    True
    """
    config = config_or_empty(config_path)
    if "distributed" not in config:
        return None
    with dask.config.set(dask_sections({"distributed": config["distributed"]})):
        return security_from_current_config(source_name(config_path))
