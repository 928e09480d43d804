"""The cluster configuration file: loading, checking and our own ``drmime-batch:`` settings.

Nothing here launches anything: :mod:`._jobqueue` (SLURM/PBS/LSF, through dask-jobqueue) and
:mod:`._kubernetes` (through the dask-kubernetes operator) turn the loaded file into the arguments
those projects expect, :mod:`._tls` into a :class:`distributed.Security`.

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
      :func:`~drmime_batch.engine._gpu_pinning.dask_setup`
      (``--preload drmime_batch.engine._gpu_pinning``);
    * the prologue lines (``module load ...``, environment activation) through dask-jobqueue's
      ``job_script_prologue``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from drmime_batch.errors import ClusterConfigError

__all__ = [
    "CLUSTER_KINDS",
    "JOBQUEUE_KINDS",
    "TLS_FILE_KEYS",
    "ClusterKind",
    "HpcSettings",
    "as_list",
    "canon_keys",
    "check_kind",
    "config_or_empty",
    "dask_sections",
    "hpc_settings",
    "load_cluster_config",
    "source_name",
]

ClusterKind = Literal["slurm", "pbs", "lsf", "kubernetes"]
JOBQUEUE_KINDS: tuple[str, ...] = ("slurm", "pbs", "lsf")
CLUSTER_KINDS: tuple[str, ...] = (*JOBQUEUE_KINDS, "kubernetes")

_SECTIONS = ("jobqueue", "distributed", "kubernetes", "drmime-batch")
_OUR_KEYS = ("gpus-per-job", "prologue", "worker-resources", "kubernetes")
_K8S_KEYS = ("worker-resources", "scheduler-resources", "volume-claim", "mount-path", "nthreads")
#: keys under ``distributed.comm.tls`` that name files (resolved against the YAML's directory)
TLS_FILE_KEYS: tuple[tuple[str, ...], ...] = (
    ("ca-file",),
    ("client", "cert"),
    ("client", "key"),
    ("scheduler", "cert"),
    ("scheduler", "key"),
    ("worker", "cert"),
    ("worker", "key"),
)


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


def canon_keys(mapping: Any) -> Any:
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
            holder[path[-1]] = canon_keys(holder[path[-1]])


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
    config = canon_keys(raw)
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
        for keys in TLS_FILE_KEYS:
            holder: Any = tls
            for key in keys[:-1]:
                holder = holder.get(key) if isinstance(holder, Mapping) else None
            if isinstance(holder, dict) and keys[-1] in holder:  # YAML mappings load as dicts
                holder[keys[-1]] = _resolve(holder[keys[-1]], base)
    k8s: Any = config.get("kubernetes", {})
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
    ours = canon_keys(config.get("drmime-batch") or {})
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


def dask_sections(config: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted leaf keys of the Dask sections, so ``dask.config.set`` merges instead of replacing.

    >>> dask_sections({"jobqueue": {"slurm": {"cores": 4}}, "drmime-batch": {"gpus-per-job": 1}})
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


def config_or_empty(config_path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The loaded file, or ``{}`` (Dask's own configuration only) when there is none."""
    return {} if config_path is None else load_cluster_config(config_path)


def source_name(config_path: str | os.PathLike[str] | None) -> str:
    """What error messages call the configuration."""
    return "the dask configuration (no cluster config file given)" if config_path is None else str(config_path)


def check_kind(kind: str, allowed: tuple[str, ...]) -> str:
    """``kind`` itself, or a :class:`ClusterConfigError` naming the allowed kinds."""
    if kind not in allowed:
        raise ClusterConfigError(f"cluster kind must be one of {list(allowed)}, got {kind!r}")
    return kind


def as_list(value: Any) -> list[str]:
    """A YAML value that may be one string or a list of them, as a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]
