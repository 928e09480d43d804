"""The batch engine: the task a worker runs for one pair, the driver feeding a queue to Dask, and
opening Dask clients (embedded LocalCluster, an existing scheduler, HPC/Kubernetes clusters).

Examples
--------
>>> from drmime_batch.engine import RunOptions
>>> RunOptions(device="cuda").warp
True
"""

from __future__ import annotations

from drmime_batch.engine._client import CLUSTER_KINDS, local_cluster_size, open_client
from drmime_batch.engine._cluster_config import load_cluster_config
from drmime_batch.engine._clusters import job_script, make_cluster
from drmime_batch.engine._driver import RunEvent, RunOptions, RunSummary, run_queue
from drmime_batch.engine._task import PROGRESS_TOPIC, PairTask, register_pair
from drmime_batch.engine._tls import load_security

__all__ = [
    "CLUSTER_KINDS",
    "PROGRESS_TOPIC",
    "PairTask",
    "RunEvent",
    "RunOptions",
    "RunSummary",
    "job_script",
    "load_cluster_config",
    "load_security",
    "local_cluster_size",
    "make_cluster",
    "open_client",
    "register_pair",
    "run_queue",
]
