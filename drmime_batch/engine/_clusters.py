"""The two entry points that take a cluster kind: :func:`job_script` and :func:`make_cluster`.

They load the cluster configuration file and hand it to :mod:`._jobqueue` (SLURM, PBS, LSF) or
:mod:`._kubernetes`; the file's layout is described in :mod:`._cluster_config`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import yaml

from drmime_batch.engine._cluster_config import CLUSTER_KINDS, check_kind, config_or_empty, source_name
from drmime_batch.engine._jobqueue import jobqueue_job_script, make_jobqueue_cluster
from drmime_batch.engine._kubernetes import kubernetes_cluster_spec, make_kube_cluster
from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed.deploy import Cluster

__all__ = ["job_script", "make_cluster"]

logger = logging.getLogger(__name__)


def job_script(kind: str, *, config_path: str | os.PathLike[str] | None) -> str:
    """The job script dask-jobqueue would submit for one batch job, without submitting it.

    For ``kind="kubernetes"`` the ``DaskCluster`` manifest (YAML) that would be created.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf", "kubernetes"}
        The cluster kind.
    config_path : path-like or None
        Cluster configuration file (see :func:`~drmime_batch.engine._cluster_config.load_cluster_config`).

    Returns
    -------
    str
        The script text. The scheduler address is the placeholder ``<scheduler-address>`` (the
        real one is known only once the scheduler runs). Nothing is started or submitted.

    Raises
    ------
    ClusterConfigError
        Unknown kind, missing extra, or an invalid configuration.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "c.yaml").write_text(
    ...     "jobqueue: {slurm: {cores: 8, memory: 32GB, walltime: '02:00:00'}}\\n"
    ...     "drmime-batch: {gpus-per-job: 1, prologue: ['module load cuda']}\\n")
    >>> script = job_script("slurm", config_path=d / "c.yaml")
    >>> "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script
    True
    """
    check_kind(kind, CLUSTER_KINDS)
    config = config_or_empty(config_path)
    if kind == "kubernetes":
        return yaml.safe_dump(kubernetes_cluster_spec(config), sort_keys=False)
    return jobqueue_job_script(kind, config, source=source_name(config_path))


def make_cluster(
    kind: str,
    *,
    config_path: str | os.PathLike[str] | None,
    min_jobs: int,
    max_jobs: int,
    log_directory: str | os.PathLike[str] | None = None,
) -> Cluster:
    """Start a Dask cluster on an HPC queue or on Kubernetes, scaling adaptively.

    The scheduler runs in the calling process (SLURM/PBS/LSF: on the login node, so keep the
    driver alive) or in its own pod (Kubernetes). Workers are batch jobs / pods that are asked for
    as tasks wait and released when idle, between ``min_jobs`` and ``max_jobs``.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf", "kubernetes"}
        The cluster kind.
    config_path : path-like or None
        Cluster configuration file (see :func:`~drmime_batch.engine._cluster_config.load_cluster_config`).
    min_jobs, max_jobs : int
        Adaptive bounds, in batch jobs (SLURM/PBS/LSF) or worker pods (Kubernetes).
    log_directory : path-like, optional
        SLURM/PBS/LSF: where the jobs write their stderr/stdout when the configuration names no
        ``log-directory`` (a job that dies before its worker connects is reported with the end
        of its error file).

    Returns
    -------
    distributed.deploy.Cluster
        A ``SLURMCluster``/``PBSCluster``/``LSFCluster`` or a ``KubeCluster``; the caller closes
        it (``with make_cluster(...) as cluster:``).

    Raises
    ------
    ClusterConfigError
        Unknown kind, the extra (``hpc`` / ``k8s``) not installed, bad bounds or configuration.

    Examples
    --------
    >>> cluster = make_cluster("slurm", config_path="slurm.yaml", min_jobs=0, max_jobs=4)  # doctest: +SKIP
    >>> client = distributed.Client(cluster)  # doctest: +SKIP
    """
    check_kind(kind, CLUSTER_KINDS)
    if min_jobs < 0 or max_jobs < max(min_jobs, 1):
        raise ClusterConfigError(
            f"need 0 <= min_jobs <= max_jobs and max_jobs >= 1, got min_jobs={min_jobs}, "
            f"max_jobs={max_jobs}"
        )
    config = config_or_empty(config_path)
    if kind == "kubernetes":
        return make_kube_cluster(config, min_jobs=min_jobs, max_jobs=max_jobs)
    return make_jobqueue_cluster(
        kind, config, source=source_name(config_path), min_jobs=min_jobs, max_jobs=max_jobs,
        log_directory=log_directory,
    )
