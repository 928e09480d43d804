"""Kubernetes clusters through the dask-kubernetes operator (extra ``k8s``).

The ``kubernetes`` section of the cluster configuration file is dask-kubernetes' own schema; our
``drmime-batch.kubernetes`` settings add GPU workers, their resources and the shared volume.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Mapping

import dask
import dask.config

from drmime_batch.engine import _gpu_pinning
from drmime_batch.engine._cluster_config import HpcSettings, canon_keys, dask_sections, hpc_settings
from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed.deploy import Cluster

__all__ = ["kubernetes_cluster_spec", "make_kube_cluster"]

logger = logging.getLogger(__name__)

_DEFAULT_IMAGE = "drmime-batch:latest"
_DEFAULT_K8S_NAME = "drmime-batch"
_K8S_EXTRA = "pip install 'drmime-batch[k8s]'"
#: keys of the ``kubernetes`` section that are KubeCluster arguments besides the cluster spec
_KUBECLUSTER_KEYS = (
    "namespace",
    "port-forward-cluster-ip",
    "create-mode",
    "shutdown-on-close",
    "resource-timeout",
    "scheduler-forward-port",
)


def kubernetes_cluster_spec(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DaskCluster`` resource (dask-kubernetes operator) for a loaded configuration.

    Built by the operator's own :func:`dask_kubernetes.operator.make_cluster_spec`, so that its
    defaults (the scheduler's readiness and liveness probes, ports, service, ``idleTimeout``)
    are kept, then patched for a GPU registration batch: the scheduler is CPU-only behind a
    ``ClusterIP`` service (reachable inside the cluster or by ``KubeCluster``'s port-forward,
    never from outside); workers ask ``nvidia.com/gpu`` in their limits, tolerate GPU-node taints
    and advertise ``--resources GPU=1``; the shared volume claim, when set, is mounted on workers
    at the same path as in the driver Job.

    Parameters
    ----------
    config : mapping
        As returned by :func:`~drmime_batch.engine._cluster_config.load_cluster_config`
        (``kubernetes`` and ``drmime-batch`` sections are used; an empty mapping gives the
        defaults).

    Returns
    -------
    dict
        A new ``kubernetes.dask.org/v1`` ``DaskCluster`` mapping; nothing is contacted.

    Raises
    ------
    ClusterConfigError
        dask-kubernetes (extra ``k8s``) is not installed, or our settings are invalid.

    Examples
    --------
    >>> spec = kubernetes_cluster_spec({"drmime-batch": {"gpus-per-job": 1}})  # doctest: +SKIP
    >>> spec["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]  # doctest: +SKIP
    1
    """
    make_cluster_spec = _operator_cluster_builder()
    settings = hpc_settings(config)
    k8s = canon_keys(config.get("kubernetes") or {})
    ours = canon_keys(settings.kubernetes)
    name = str(k8s.get("name") or _DEFAULT_K8S_NAME)
    name = name.replace("{user}", "user").replace("{uuid}", "0")
    service_type = str(k8s.get("scheduler-service-type") or "ClusterIP")
    if service_type != "ClusterIP":
        logger.warning(
            "kubernetes.scheduler-service-type is %s: the scheduler will be reachable beyond the "
            "cluster network; prefer ClusterIP (KubeCluster port-forwards it for you)",
            service_type,
        )
    env = k8s.get("env") or {}
    if isinstance(env, Mapping):  # Kubernetes wants string values; YAML may give numbers
        env = {str(key): str(value) for key, value in env.items()}
    count = k8s.get("count") or {}
    replicas = int(count.get("start") or 0) if isinstance(count, Mapping) else 0

    spec: dict[str, Any] = make_cluster_spec(
        name=name,
        image=str(k8s.get("image") or _DEFAULT_IMAGE),
        n_workers=replicas,
        env=copy.deepcopy(env),
        worker_command=_worker_command(settings, ours),
        scheduler_service_type=service_type,
    )
    scheduler_res = copy.deepcopy(
        ours.get("scheduler-resources") or {"limits": {"cpu": "1", "memory": "2Gi"}}
    )
    for part in scheduler_res.values():
        if isinstance(part, dict):
            part.pop("nvidia.com/gpu", None)
    (scheduler,) = spec["spec"]["scheduler"]["spec"]["containers"]
    _run_args_as_command(scheduler)
    scheduler["resources"] = scheduler_res
    # the builders share a list-form env between both containers; YAML would print an alias
    scheduler["env"] = copy.deepcopy(scheduler["env"])

    worker_pod = spec["spec"]["worker"]["spec"]
    (worker,) = worker_pod["containers"]
    _run_args_as_command(worker)
    worker_res = copy.deepcopy(
        ours.get("worker-resources") or {"limits": {"cpu": "4", "memory": "16Gi"}}
    )
    worker_res.setdefault("limits", {})
    if settings.gpus_per_job > 0:
        worker_res["limits"]["nvidia.com/gpu"] = settings.gpus_per_job
        worker_pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    worker["resources"] = worker_res
    claim = ours.get("volume-claim")
    if claim:
        mount = str(ours.get("mount-path") or "/data")
        worker["volumeMounts"] = [{"name": "shared", "mountPath": mount}]
        worker_pod["volumes"] = [{"name": "shared", "persistentVolumeClaim": {"claimName": str(claim)}}]
    return spec


def _operator_cluster_builder() -> Any:
    """dask-kubernetes' ``make_cluster_spec``, or a :class:`ClusterConfigError` naming the extra."""
    try:
        from dask_kubernetes.operator import make_cluster_spec
    except ImportError as exc:
        raise ClusterConfigError(
            f"Kubernetes clusters need dask-kubernetes, which is not installed: {_K8S_EXTRA}"
        ) from exc
    return make_cluster_spec


def _worker_command(settings: HpcSettings, ours: Mapping[str, Any]) -> list[str]:
    """``dask worker`` and our options; the operator's builder appends ``--name`` and the dashboard."""
    # no scheduler address: the operator injects DASK_SCHEDULER_ADDRESS, which `dask worker` reads
    command = ["dask", "worker"]
    if settings.gpus_per_job > 1:
        command += ["--nworkers", str(settings.gpus_per_job), "--preload", _gpu_pinning.__name__]
    if ours.get("nthreads"):
        command += ["--nthreads", str(int(ours["nthreads"]))]
    if settings.resources_arg:
        command += ["--resources", settings.resources_arg]
    return command


def _run_args_as_command(container: dict[str, Any]) -> None:
    """Move a builder container's ``args`` to ``command``, spelling the ``dask`` CLI the current way.

    ``command``, not ``args``: our image's ENTRYPOINT is ``drmime-batch``, which would receive the
    arguments. ``dask-scheduler`` / ``dask-worker`` (the builders' spelling) are no longer shipped
    by distributed; ``dask scheduler`` / ``dask worker`` are.
    """
    args = [str(a) for a in container.pop("args")]
    if args and args[0] in ("dask-scheduler", "dask-worker"):
        args = ["dask", args[0].removeprefix("dask-"), *args[1:]]
    container["command"] = args


def make_kube_cluster(config: Mapping[str, Any], *, min_jobs: int, max_jobs: int) -> Cluster:
    """Create a ``DaskCluster`` through dask-kubernetes' ``KubeCluster`` and let it adapt.

    Parameters
    ----------
    config : mapping
        As returned by :func:`~drmime_batch.engine._cluster_config.load_cluster_config`; its
        ``kubernetes.custom-cluster-spec``, when set, replaces :func:`kubernetes_cluster_spec`.
    min_jobs, max_jobs : int
        Adaptive bounds, in worker pods.

    Returns
    -------
    dask_kubernetes.operator.KubeCluster
        The caller closes it.

    Raises
    ------
    ClusterConfigError
        dask-kubernetes (extra ``k8s``) is not installed.
    """
    try:
        from dask_kubernetes.operator import KubeCluster
        from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode
    except ImportError as exc:
        raise ClusterConfigError(
            f"a kubernetes cluster needs dask-kubernetes, which is not installed: {_K8S_EXTRA}"
        ) from exc
    k8s = config.get("kubernetes") or {}
    spec: Any = k8s.get("custom-cluster-spec") or kubernetes_cluster_spec(config)
    # KubeCluster's own settings from the file, as arguments (it would read them from the
    # process-wide dask config); name, image, env, ... are in the spec already
    kwargs = {
        key.replace("-", "_"): k8s[key] for key in _KUBECLUSTER_KEYS if k8s.get(key) is not None
    }
    if "create_mode" in kwargs:  # KubeCluster compares with its enum, never with the string
        try:
            kwargs["create_mode"] = CreateMode(str(kwargs["create_mode"]))
        except ValueError:
            raise ClusterConfigError(
                f"kubernetes.create-mode must be one of {[m.value for m in CreateMode]}, "
                f"got {kwargs['create_mode']!r}"
            ) from None
    # the connections KubeCluster opens while it starts read the file's distributed.* (TLS,
    # timeouts) from the dask config and take no argument for them
    distributed = config.get("distributed")
    with dask.config.set(dask_sections({"distributed": distributed}) if distributed else {}):
        cluster = KubeCluster(custom_cluster_spec=spec, **kwargs)
    logger.info("Kubernetes DaskCluster %s started; adapting between %d and %d workers",
                cluster.name, min_jobs, max_jobs)
    cluster.adapt(minimum=min_jobs, maximum=max_jobs)
    return cluster
