"""TLS between the driver, the scheduler and the workers, from a cluster configuration file.

The file's ``distributed.comm.tls`` section is distributed's own schema
(https://distributed.dask.org/en/stable/tls.html); this module checks it (files exist, a cert
comes with its key, encryption is not required without a CA) and turns it into a
:class:`distributed.Security`.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import dask
import dask.config

from drmime_batch.engine._cluster_config import (
    TLS_FILE_KEYS,
    config_or_empty,
    source_name,
)
from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed import Security

__all__ = ["load_security", "security_from_config"]


def security_from_config(config: Mapping[str, Any], source: str) -> Security | None:
    """The :class:`distributed.Security` a loaded configuration describes, checked.

    The file's ``distributed.comm`` settings win over Dask's own configuration; they are passed
    to ``Security`` as arguments, so the process-wide dask config is neither read for them nor
    changed.

    Parameters
    ----------
    config : mapping
        As returned by :func:`~drmime_batch.engine._cluster_config.load_cluster_config`.
    source : str
        Name used in error messages (the file).

    Returns
    -------
    distributed.Security or None
        None when no ``distributed.comm.tls.ca-file`` is set.

    Raises
    ------
    ClusterConfigError
        A certificate file is missing, a cert comes without its key, encryption is required
        without a CA, or a TLS version is not 1.2 or 1.3.
    """
    from distributed import Security

    comm = (config.get("distributed") or {}).get("comm") or {}
    file_tls = comm.get("tls") or {}
    tls = dask.config.merge(dask.config.get("distributed.comm.tls", default={}) or {}, file_tls)
    required = comm.get("require-encryption")
    if required is None:
        required = dask.config.get("distributed.comm.require-encryption", default=False)
    required = bool(required)
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
    kwargs: dict[str, Any] = {}
    for keys in TLS_FILE_KEYS:
        value: Any = tls
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        if value and "\n" not in str(value) and not Path(str(value)).is_file():
            raise ClusterConfigError(
                f"{source}: distributed.comm.tls.{'.'.join(keys)} file not found: {value}"
            )
        if value:
            kwargs["tls_" + "_".join(k.replace("-", "_") for k in keys)] = str(value)
    if tls.get("ciphers"):
        kwargs["tls_ciphers"] = str(tls["ciphers"])
    for key in ("min-version", "max-version"):
        if key in file_tls:  # otherwise Security reads Dask's own setting, as it always did
            kwargs[f"tls_{key.replace('-', '_')}"] = _tls_version(file_tls[key], key, source)
    return Security(require_encryption=required, **kwargs)


def _tls_version(value: Any, key: str, source: str) -> ssl.TLSVersion | None:
    """distributed's spelling of a TLS version (``1.2``, ``1.3`` or null) as an ``ssl`` constant."""
    versions = {None: None, 1.2: ssl.TLSVersion.TLSv1_2, 1.3: ssl.TLSVersion.TLSv1_3}
    if value not in versions:
        raise ClusterConfigError(
            f"{source}: distributed.comm.tls.{key} must be 1.2, 1.3 or null, got {value!r}"
        )
    return versions[value]


def load_security(config_path: str | os.PathLike[str] | None) -> Security | None:
    """The TLS :class:`distributed.Security` described by a cluster configuration file.

    Parameters
    ----------
    config_path : path-like or None
        Cluster configuration file (see :func:`~drmime_batch.engine._cluster_config.load_cluster_config`). Its
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
    return security_from_config(config, source_name(config_path))
