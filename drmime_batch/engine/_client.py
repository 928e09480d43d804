"""Opening a Dask client: an embedded LocalCluster, an existing scheduler, or an HPC/Kubernetes cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import dask

from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed import Client, Security

__all__ = ["CLUSTER_KINDS", "local_cluster_size", "open_client"]

logger = logging.getLogger(__name__)

CLUSTER_KINDS = ("local", "slurm", "pbs", "lsf", "kubernetes")


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def local_cluster_size(workers: int | None = None, threads_per_worker: int | None = None) -> tuple[int, int]:
    """``(n_workers, threads_per_worker)`` of the embedded LocalCluster on this machine.

    A registration task uses all its worker's threads for torch, and each worker runs one pair
    per thread, so the default is one single-threaded worker per core: every core registers one
    pair. ``workers`` alone gives each worker one thread; ``threads_per_worker`` alone fills the
    cores with workers of that many threads.

    Examples
    --------
    >>> local_cluster_size(3, 1)
    (3, 1)
    >>> local_cluster_size(None, 10**6)[0]
    1
    """
    if workers is not None and workers < 1:
        raise ClusterConfigError(f"the number of workers must be at least 1, got {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise ClusterConfigError(f"threads per worker must be at least 1, got {threads_per_worker}")
    threads = threads_per_worker or 1
    n = workers or max(1, _cpu_count() // threads)
    return n, threads


def _security(cluster_config: Path | None) -> Security | None:
    """TLS settings for attaching to a scheduler, from the cluster config (``_tls.load_security``)."""
    try:
        from drmime_batch.engine._tls import load_security
    except ImportError:
        if cluster_config is not None:
            raise ClusterConfigError(
                f"cluster config {cluster_config} given but the HPC support module is not available"
            ) from None
        return None
    return load_security(Path(cluster_config) if cluster_config is not None else None)


@contextlib.contextmanager
def open_client(
    *,
    scheduler: str | None = None,
    scheduler_file: str | Path | None = None,
    cluster: str = "local",
    workers: int | None = None,
    threads_per_worker: int | None = None,
    cluster_config: str | Path | None = None,
    min_jobs: int = 0,
    max_jobs: int = 4,
    resources: dict[str, float] | None = None,
    log_directory: str | Path | None = None,
) -> Iterator[Client]:
    """Open a Dask client for a batch and close it (and any cluster made here) on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``, ``tls://...``): attach to it.
    scheduler_file : str or Path, optional
        A scheduler file written by ``dask scheduler --scheduler-file``: attach to it.
    cluster : {"local", "slurm", "pbs", "lsf", "kubernetes"}
        What to start when no scheduler is given: an embedded LocalCluster sized to the machine
        (:func:`local_cluster_size`) or an adaptive job-queue / Kubernetes cluster.
    workers, threads_per_worker : int, optional
        LocalCluster size.
    cluster_config : str or Path, optional
        YAML of the HPC/Kubernetes cluster and its TLS settings; TLS is applied when attaching.
    min_jobs, max_jobs : int
        Adaptive bounds of HPC/Kubernetes clusters.
    resources : dict, optional
        Resources each LocalCluster worker advertises (``{"GPU": 1}`` for ``--device cuda``).
    log_directory : str or Path, optional
        SLURM/PBS/LSF jobs' stderr/stdout folder when the cluster config sets no ``log-directory``.

    Yields
    ------
    distributed.Client
        Also the default dask scheduler while open.

    Raises
    ------
    ClusterConfigError
        Contradictory or invalid options, or no scheduler reachable.

    Examples
    --------
    >>> with open_client(workers=1, threads_per_worker=1) as client:  # doctest: +SKIP
    ...     client.submit(sum, [1, 2]).result()
    3
    """
    from distributed import Client, LocalCluster

    if scheduler and scheduler_file:
        raise ClusterConfigError("give a scheduler address or a scheduler file, not both")
    if cluster not in CLUSTER_KINDS:
        raise ClusterConfigError(f"the cluster kind must be one of {', '.join(CLUSTER_KINDS)}, got {cluster!r}")
    config = Path(cluster_config) if cluster_config is not None else None
    if config is not None and not config.is_file():
        raise ClusterConfigError(f"cluster config {config} does not exist")
    with contextlib.ExitStack() as stack:
        if scheduler or scheduler_file:
            if cluster != "local":
                raise ClusterConfigError(f"a {cluster} cluster cannot be combined with a scheduler address or file (they name one already running)")
            if scheduler_file is not None and not Path(scheduler_file).is_file():
                raise ClusterConfigError(f"scheduler file {scheduler_file} does not exist")
            security = _security(config)
            kwargs = {"security": security} if security is not None else {}
            try:
                client = Client(
                    address=scheduler,
                    scheduler_file=str(scheduler_file) if scheduler_file else None,
                    # dask's connect timeout (30 s unless DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT says)
                    timeout=dask.config.get("distributed.comm.timeouts.connect", "30s"),
                    **kwargs,
                )
            except (OSError, TimeoutError) as exc:
                where = scheduler or f"the scheduler of {scheduler_file}"
                raise ClusterConfigError(f"cannot reach {where}: {exc}") from exc
            logger.info("attached to scheduler %s", getattr(client.scheduler, "address", scheduler))
        elif cluster == "local":
            n, threads = local_cluster_size(workers, threads_per_worker)
            made = stack.enter_context(
                LocalCluster(
                    n_workers=n,
                    threads_per_worker=threads,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                    **({"resources": dict(resources)} if resources else {}),
                )
            )
            client = Client(made)
            logger.info("started a LocalCluster of %d worker(s) x %d thread(s)", n, threads)
        else:
            from drmime_batch.engine._clusters import make_cluster

            made = stack.enter_context(
                make_cluster(cluster, config_path=config, min_jobs=min_jobs, max_jobs=max_jobs,
                             log_directory=log_directory)
            )
            client = Client(made)
            logger.info("started a %s cluster (%d-%d jobs)", cluster, min_jobs, max_jobs)
        stack.callback(client.close)
        yield client
