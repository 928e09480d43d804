"""SLURM, PBS and LSF clusters through dask-jobqueue (extra ``hpc``).

The ``jobqueue.<kind>`` section of the cluster configuration file is dask-jobqueue's own schema;
this module adds what a GPU registration batch needs (the GPU request in the scheduler's terms,
one worker process per GPU advertising ``--resources GPU=1``, the prologue) and passes every job
setting to dask-jobqueue explicitly.

Jobs that never start or die at once
------------------------------------
dask-jobqueue waits forever for the worker of a job whose submission was refused, that pends for
good, or that died before its worker connected. :func:`make_jobqueue_cluster` therefore watches
its own jobs (:mod:`._jobwatch`): such a job stops the batch the way Ctrl-C does and the cluster,
once closed, raises a :class:`ClusterConfigError` naming the cause.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import signal
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dask
import dask.config

from drmime_batch.engine import _gpu_pinning
from drmime_batch.engine._cluster_config import (
    JOBQUEUE_KINDS,
    HpcSettings,
    as_list,
    check_kind,
    dask_sections,
    hpc_settings,
)
from drmime_batch.engine._jobwatch import (
    SLURM_ENDED,
    SLURM_NEVER_STARTS,
    _JobWatch,
    _watched_cluster_cls,
    _watched_job_cls,
)
from drmime_batch.engine._tls import security_from_config
from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed.deploy import Cluster

__all__ = ["GPU_PINNING_PRELOAD", "SLURM_ENDED", "SLURM_NEVER_STARTS", "jobqueue_job_script", "make_jobqueue_cluster"]

logger = logging.getLogger(__name__)

_PLACEHOLDER_HOST = "<scheduler-address>:8786"
_HPC_EXTRA = "pip install 'drmime-batch[hpc]'"
#: the preload that pins each worker process of a multi-GPU job to its own GPU
GPU_PINNING_PRELOAD = _gpu_pinning.__name__


def _import_dask_jobqueue() -> Any:
    """``import dask_jobqueue``, keeping this process's SIGINT handler.

    Importing it (its ``runner`` module) replaces the handler with ``sys.exit()``: Ctrl-C (or
    SIGINT) would then end ``drmime-batch run`` with status 0 in the middle of the batch instead
    of stopping it cleanly.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        import dask_jobqueue
    finally:
        if in_main and previous is not None and signal.getsignal(signal.SIGINT) is not previous:
            signal.signal(signal.SIGINT, previous)
    return dask_jobqueue


def _jobqueue_classes(kind: str) -> tuple[type, type]:
    try:
        dask_jobqueue = _import_dask_jobqueue()
    except ImportError as exc:
        raise ClusterConfigError(
            f"a {kind} cluster needs dask-jobqueue, which is not installed: {_HPC_EXTRA}"
        ) from exc
    name = {"slurm": "SLURM", "pbs": "PBS", "lsf": "LSF"}[kind]
    cluster_cls = getattr(dask_jobqueue, f"{name}Cluster")
    return cluster_cls, cluster_cls.job_cls


def _jobqueue_section(kind: str, config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``jobqueue.<kind>``: the file's settings over Dask's own (dask-jobqueue's defaults included).

    Read, never set: the process-wide dask config is left as it is. Keys of the file that
    dask-jobqueue does not know are refused (:class:`ClusterConfigError`).
    """
    _jobqueue_classes(kind)  # importing dask_jobqueue registers its defaults in dask's config
    ours = (config.get("jobqueue") or {}).get(kind) or {}
    defaults = dask.config.get(f"jobqueue.{kind}", default={}) or {}
    _check_keys(kind, ours, set(defaults), source)
    return dask.config.merge(defaults, ours)


def _check_keys(kind: str, ours: Mapping[str, Any], defaults: set[str], source: str) -> None:
    """Refuse keys of the file's ``jobqueue.<kind>`` that dask-jobqueue does not know.

    dask-jobqueue would ignore them silently: a misspelt ``walltme`` would give every job the
    default walltime.
    """
    import difflib
    import inspect

    from dask_jobqueue.core import Job

    _, job_cls = _jobqueue_classes(kind)
    params = set(inspect.signature(job_cls.__init__).parameters) | set(inspect.signature(Job.__init__).parameters)  # type: ignore[misc]
    known = defaults | {p.replace("_", "-") for p in params} | _DEPRECATED_JOB_KEYS
    unknown = sorted(str(k) for k in ours if str(k).replace("_", "-") not in known)
    if unknown:
        close = [m for k in unknown for m in difflib.get_close_matches(k, sorted(known), n=1)]
        hint = (f"did you mean {', '.join(repr(m) for m in close)}?" if close
                else f"dask-jobqueue's {kind} settings are {sorted(defaults)}")
        raise ClusterConfigError(f"{source}: unknown key(s) {unknown} under jobqueue.{kind}; {hint}")


def _jobqueue_kwargs(kind: str, cfg: Mapping[str, Any], settings: HpcSettings, source: str) -> dict[str, Any]:
    """Job keyword arguments for dask-jobqueue from the merged ``jobqueue.<kind>`` settings."""
    cores, memory = cfg.get("cores"), cfg.get("memory")
    if cores is None or memory is None:
        missing = [k for k, v in (("cores", cores), ("memory", memory)) if v is None]
        raise ClusterConfigError(
            f"{source}: jobqueue.{kind}.{' and '.join(missing)} not set; dask-jobqueue needs the "
            f"cores and memory of one job (e.g. jobqueue: {{{kind}: {{cores: 8, memory: 64GB}}}})"
        )
    gpus = settings.gpus_per_job
    # Every job setting is passed explicitly: dask-jobqueue would otherwise read them from the
    # process-wide dask config, where the file's jobqueue settings are never put.
    kwargs = _explicit_job_kwargs(kind, cfg)
    kwargs["interface"] = cfg.get("interface")
    processes = cfg.get("processes")
    if gpus > 0:
        if processes is not None and processes != gpus:
            raise ClusterConfigError(
                f"{source}: jobqueue.{kind}.processes is {processes} but drmime-batch.gpus-per-job "
                f"is {gpus}; one worker process per GPU is required (drop 'processes')"
            )
        if int(cores) < gpus:
            raise ClusterConfigError(
                f"{source}: jobqueue.{kind}.cores ({cores}) must be at least "
                f"drmime-batch.gpus-per-job ({gpus}), one core per worker process"
            )
        kwargs["processes"] = gpus

    extra_args = as_list(cfg.get("worker-extra-args"))
    resources_arg = settings.resources_arg
    if resources_arg is not None:
        if "--resources" in extra_args:
            raise ClusterConfigError(
                f"{source}: jobqueue.{kind}.worker-extra-args already has --resources; set "
                "drmime-batch.worker-resources instead"
            )
        extra_args += ["--resources", resources_arg]
    if gpus > 1:
        extra_args += ["--preload", GPU_PINNING_PRELOAD]
    kwargs["worker_extra_args"] = extra_args
    kwargs["job_script_prologue"] = [
        *as_list(cfg.get("job-script-prologue")),
        *as_list(cfg.get("env-extra")),
        *settings.prologue,
    ]

    directives = as_list(cfg.get("job-extra-directives")) + as_list(cfg.get("job-extra"))
    if kind == "slurm" and gpus > 0:
        if not any(re.search(r"--gres=\S*gpu|--gpus|^-G\b", d) for d in directives):
            directives.append(f"--gres=gpu:{gpus}")
    elif kind == "lsf" and gpus > 0:
        if not any(d.lstrip().startswith("-gpu") for d in directives):
            directives.append(f'-gpu "num={gpus}"')
    elif kind == "pbs":
        kwargs["resource_spec"] = _pbs_resource_spec(cfg, gpus, source)
    kwargs["job_extra_directives"] = directives
    return kwargs


_DEPRECATED_JOB_KEYS = frozenset({"extra", "env-extra", "job-extra", "header-skip"})


def _explicit_job_kwargs(kind: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The job class's keyword arguments present (non-null) in ``jobqueue.<kind>``."""
    import inspect

    from dask_jobqueue.core import Job

    _, job_cls = _jobqueue_classes(kind)
    accepted = set(inspect.signature(job_cls.__init__).parameters) | set(  # type: ignore[misc]
        inspect.signature(Job.__init__).parameters
    )
    accepted -= {"self", "scheduler", "name", "config_name", "security", "protocol", "interface"}
    kwargs: dict[str, Any] = {}
    for key, value in cfg.items():
        canon = str(key).replace("_", "-")
        if value is None or canon in _DEPRECATED_JOB_KEYS:
            continue
        param = "job_name" if canon == "name" else canon.replace("-", "_")
        if param in accepted:
            kwargs[param] = copy.deepcopy(value)
    return kwargs


def _pbs_resource_spec(cfg: Mapping[str, Any], gpus: int, source: str) -> str | None:
    from dask.utils import parse_bytes

    spec = cfg.get("resource-spec")
    if spec is None:
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        spec = f"select=1:ncpus={int(cfg['cores'])}:mem={pbs_format_bytes_ceil(parse_bytes(cfg['memory']))}"
        if gpus > 0:
            spec += f":ngpus={gpus}"
        return spec
    found = re.search(r"ngpus=(\d+)", spec)
    if gpus > 0 and found is None:
        return f"{spec}:ngpus={gpus}"
    if found is not None and int(found.group(1)) != gpus:
        raise ClusterConfigError(
            f"{source}: jobqueue.pbs.resource-spec asks ngpus={found.group(1)} but "
            f"drmime-batch.gpus-per-job is {gpus}"
        )
    return spec


def jobqueue_job_script(kind: str, config: Mapping[str, Any], *, source: str) -> str:
    """The job script dask-jobqueue would submit for one batch job of a loaded configuration.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf"}
        The batch scheduler.
    config : mapping
        As returned by :func:`~drmime_batch.engine._cluster_config.load_cluster_config`.
    source : str
        Name used in error messages (the file).

    Returns
    -------
    str
        The script, with the placeholder scheduler address ``<scheduler-address>``.

    Raises
    ------
    ClusterConfigError
        dask-jobqueue not installed, or an invalid configuration.
    """
    check_kind(kind, JOBQUEUE_KINDS)
    settings = hpc_settings(config, source=source)
    _, job_cls = _jobqueue_classes(kind)
    security = security_from_config(config, source)
    kwargs = _jobqueue_kwargs(kind, _jobqueue_section(kind, config, source), settings, source)
    protocol = "tls://" if security is not None else None
    try:
        job = job_cls(
            f"{protocol or 'tcp://'}{_PLACEHOLDER_HOST}",
            name="dummy-name",
            config_name=kind,
            protocol=protocol,
            security=security,
            **kwargs,
        )
    except (TypeError, ValueError) as exc:
        raise ClusterConfigError(f"{source}: dask-jobqueue rejected the {kind} settings: {exc}") from exc
    return str(job.job_script())


def make_jobqueue_cluster(
    kind: str,
    config: Mapping[str, Any],
    *,
    source: str,
    min_jobs: int,
    max_jobs: int,
    log_directory: str | os.PathLike[str] | None = None,
) -> Cluster:
    """Start an adaptive dask-jobqueue cluster (scheduler in this process) for a loaded configuration.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf"}
        The batch scheduler.
    config : mapping
        As returned by :func:`~drmime_batch.engine._cluster_config.load_cluster_config`.
    source : str
        Name used in error messages (the file).
    min_jobs, max_jobs : int
        Adaptive bounds, in batch jobs.
    log_directory : path-like, optional
        The folder of the jobs' error and output files when ``jobqueue.<kind>.log-directory`` is
        not set (it must be readable from the compute nodes and here); the watch quotes the error
        file of a job that died.

    Returns
    -------
    dask_jobqueue.JobQueueCluster
        Adapting between ``min_jobs`` and ``max_jobs`` jobs; the caller closes it by leaving its
        context (``with``). Its jobs are watched: when a submission is refused, a job can never
        start (SLURM: a reason of :data:`SLURM_NEVER_STARTS`; PBS Pro: "Can Never Run") or a job
        ends before any of its workers connected (polling ``squeue``, ``qstat`` or ``bjobs``), the
        main thread is interrupted as by Ctrl-C and leaving the context raises a
        :class:`ClusterConfigError` naming the cause.

    Raises
    ------
    ClusterConfigError
        dask-jobqueue not installed, or an invalid configuration; on leaving the context, the
        reason the jobs cannot start.
    """
    check_kind(kind, JOBQUEUE_KINDS)
    settings = hpc_settings(config, source=source)
    cluster_cls, job_cls = _jobqueue_classes(kind)
    security = security_from_config(config, source)
    cfg = _jobqueue_section(kind, config, source)
    kwargs = _jobqueue_kwargs(kind, cfg, settings, source)
    if log_directory is not None and kwargs.get("log_directory") is None:
        # the schedulers' defaults: SLURM slurm-<id>.out, PBS <name>.e<id> in the cwd; LSF mails them
        kwargs["log_directory"] = os.fspath(log_directory)
    # cluster-level settings dask-jobqueue would otherwise read from the dask config
    kwargs["scheduler_options"] = dict(cfg.get("scheduler-options") or {})
    kwargs["shared_temp_directory"] = cfg.get("shared-temp-directory")
    # The in-process scheduler reads the file's other distributed.* settings (timeouts,
    # allowed-failures, ...) from the dask config while it starts and takes no argument for
    # them: they are in force for the construction only.
    distributed = config.get("distributed")
    with dask.config.set(dask_sections({"distributed": distributed}) if distributed else {}):
        watch = _JobWatch(source)
        try:
            cluster = _watched_cluster_cls(cluster_cls)(
                security=security, job_cls=_watched_job_cls(job_cls, watch), **kwargs
            )
        except (TypeError, ValueError) as exc:
            raise ClusterConfigError(f"{source}: dask-jobqueue rejected the {kind} settings: {exc}") from exc
    cluster._drmime_watch = watch
    watch.poll(cluster, kind)
    logger.info(
        "%s cluster started (scheduler %s); adapting between %d and %d jobs of %d GPU(s)",
        kind, cluster.scheduler_address, min_jobs, max_jobs, settings.gpus_per_job,
    )
    cluster.adapt(minimum_jobs=min_jobs, maximum_jobs=max_jobs)
    return cluster
