"""Clusters on HPC queues (SLURM, PBS, LSF) and Kubernetes, through the existing Dask projects.

Nothing here launches anything by hand: SLURM/PBS/LSF jobs are made and submitted by
`dask-jobqueue <https://jobqueue.dask.org>`_ (extra ``hpc``), Kubernetes clusters by the
`dask-kubernetes <https://kubernetes.dask.org>`_ operator's ``KubeCluster`` (extra ``k8s``). This
module only turns one YAML file into the arguments those projects expect and adds what a GPU
registration batch needs.

The cluster configuration file
------------------------------
One YAML file, written in the Dask projects' own configuration schemas so that what an HPC centre
documents for dask-jobqueue can be pasted unchanged::

    jobqueue:                # dask-jobqueue's schema (jobqueue.yaml), one section per scheduler
      slurm:
        cores: 8
        memory: 64GB
        walltime: "04:00:00"
        queue: gpu
        job-extra-directives: ["--constraint=a100"]
    kubernetes:              # dask-kubernetes' schema (name, namespace, image, env, ...)
      image: registry.example.org/lab/drmime-batch:0.1.0
    distributed:             # distributed's schema, e.g. TLS
      comm:
        require-encryption: true
        tls:
          ca-file: certs/ca.pem
          client: {cert: certs/client.pem, key: certs/client-key.pem}
          scheduler: {cert: certs/scheduler.pem, key: certs/scheduler-key.pem}
          worker: {cert: certs/worker.pem, key: certs/worker-key.pem}
    drmime-batch:            # our own settings
      gpus-per-job: 1        # GPUs asked per job; one worker process per GPU
      prologue: ["module load cuda/12.4", "source $HOME/venvs/drmime/bin/activate"]
      worker-resources: {GPU: 1}

Relative file paths (TLS certificates, ``kubernetes.custom-cluster-spec``) are resolved against
the directory of the YAML file. Keys may be written with ``-`` or ``_``, as in Dask's own config.

What is added for GPUs
    * the GPU request in the scheduler's own terms: SLURM ``#SBATCH --gres=gpu:N``, PBS
      ``ngpus=N`` in the ``select`` resource spec, LSF ``#BSUB -gpu "num=N"``; Kubernetes
      ``nvidia.com/gpu: N`` limits on workers only;
    * one worker process per GPU (``processes = N``), each advertising ``--resources GPU=1`` so
      that the engine's ``resources={"GPU": 1}`` tasks run one per GPU;
    * with ``N > 1``, each worker process of a job is pinned to its own GPU by the preload
      :func:`dask_setup` of this module (``--preload drmime_batch.engine._hpc``);
    * the prologue lines (``module load ...``, environment activation) through dask-jobqueue's
      ``job_script_prologue``.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import dask
import dask.config
import yaml

from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed import Security
    from distributed.deploy import Cluster

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

logger = logging.getLogger(__name__)

ClusterKind = Literal["slurm", "pbs", "lsf", "kubernetes"]
JOBQUEUE_KINDS: tuple[str, ...] = ("slurm", "pbs", "lsf")
CLUSTER_KINDS: tuple[str, ...] = (*JOBQUEUE_KINDS, "kubernetes")

_SECTIONS = ("jobqueue", "distributed", "kubernetes", "drmime-batch")
_OUR_KEYS = ("gpus-per-job", "prologue", "worker-resources", "kubernetes")
_K8S_KEYS = ("worker-resources", "scheduler-resources", "volume-claim", "mount-path", "nthreads")
_TLS_FILE_KEYS = (
    ("ca-file",),
    ("client", "cert"),
    ("client", "key"),
    ("scheduler", "cert"),
    ("scheduler", "key"),
    ("worker", "cert"),
    ("worker", "key"),
)
_PLACEHOLDER_HOST = "<scheduler-address>:8786"
_DEFAULT_IMAGE = "drmime-batch:latest"
_DEFAULT_K8S_NAME = "drmime-batch"
_HPC_EXTRA = "pip install 'drmime-batch[hpc]'"
_K8S_EXTRA = "pip install 'drmime-batch[k8s]'"


@dataclass(frozen=True)
class HpcSettings:
    """Our own settings, read from the ``drmime-batch:`` key of a cluster configuration file.

    Parameters
    ----------
    gpus_per_job : int
        GPUs requested per batch job (per pod on Kubernetes); ``0`` for CPU-only jobs. One Dask
        worker process is started per GPU.
    prologue : tuple of str
        Shell lines run before the worker starts (``module load ...``, ``conda activate ...``).
    worker_resources : tuple of (str, float)
        Abstract resources each worker *process* advertises (``--resources GPU=1``). Defaults to
        ``(("GPU", 1.0),)`` when ``gpus_per_job > 0`` and to nothing otherwise.
    kubernetes : dict
        Kubernetes-only settings: ``worker-resources`` / ``scheduler-resources`` (pod
        ``requests``/``limits``), ``volume-claim`` and ``mount-path`` of the shared volume,
        ``nthreads`` per worker.

    Examples
    --------
    >>> s = HpcSettings(gpus_per_job=2)
    >>> s.resources_arg
    'GPU=1'
    >>> HpcSettings(gpus_per_job=0).resources_arg is None
    True
    """

    gpus_per_job: int = 1
    prologue: tuple[str, ...] = ()
    worker_resources: tuple[tuple[str, float], ...] | None = None
    kubernetes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def resources(self) -> tuple[tuple[str, float], ...]:
        """The resources of one worker process, defaults applied."""
        if self.worker_resources is not None:
            return self.worker_resources
        return (("GPU", 1.0),) if self.gpus_per_job > 0 else ()

    @property
    def resources_arg(self) -> str | None:
        """The value of ``dask worker --resources`` (``"GPU=1"``), or None when there is none."""
        if not self.resources:
            return None
        return " ".join(f"{name}={_fmt_number(value)}" for name, value in self.resources)


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _canon(mapping: Any) -> Any:
    """Return a copy of ``mapping`` whose *own* keys use ``-`` instead of ``_``.

    Only one level: values such as environment variables (``OMP_NUM_THREADS``) or
    ``scheduler-options`` keyword arguments keep their spelling.
    """
    if isinstance(mapping, Mapping):
        return {str(k).replace("_", "-"): copy.deepcopy(v) for k, v in mapping.items()}
    return mapping


def _canon_paths(config: dict[str, Any], *paths: tuple[str, ...]) -> None:
    """Canonicalise the keys of the mappings found at ``paths`` (in place, parents first)."""
    for path in paths:
        holder: Any = config
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, Mapping) else None
        if isinstance(holder, dict) and isinstance(holder.get(path[-1]), Mapping):
            holder[path[-1]] = _canon(holder[path[-1]])


def _resolve(value: Any, base: Path) -> Any:
    if not isinstance(value, str) or not value or "\n" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def load_cluster_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a cluster configuration YAML file.

    Parameters
    ----------
    path : path-like
        YAML file with any of the sections ``jobqueue`` (dask-jobqueue's schema),
        ``kubernetes`` (dask-kubernetes' schema), ``distributed`` (e.g. ``comm: tls: ...``) and
        ``drmime-batch`` (ours, see :class:`HpcSettings`).

    Returns
    -------
    dict
        The configuration with keys canonicalised (``_`` -> ``-``) and relative certificate /
        spec paths made absolute against the file's directory. The file is only read.

    Raises
    ------
    ClusterConfigError
        The file is missing or not YAML, a section is unknown or not a mapping, or one of our
        settings has the wrong type.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "c.yaml").write_text("jobqueue: {slurm: {cores: 4, memory: 8GB}}\\n")
    >>> load_cluster_config(d / "c.yaml")["jobqueue"]["slurm"]["cores"]
    4
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ClusterConfigError(f"cluster config file not found: {file}")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ClusterConfigError(f"cluster config {file} is not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ClusterConfigError(
            f"cluster config {file} must be a YAML mapping with sections {list(_SECTIONS)}, "
            f"got a {type(raw).__name__}"
        )
    config = _canon(raw)
    unknown = sorted(set(config) - set(_SECTIONS))
    if unknown:
        raise ClusterConfigError(
            f"cluster config {file}: unknown top-level section(s) {unknown}; "
            f"expected some of {list(_SECTIONS)}"
        )
    for section, value in config.items():
        if value is None:
            config[section] = {}
        elif not isinstance(value, Mapping):
            raise ClusterConfigError(
                f"cluster config {file}: section {section!r} must be a mapping, "
                f"got {type(value).__name__}"
            )
    _canon_paths(
        config,
        ("drmime-batch",),
        ("drmime-batch", "kubernetes"),
        ("kubernetes",),
        ("distributed",),
        ("distributed", "comm"),
        ("distributed", "comm", "tls"),
        ("distributed", "comm", "tls", "client"),
        ("distributed", "comm", "tls", "scheduler"),
        ("distributed", "comm", "tls", "worker"),
    )
    for kind in list(config.get("jobqueue") or {}):
        _canon_paths(config, ("jobqueue", kind))
    for kind, value in config.get("jobqueue", {}).items():
        if not isinstance(value, Mapping):
            raise ClusterConfigError(
                f"cluster config {file}: jobqueue.{kind} must be a mapping, got {value!r}"
            )
    base = file.parent.resolve()
    tls = config.get("distributed", {}).get("comm", {}).get("tls")
    if isinstance(tls, Mapping):
        for keys in _TLS_FILE_KEYS:
            holder: Any = tls
            for key in keys[:-1]:
                holder = holder.get(key) if isinstance(holder, Mapping) else None
            if isinstance(holder, Mapping) and keys[-1] in holder:
                holder[keys[-1]] = _resolve(holder[keys[-1]], base)
    k8s = config.get("kubernetes", {})
    if isinstance(k8s.get("custom-cluster-spec"), str):
        k8s["custom-cluster-spec"] = _resolve(k8s["custom-cluster-spec"], base)
    hpc_settings(config, source=str(file))  # validate our own section now
    return config


def hpc_settings(config: Mapping[str, Any], *, source: str = "cluster config") -> HpcSettings:
    """Build :class:`HpcSettings` from the ``drmime-batch`` section of a loaded config.

    Parameters
    ----------
    config : mapping
        As returned by :func:`load_cluster_config`.
    source : str
        Name used in error messages (the file).

    Returns
    -------
    HpcSettings

    Raises
    ------
    ClusterConfigError
        An unknown key or a value of the wrong type.

    Examples
    --------
    >>> hpc_settings({"drmime-batch": {"gpus-per-job": 2, "prologue": "module load cuda"}})
    HpcSettings(gpus_per_job=2, prologue=('module load cuda',), worker_resources=None, kubernetes={})
    """
    ours = _canon(config.get("drmime-batch") or {})
    unknown = sorted(set(ours) - set(_OUR_KEYS))
    if unknown:
        raise ClusterConfigError(
            f"{source}: unknown key(s) {unknown} under 'drmime-batch'; expected some of "
            f"{list(_OUR_KEYS)}"
        )
    gpus = ours.get("gpus-per-job", 1)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise ClusterConfigError(
            f"{source}: drmime-batch.gpus-per-job must be an integer >= 0, got {gpus!r}"
        )
    prologue = ours.get("prologue", [])
    if isinstance(prologue, str):
        prologue = [prologue]
    if not isinstance(prologue, list) or not all(isinstance(p, str) for p in prologue):
        raise ClusterConfigError(
            f"{source}: drmime-batch.prologue must be a list of shell lines, got {prologue!r}"
        )
    resources = ours.get("worker-resources")
    res_pairs: tuple[tuple[str, float], ...] | None = None
    if resources is not None:
        if not isinstance(resources, Mapping):
            raise ClusterConfigError(
                f"{source}: drmime-batch.worker-resources must be a mapping like "
                f"{{GPU: 1}}, got {resources!r}"
            )
        pairs = []
        for name, value in resources.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ClusterConfigError(
                    f"{source}: drmime-batch.worker-resources.{name} must be a positive number, "
                    f"got {value!r}"
                )
            # resource names are case-sensitive and keep their spelling (GPU, not G-P-U)
            pairs.append((str(name), float(value)))
        res_pairs = tuple(pairs)
    k8s = ours.get("kubernetes") or {}
    if not isinstance(k8s, Mapping) or sorted(set(k8s) - set(_K8S_KEYS)):
        raise ClusterConfigError(
            f"{source}: drmime-batch.kubernetes must be a mapping with keys among "
            f"{list(_K8S_KEYS)}, got {k8s!r}"
        )
    return HpcSettings(
        gpus_per_job=gpus,
        prologue=tuple(prologue),
        worker_resources=res_pairs,
        kubernetes=dict(k8s),
    )


def _dask_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted leaf keys of the Dask sections, so ``dask.config.set`` merges instead of replacing.

    >>> _dask_sections({"jobqueue": {"slurm": {"cores": 4}}, "drmime-batch": {"gpus-per-job": 1}})
    {'jobqueue.slurm.cores': 4}
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, sub in value.items():
                walk(f"{prefix}.{key}", sub)
        else:
            flat[prefix] = copy.deepcopy(value)

    for section, value in config.items():
        if section != "drmime-batch":
            walk(section, value)
    return flat


def _load(config_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    return {} if config_path is None else load_cluster_config(config_path)


def _source(config_path: str | os.PathLike[str] | None) -> str:
    return "dask config (no --cluster-config)" if config_path is None else str(config_path)


def _check_kind(kind: str, allowed: tuple[str, ...]) -> str:
    if kind not in allowed:
        raise ClusterConfigError(f"cluster kind must be one of {list(allowed)}, got {kind!r}")
    return kind


def _security_from_current_config(source: str) -> Security | None:
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
    for keys in _TLS_FILE_KEYS:
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
    config = _load(config_path)
    if "distributed" not in config:
        return None
    with dask.config.set(_dask_sections({"distributed": config["distributed"]})):
        return _security_from_current_config(_source(config_path))


def _jobqueue_classes(kind: str) -> tuple[type, type]:
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ClusterConfigError(
            f"--cluster {kind} needs dask-jobqueue, which is not installed: {_HPC_EXTRA}"
        ) from exc
    name = {"slurm": "SLURM", "pbs": "PBS", "lsf": "LSF"}[kind]
    cluster_cls = getattr(dask_jobqueue, f"{name}Cluster")
    return cluster_cls, cluster_cls.job_cls


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _jobqueue_kwargs(kind: str, settings: HpcSettings, source: str) -> dict[str, Any]:
    """Job keyword arguments for dask-jobqueue, read from the *current* dask config."""
    cfg = dask.config.get(f"jobqueue.{kind}")
    cores, memory = cfg.get("cores"), cfg.get("memory")
    if cores is None or memory is None:
        missing = [k for k, v in (("cores", cores), ("memory", memory)) if v is None]
        raise ClusterConfigError(
            f"{source}: jobqueue.{kind}.{' and '.join(missing)} not set; dask-jobqueue needs the "
            f"cores and memory of one job (e.g. jobqueue: {{{kind}: {{cores: 8, memory: 64GB}}}})"
        )
    gpus = settings.gpus_per_job
    # Every job setting is passed explicitly: dask-jobqueue re-creates jobs long after
    # construction (scaling, adapting), when the YAML's dask.config.set is no longer in force.
    kwargs = _explicit_job_kwargs(kind, cfg)
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

    extra_args = _as_list(cfg.get("worker-extra-args"))
    resources_arg = settings.resources_arg
    if resources_arg is not None:
        if "--resources" in extra_args:
            raise ClusterConfigError(
                f"{source}: jobqueue.{kind}.worker-extra-args already has --resources; set "
                "drmime-batch.worker-resources instead"
            )
        extra_args += ["--resources", resources_arg]
    if gpus > 1:
        extra_args += ["--preload", __name__]
    kwargs["worker_extra_args"] = extra_args
    kwargs["job_script_prologue"] = [
        *_as_list(cfg.get("job-script-prologue")),
        *_as_list(cfg.get("env-extra")),
        *settings.prologue,
    ]

    directives = _as_list(cfg.get("job-extra-directives")) + _as_list(cfg.get("job-extra"))
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
    accepted = set(inspect.signature(job_cls.__init__).parameters) | set(
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


def job_script(kind: str, *, config_path: str | os.PathLike[str] | None) -> str:
    """The job script dask-jobqueue would submit for one batch job, without submitting it.

    For ``kind="kubernetes"`` the ``DaskCluster`` manifest (YAML) that would be created.

    Parameters
    ----------
    kind : {"slurm", "pbs", "lsf", "kubernetes"}
        The cluster kind.
    config_path : path-like or None
        Cluster configuration file (see :func:`load_cluster_config`).

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
    _check_kind(kind, CLUSTER_KINDS)
    config = _load(config_path)
    source = _source(config_path)
    if kind == "kubernetes":
        return yaml.safe_dump(kubernetes_cluster_spec(config), sort_keys=False)
    settings = hpc_settings(config, source=source)
    _, job_cls = _jobqueue_classes(kind)
    with dask.config.set(_dask_sections(config)):
        security = _security_from_current_config(source)
        kwargs = _jobqueue_kwargs(kind, settings, source)
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


def make_cluster(
    kind: str,
    *,
    config_path: str | os.PathLike[str] | None,
    min_jobs: int,
    max_jobs: int,
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
        Cluster configuration file (see :func:`load_cluster_config`).
    min_jobs, max_jobs : int
        Adaptive bounds, in batch jobs (SLURM/PBS/LSF) or worker pods (Kubernetes).

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
    _check_kind(kind, CLUSTER_KINDS)
    if min_jobs < 0 or max_jobs < max(min_jobs, 1):
        raise ClusterConfigError(
            f"need 0 <= min_jobs <= max_jobs and max_jobs >= 1, got min_jobs={min_jobs}, "
            f"max_jobs={max_jobs}"
        )
    config = _load(config_path)
    source = _source(config_path)
    if kind == "kubernetes":
        return _make_kube_cluster(config, min_jobs=min_jobs, max_jobs=max_jobs)
    settings = hpc_settings(config, source=source)
    cluster_cls, _ = _jobqueue_classes(kind)
    with dask.config.set(_dask_sections(config)):
        security = _security_from_current_config(source)
        kwargs = _jobqueue_kwargs(kind, settings, source)
        try:
            cluster = cluster_cls(security=security, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ClusterConfigError(f"{source}: dask-jobqueue rejected the {kind} settings: {exc}") from exc
    logger.info(
        "%s cluster started (scheduler %s); adapting between %d and %d jobs of %d GPU(s)",
        kind, cluster.scheduler_address, min_jobs, max_jobs, settings.gpus_per_job,
    )
    cluster.adapt(minimum_jobs=min_jobs, maximum_jobs=max_jobs)
    return cluster


def kubernetes_cluster_spec(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DaskCluster`` resource (dask-kubernetes operator) for a loaded configuration.

    The scheduler is CPU-only behind a ``ClusterIP`` service (reachable inside the cluster or by
    ``KubeCluster``'s port-forward, never from outside); workers ask ``nvidia.com/gpu`` in their
    limits and advertise ``--resources GPU=1``; the shared volume claim, when set, is mounted on
    workers at the same path as in the driver Job.

    Parameters
    ----------
    config : mapping
        As returned by :func:`load_cluster_config` (``kubernetes`` and ``drmime-batch``
        sections are used; an empty mapping gives the defaults).

    Returns
    -------
    dict
        A new ``kubernetes.dask.org/v1`` ``DaskCluster`` mapping; nothing is contacted.

    Examples
    --------
    >>> spec = kubernetes_cluster_spec({"drmime-batch": {"gpus-per-job": 1}})
    >>> spec["kind"], spec["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    ('DaskCluster', 1)
    """
    settings = hpc_settings(config)
    k8s = _canon(config.get("kubernetes") or {})
    ours = _canon(settings.kubernetes)
    name = str(k8s.get("name") or _DEFAULT_K8S_NAME)
    name = name.replace("{user}", "user").replace("{uuid}", "0")
    image = str(k8s.get("image") or _DEFAULT_IMAGE)
    service_type = str(k8s.get("scheduler-service-type") or "ClusterIP")
    if service_type != "ClusterIP":
        logger.warning(
            "kubernetes.scheduler-service-type is %s: the scheduler will be reachable beyond the "
            "cluster network; prefer ClusterIP (KubeCluster port-forwards it for you)",
            service_type,
        )
    env = k8s.get("env") or {}
    env_list = (
        [{"name": str(k), "value": str(v)} for k, v in env.items()]
        if isinstance(env, Mapping)
        else list(env)
    )
    worker_res = copy.deepcopy(ours.get("worker-resources") or {"limits": {"cpu": "4", "memory": "16Gi"}})
    worker_res.setdefault("limits", {})
    if settings.gpus_per_job > 0:
        worker_res["limits"]["nvidia.com/gpu"] = settings.gpus_per_job
    scheduler_res = copy.deepcopy(
        ours.get("scheduler-resources") or {"limits": {"cpu": "1", "memory": "2Gi"}}
    )
    for part in scheduler_res.values():
        if isinstance(part, dict):
            part.pop("nvidia.com/gpu", None)

    args = ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--dashboard",
            "--dashboard-address", "8788"]
    # the operator injects DASK_SCHEDULER_ADDRESS, which `dask worker` reads when given no address
    if settings.gpus_per_job > 1:
        args += ["--nworkers", str(settings.gpus_per_job), "--preload", __name__]
    if ours.get("nthreads"):
        args += ["--nthreads", str(int(ours["nthreads"]))]
    if settings.resources_arg:
        args += ["--resources", settings.resources_arg]
    worker_container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        # `command`, not `args`: the image's ENTRYPOINT is drmime-batch
        "command": args,
        "env": env_list,
        "resources": worker_res,
        "ports": [{"name": "http-dashboard", "containerPort": 8788, "protocol": "TCP"}],
    }
    pod: dict[str, Any] = {"containers": [worker_container]}
    claim = ours.get("volume-claim")
    if claim:
        mount = str(ours.get("mount-path") or "/data")
        worker_container["volumeMounts"] = [{"name": "shared", "mountPath": mount}]
        pod["volumes"] = [{"name": "shared", "persistentVolumeClaim": {"claimName": str(claim)}}]
    if settings.gpus_per_job > 0:
        pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    count = k8s.get("count") or {}
    replicas = int(count.get("start") or 0) if isinstance(count, Mapping) else 0
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": {"name": name},
        "spec": {
            "worker": {"replicas": replicas, "spec": pod},
            "scheduler": {
                "spec": {
                    "containers": [
                        {
                            "name": "scheduler",
                            "image": image,
                            "command": ["dask", "scheduler", "--host", "0.0.0.0"],
                            "env": copy.deepcopy(env_list),
                            "resources": scheduler_res,
                            "ports": [
                                {"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                                {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"},
                            ],
                            "readinessProbe": {
                                "httpGet": {"port": "http-dashboard", "path": "/health"},
                                "initialDelaySeconds": 0,
                                "periodSeconds": 1,
                                "timeoutSeconds": 300,
                            },
                        }
                    ]
                },
                "service": {
                    "type": service_type,
                    "selector": {
                        "dask.org/cluster-name": name,
                        "dask.org/component": "scheduler",
                    },
                    "ports": [
                        {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"},
                        {"name": "http-dashboard", "protocol": "TCP", "port": 8787,
                         "targetPort": "http-dashboard"},
                    ],
                },
            },
        },
    }


def _make_kube_cluster(config: Mapping[str, Any], *, min_jobs: int, max_jobs: int) -> Cluster:
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as exc:
        raise ClusterConfigError(
            f"--cluster kubernetes needs dask-kubernetes, which is not installed: {_K8S_EXTRA}"
        ) from exc
    k8s = config.get("kubernetes") or {}
    spec: Any = k8s.get("custom-cluster-spec") or kubernetes_cluster_spec(config)
    with dask.config.set(_dask_sections(config)):
        cluster = KubeCluster(custom_cluster_spec=spec, namespace=k8s.get("namespace"))
    logger.info("Kubernetes DaskCluster %s started; adapting between %d and %d workers",
                cluster.name, min_jobs, max_jobs)
    cluster.adapt(minimum=min_jobs, maximum=max_jobs)
    return cluster


def dask_setup(worker: Any) -> None:
    """Distributed preload: pin this worker process to one GPU of its job.

    Used (``--preload drmime_batch.engine._hpc``) only when a job holds several GPUs and starts
    one worker process per GPU (``dask worker --nworkers N`` names them ``<name>-0`` ...
    ``<name>-<N-1>``). The process keeps only its own entry of ``CUDA_VISIBLE_DEVICES`` (as set
    by SLURM/PBS/LSF; ``0 .. N-1`` when unset), before anything initialises CUDA.

    Parameters
    ----------
    worker : distributed.Worker
        The worker being started (only its ``name`` is read).

    Examples
    --------
    >>> import os, types
    >>> old = os.environ.get("CUDA_VISIBLE_DEVICES")
    >>> os.environ["CUDA_VISIBLE_DEVICES"] = "2,5"
    >>> dask_setup(types.SimpleNamespace(name="SLURMCluster-0-1"))
    >>> os.environ["CUDA_VISIBLE_DEVICES"]
    '5'
    >>> _ = os.environ.pop("CUDA_VISIBLE_DEVICES") if old is None else os.environ.update(CUDA_VISIBLE_DEVICES=old)
    """
    found = re.search(r"-(\d+)$", str(getattr(worker, "name", "")))
    if found is None:
        logger.warning("GPU pinning skipped: worker name %r has no '-<index>' suffix", worker.name)
        return
    index = int(found.group(1))
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    device = visible[index % len(visible)] if visible else str(index)
    os.environ["CUDA_VISIBLE_DEVICES"] = device.strip()
    logger.info("worker %s pinned to GPU %s", worker.name, device)
