"""Pinning each worker process of a multi-GPU job to its own GPU (a distributed preload).

``dask worker --nworkers N --preload drmime_batch.engine._gpu_pinning`` starts N processes that
see every GPU of the job; this preload leaves each process only its own one.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

__all__ = ["dask_setup"]

logger = logging.getLogger(__name__)


def dask_setup(worker: Any) -> None:
    """Distributed preload: pin this worker process to one GPU of its job.

    Used (``--preload drmime_batch.engine._gpu_pinning``) only when a job holds several GPUs and starts
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
