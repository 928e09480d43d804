"""SLURM, PBS and LSF clusters through dask-jobqueue (extra ``hpc``).

The ``jobqueue.<kind>`` section of the cluster configuration file is dask-jobqueue's own schema;
this module adds what a GPU registration batch needs (the GPU request in the scheduler's terms,
one worker process per GPU advertising ``--resources GPU=1``, the prologue) and passes every job
setting to dask-jobqueue explicitly.

Jobs that can never start
-------------------------
dask-jobqueue submits a job and waits for its worker; when the submission is refused (``sbatch``:
"Invalid partition name specified") it logs the error once and waits forever, and a job that the
scheduler keeps pending for good (SLURM's ``PartitionTimeLimit``: the walltime is over the
partition's limit) is indistinguishable from one waiting its turn. :func:`make_jobqueue_cluster`
therefore watches its own jobs (:class:`_JobWatch`): a refused submission (any scheduler), or a
SLURM job pending for one of the reasons of :data:`SLURM_NEVER_STARTS`, stops the batch the way
Ctrl-C does and the cluster, once closed, raises a :class:`ClusterConfigError` naming the cause.
"""

from __future__ import annotations

import _thread
import copy
import logging
import re
import signal
import subprocess
import threading
import weakref
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
from drmime_batch.engine._tls import security_from_config
from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed.deploy import Cluster

__all__ = ["GPU_PINNING_PRELOAD", "SLURM_NEVER_STARTS", "jobqueue_job_script", "make_jobqueue_cluster"]

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



# ------------------------------------------------------------------------------ jobs that never start
#: SLURM's reasons (``squeue --format=%r``) for a pending job that can never start as it was
#: submitted, and what each one means for a worker job
SLURM_NEVER_STARTS: dict[str, str] = {
    "PartitionTimeLimit": "its walltime is over the partition's time limit",
    "PartitionNodeLimit": "it asks more nodes than the partition allows",
    "PartitionConfig": "it asks more than the partition's nodes have (cores, memory, GPUs)",
    "BadConstraints": "no node has the cores, memory, GPUs or features it asks",
    "InvalidAccount": "its account is not valid",
    "InvalidQOS": "its QOS is not valid",
    "QOSMaxWallDurationPerJobLimit": "its walltime is over the QOS's limit",
    "AssocMaxWallDurationPerJobLimit": "its walltime is over the account's limit",
    "QOSMaxCpuPerJobLimit": "it asks more cores than the QOS allows",
    "QOSMaxMemoryPerJob": "it asks more memory than the QOS allows",
    "QOSMaxGRESPerJob": "it asks more GPUs than the QOS allows",
    "QOSMaxNodePerJobLimit": "it asks more nodes than the QOS allows",
    "AssocMaxCpuPerJobLimit": "it asks more cores than the account allows",
}
#: seconds between two ``squeue`` calls of the watch
_WATCH_EVERY_S = 2.0
#: calls in a row a reason must be seen on (SLURM may give a first reason before it schedules)
_WATCH_CONFIRM = 2


class _JobWatch:
    """Finds, while a batch runs, that the cluster's jobs can never start (see the module docstring).

    Parameters
    ----------
    source : str
        The configuration's name, the start of the message.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def fail(self, reason: str) -> None:
        """Record why the jobs cannot start (the first reason wins) and stop the batch as Ctrl-C does."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = f"{self.source}: {reason}"
        logger.info("stopping the batch: %s", self.reason)  # raised, hence printed, later
        # The driver loop runs on the main thread and knows nothing of the cluster: interrupt it as
        # Ctrl-C would (the CLI's handler stops the batch cleanly, in-flight pairs back to pending);
        # leaving the cluster's context then raises the reason (_watched_cluster_cls).
        _thread.interrupt_main(signal.SIGINT)

    def raise_if_failed(self, cause: BaseException | None = None) -> None:
        """Raise the recorded reason as a :class:`ClusterConfigError`, if there is one."""
        if self.reason is not None:
            raise ClusterConfigError(self.reason) from cause

    def stop(self) -> None:
        """End the polling thread (idempotent)."""
        self._stop.set()

    def poll_slurm(self, cluster: Cluster) -> None:
        """Poll ``squeue`` for the cluster's pending jobs in a daemon thread until :meth:`stop`."""
        threading.Thread(target=self._poll_slurm, args=(weakref.ref(cluster),), daemon=True,
                         name="drmime-slurm-job-watch").start()

    def _poll_slurm(self, ref: weakref.ref[Any]) -> None:
        from distributed.core import Status

        seen: dict[str, int] = {}
        while not self._stop.wait(_WATCH_EVERY_S):
            cluster = ref()
            if cluster is None or cluster.status in (Status.closing, Status.closed):
                return
            try:  # the cluster's loop thread changes this dict: a snapshot, tried again next time
                ids = [str(job.job_id) for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]
            except RuntimeError:
                continue
            finally:
                del cluster
            pending = _slurm_pending_reasons(ids) if ids else {}
            seen = {job: seen.get(job, 0) + 1 for job, why in pending.items() if why in SLURM_NEVER_STARTS}
            for job, count in seen.items():
                if count >= _WATCH_CONFIRM:
                    why = pending[job]
                    self.fail(f"SLURM job {job} can never start: {why}, {SLURM_NEVER_STARTS[why]} "
                              "(see jobqueue.slurm)")
                    return


def _slurm_pending_reasons(job_ids: list[str]) -> dict[str, str]:
    """``{job id: reason}`` of those of ``job_ids`` that are pending; ``{}`` when squeue fails."""
    try:
        res = subprocess.run(
            ["squeue", "--noheader", "--states=PENDING", "--format=%i|%r", f"--jobs={','.join(job_ids)}"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if res.returncode != 0:  # e.g. every job already gone ("Invalid job id specified")
        return {}
    reasons = {}
    for line in res.stdout.splitlines():
        job, _, why = line.strip().partition("|")
        if job:
            reasons[job] = why
    return reasons


def _command_error(exc: BaseException) -> str:
    """What a failed submission command said, on one line.

    >>> _command_error(RuntimeError("Command exited with non-zero exit code.\\nExit code: 1\\n"
    ...     "Command:\\nsbatch x.sh\\nstdout:\\n\\nstderr:\\nsbatch: error: invalid partition specified: "
    ...     "nope\\nsbatch: error: Batch job submission failed: Invalid partition name specified\\n"))
    'invalid partition specified: nope; Batch job submission failed: Invalid partition name specified'
    """
    text = str(exc)
    _, found, err = text.partition("stderr:\n")
    lines = [re.sub(r"^\S+: error: ", "", line.strip()) for line in err.splitlines() if line.strip()]
    if found and lines:
        return "; ".join(dict.fromkeys(lines))
    code = re.search(r"Exit code: (-?\d+)", text)
    return f"exit code {code.group(1)}" if code else " ".join(text.split()) or type(exc).__name__


def _watched_job_cls(job_cls: type[Any], watch: _JobWatch) -> type[Any]:
    """``job_cls`` whose refused submission is reported to ``watch`` and leaves the job ``failed``.

    The error is not raised on to dask-jobqueue, which would log it and wait on regardless.
    """

    from distributed.core import Status

    async def start(self: Any) -> None:
        try:
            await job_cls.start(self)
        except Exception as exc:  # noqa: BLE001 - whatever stopped the submission is the reason
            command = str(self.submit_command).split()[0]
            watch.fail(f"{command} refused the worker job: {_command_error(exc)}")
            # not raised on: the cluster's loop would only log it with a traceback, and the batch
            # stops on the reason recorded instead. The cluster requires a started job to be
            # "running"; this one has no job id, so closing it cancels nothing.
            self.status = Status.running

    async def close(self: Any) -> None:
        await job_cls.close(self)
        if self.job_id is None:  # never submitted: closing the cluster checks that it is closed
            self.status = Status.closed

    return type(job_cls.__name__, (job_cls,), {"start": start, "close": close, "__module__": __name__})


def _watched_cluster_cls(cluster_cls: type[Any]) -> type[Any]:
    """``cluster_cls`` that, when its context is left, stops its watch and raises what it found."""

    def __exit__(self: Any, *exc_info: Any) -> None:
        watch: _JobWatch = self._drmime_watch
        watch.stop()
        try:
            cluster_cls.__exit__(self, *exc_info)
        except Exception as exc:
            watch.raise_if_failed(exc)
            raise
        watch.raise_if_failed(exc_info[1])

    return type(cluster_cls.__name__, (cluster_cls,), {"__exit__": __exit__, "__module__": __name__})



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
    kind: str, config: Mapping[str, Any], *, source: str, min_jobs: int, max_jobs: int
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

    Returns
    -------
    dask_jobqueue.JobQueueCluster
        Adapting between ``min_jobs`` and ``max_jobs`` jobs; the caller closes it by leaving its
        context (``with``). Its jobs are watched: when a submission is refused, or (SLURM) a job
        pends for a reason of :data:`SLURM_NEVER_STARTS`, the main thread is interrupted as by
        Ctrl-C and leaving the context raises a :class:`ClusterConfigError` naming the cause.

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
    if kind == "slurm":
        watch.poll_slurm(cluster)
    logger.info(
        "%s cluster started (scheduler %s); adapting between %d and %d jobs of %d GPU(s)",
        kind, cluster.scheduler_address, min_jobs, max_jobs, settings.gpus_per_job,
    )
    cluster.adapt(minimum_jobs=min_jobs, maximum_jobs=max_jobs)
    return cluster
