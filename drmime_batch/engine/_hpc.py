"""Former home of the HPC/Kubernetes cluster code, kept so that its names keep working.

The code now lives in modules of one concern each:

* :mod:`._cluster_config` - the cluster configuration file (layout, loading, our settings);
* :mod:`._tls` - TLS (:func:`load_security`);
* :mod:`._jobqueue` - SLURM/PBS/LSF through dask-jobqueue;
* :mod:`._jobwatch` - its jobs that are refused, can never start or die before a worker connects;
* :mod:`._kubernetes` - Kubernetes through the dask-kubernetes operator;
* :mod:`._clusters` - :func:`job_script` and :func:`make_cluster`, dispatching on the kind;
* :mod:`._gpu_pinning` - the worker preload pinning each process to its own GPU.

``dask_setup`` stays importable here so that job scripts written with the former
``--preload drmime_batch.engine._hpc`` still pin their GPUs.
"""

from __future__ import annotations

from drmime_batch.engine._cluster_config import (
    CLUSTER_KINDS,
    JOBQUEUE_KINDS,
    ClusterKind,
    HpcSettings,
    hpc_settings,
    load_cluster_config,
)
from drmime_batch.engine._clusters import job_script, make_cluster
from drmime_batch.engine._gpu_pinning import dask_setup
from drmime_batch.engine._kubernetes import kubernetes_cluster_spec
from drmime_batch.engine._tls import load_security

__all__ = [
    "CLUSTER_KINDS",
    "JOBQUEUE_KINDS",
    "ClusterKind",
    "HpcSettings",
    "dask_setup",
    "hpc_settings",
    "job_script",
    "kubernetes_cluster_spec",
    "load_cluster_config",
    "load_security",
    "make_cluster",
]
