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
from drmime_batch.engine._cluster_config import canon_keys, dask_sections, hpc_settings
from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed.deploy import Cluster

__all__ = ["kubernetes_cluster_spec", "make_kube_cluster"]

logger = logging.getLogger(__name__)

_DEFAULT_IMAGE = "drmime-batch:latest"
_DEFAULT_K8S_NAME = "drmime-batch"
_K8S_EXTRA = "pip install 'drmime-batch[k8s]'"


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
    k8s = canon_keys(config.get("kubernetes") or {})
    ours = canon_keys(settings.kubernetes)
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
        args += ["--nworkers", str(settings.gpus_per_job), "--preload", _gpu_pinning.__name__]
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
    except ImportError as exc:
        raise ClusterConfigError(
            f"--cluster kubernetes needs dask-kubernetes, which is not installed: {_K8S_EXTRA}"
        ) from exc
    k8s = config.get("kubernetes") or {}
    spec: Any = k8s.get("custom-cluster-spec") or kubernetes_cluster_spec(config)
    with dask.config.set(dask_sections(config)):
        cluster = KubeCluster(custom_cluster_spec=spec, namespace=k8s.get("namespace"))
    logger.info("Kubernetes DaskCluster %s started; adapting between %d and %d workers",
                cluster.name, min_jobs, max_jobs)
    cluster.adapt(minimum=min_jobs, maximum=max_jobs)
    return cluster
