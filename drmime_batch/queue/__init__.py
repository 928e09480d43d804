"""The persistent batch queue (SQLite; WAL on local disks, the rollback journal on shared ones) and manifest reading.

Knows nothing of dask or torch: ``status``, ``cancel`` and ``evaluate`` read it without starting
either.

Examples
--------
>>> from drmime_batch.queue import Queue
>>> Queue.open  # doctest: +ELLIPSIS
<bound method Queue.open of <class '...Queue'>>
"""

from __future__ import annotations

from drmime_batch.queue._manifest import ManifestEntry, check_pair_id, read_manifest
from drmime_batch.queue._queue import STATES, PairRow, Queue, QueueLock

__all__ = ["STATES", "ManifestEntry", "PairRow", "Queue", "QueueLock", "check_pair_id", "read_manifest"]
