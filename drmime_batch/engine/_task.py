"""The task a Dask worker runs for one pair: register the two files, write the transform, score.

It receives paths and options only (nothing heavy travels through the scheduler) and calls
:func:`drmime_batch.register_files` (open both images, pick and read the pyramid level of at most
``max_size`` pixels, masks, register, full-resolution matrix), writes
``<out>/<pair_id>/transform`` (atomically) and the QC picture, scores the landmarks when the pair
has them, and returns a :class:`~drmime_batch.outcome.PairOutcome`.

Failures are returned, not raised, so that the driver can tell them from a lost worker: a bad
input (missing or corrupt image or mask file, unsupported format, constant image, a mask of
another aspect ratio or covering nothing) or a diverged optimisation gives ``ok=False`` with one
line naming the file and the cause; any other exception is a bug, and its traceback is kept in the
outcome (``failure="internal"``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from drmime_batch.outcome import PairOutcome

__all__ = ["PROGRESS_TOPIC", "PairTask", "register_pair"]

logger = logging.getLogger(__name__)

#: Topic of the worker events (start, progress) the driver subscribes to.
PROGRESS_TOPIC = "drmime-batch-progress"
#: dask scheduler for the arrays a task computes itself (passed per call: dask.config.set would
#: change it for every thread of the worker process).
_SCHEDULER = "synchronous"
_PUBLISH_EVERY_S = 0.5


@dataclass(frozen=True)
class PairTask:
    """Everything a worker needs for one pair (paths and options; pickled to the worker).

    Attributes
    ----------
    pair_id, fixed, moving : str
    out : str
        The output store.
    fixed_landmarks, moving_landmarks : str or None
    fixed_mask, moving_mask : str or None
        Tissue-mask images (non-zero = tissue), when the pair has them.
    options : dict
        ``register`` keyword arguments (``max_size`` also picks the pyramid level read).
    attempt : int
        The queue's attempt number (for the task key and the events).
    """

    pair_id: str
    fixed: str
    moving: str
    out: str
    fixed_landmarks: str | None = None
    moving_landmarks: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    fixed_mask: str | None = None
    moving_mask: str | None = None


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line; a located error reads ``<where>: Type: <cause>``."""
    where, cause = getattr(exc, "where", None), getattr(exc, "cause", None)
    if where and cause is not None:
        return f"{where}: {type(exc).__name__}: {cause}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _failure_kind(exc: BaseException) -> str:
    """Which of :data:`~drmime_batch.outcome.FAILURE_KINDS` an exception is."""
    from drmime_batch.errors import (
        DrmimeError,
        IncompleteOutputError,
        OutputStoreError,
        RegistrationDivergedError,
    )

    if isinstance(exc, RegistrationDivergedError):
        return "diverged"
    if isinstance(exc, (OutputStoreError, IncompleteOutputError)):
        return "output"
    if isinstance(exc, DrmimeError):
        return "input"
    return "internal"


def _worker_context() -> tuple[Any, str]:
    """The distributed worker running this task (or None) and its address."""
    try:
        from distributed import get_worker

        worker = get_worker()
        return worker, str(worker.address)
    except (ImportError, ValueError):
        return None, f"local:{socket.gethostname()}:{os.getpid()}"


def _nthreads(worker: Any) -> int:
    state = getattr(worker, "state", None)
    n = getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)
    return max(1, int(n or 1))


_MALLOC_TUNED = False


def _tune_malloc() -> None:
    """Undo, for this worker process, the allocator setting that halves torch's speed.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; setting it makes glibc stop
    adapting its mmap threshold, so every tensor above 128 kB is mmapped and unmapped at each
    iteration (page faults: registration runs about 2x slower, mostly in the kernel). Raising both
    thresholds restores heap reuse; memory is still trimmed above 256 MB of free heap.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD: glibc's maximum on 64-bit
        libc.mallopt(-1, 256 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        logger.debug("cannot tune malloc", exc_info=True)


def _publish(worker: Any, msg: dict[str, Any]) -> None:
    if worker is None:
        return
    try:
        worker.log_event(PROGRESS_TOPIC, msg)
    except Exception:  # progress is best effort, never a reason to fail a pair
        logger.debug("could not publish progress of %s", msg.get("pair_id"), exc_info=True)


def register_pair(task: PairTask) -> PairOutcome:
    """Register one pair on this worker and write its transform; return its :class:`PairOutcome`.

    Computes (eagerly, on this process) and writes files under ``task.out/task.pair_id``.

    Parameters
    ----------
    task : PairTask

    Returns
    -------
    PairOutcome
        ``ok`` with the full-resolution ``matrix``, the full-resolution registration record, both
        images (shape, pixel size, level and crop registered), masks, landmark scores (in µm too
        when the moving image has a pixel size) and the QC picture; or ``ok=False`` with a one-line
        ``error``, its ``failure`` kind and, for an unexpected error (a bug), the ``traceback``.
        Always ``pair_id``, ``worker``, ``pid``, ``attempt``, ``seconds``.

    Notes
    -----
    A bad input never raises here: the driver tells a returned failure from a lost worker.
    ``MemoryError`` does raise (the worker is likely in trouble; the driver retries elsewhere).
    """
    t0 = time.perf_counter()
    worker, address = _worker_context()
    base = {"pair_id": task.pair_id, "worker": address, "pid": os.getpid(), "attempt": task.attempt}
    _publish(worker, {**base, "event": "start", "time": time.time()})
    where = {"worker": address, "pid": os.getpid(), "attempt": task.attempt}
    try:
        outcome = _register(task, worker, base)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes the pair's outcome, never the worker's
        kind = _failure_kind(exc)
        error = _one_line(exc)
        if kind == "internal":
            error = (f"internal error (a bug; the traceback is kept) while registering {task.moving} onto "
                     f"{task.fixed}: {error}")
        return PairOutcome.failed(
            task.pair_id, error, failure=kind,
            traceback=traceback.format_exc() if kind == "internal" else None,
            seconds=time.perf_counter() - t0, **where,
        )
    return outcome.with_(seconds=time.perf_counter() - t0, **where)


def _register(task: PairTask, worker: Any, base: dict[str, Any]) -> PairOutcome:
    from drmime_batch._files import register_files
    from drmime_batch.io import open_image, write_qc, write_transform

    options = dict(task.options)
    if worker is not None:
        import torch

        _tune_malloc()
        threads = int(options.get("threads") or _nthreads(worker))
        torch.set_num_threads(threads)
        options["threads"] = threads

    last = [0.0]

    def callback(iteration: int, value: float) -> None:
        now = time.monotonic()
        if now - last[0] >= _PUBLISH_EVERY_S:
            last[0] = now
            _publish(worker, {**base, "event": "progress", "iteration": int(iteration), "value": float(value)})

    # Any dask array computed here (a level, a tissue box, the QC thumbnails) is computed on this
    # thread: a task waiting on chunk tasks of its own cluster can deadlock single-threaded workers.
    reg = register_files(task.fixed, task.moving, fixed_mask=task.fixed_mask, moving_mask=task.moving_mask,
                         callback=callback, scheduler=_SCHEDULER, **options)
    result, matrix = reg.result, reg.matrix
    record = result.to_dict()
    attrs = {
        "pair_id": task.pair_id,
        "fixed": task.fixed,
        "moving": task.moving,
        "result": record,
        "fixed_level": reg.fixed.level,
        "moving_level": reg.moving.level,
        "fixed_downsample": list(reg.fixed.downsample),
        "moving_downsample": list(reg.moving.downsample),
        **{f"{role}_crop": list(side.crop) for role, side in (("fixed", reg.fixed), ("moving", reg.moving))
           if side.crop is not None},
    }
    _writing(f"writing the transform of {task.pair_id} to {task.out}", lambda: write_transform(
        task.out, task.pair_id, matrix, attrs=attrs, field=result.field,
        fixed_pixel_size=reg.fixed.pixel_size, moving_pixel_size=reg.moving.pixel_size,
        fixed_shape=reg.fixed.shape or None, moving_shape=reg.moving.shape or None))
    # the QC picture and the quality record read small levels: the files are opened once more for
    # both (metadata only; register_files has closed its handles)
    images: list[Any] = []
    try:
        images = [open_image(task.fixed), open_image(task.moving)]
    except Exception as exc:  # noqa: BLE001 - the pair is registered; what follows says what is missing
        logger.warning("cannot reopen the images of %s for QC: %s", task.pair_id, _one_line(exc))
    qc = None
    if images:
        qc = _writing(f"writing the QC picture of {task.pair_id} to {task.out}", lambda: write_qc(
            task.out, task.pair_id, images[0], images[1], matrix, scheduler=_SCHEDULER, field=result.field))
    qc_record = _quality(images, reg, matrix)
    landmarks = None
    if task.fixed_landmarks and task.moving_landmarks:
        landmarks = _score_landmarks(task, matrix, reg.fixed.shape, reg.moving.pixel_size, result.field)
    return PairOutcome(
        pair_id=task.pair_id,
        ok=True,
        fixed=reg.fixed,
        moving=reg.moving,
        matrix=matrix,
        registration=record,
        final_mi=float(result.final_mi),
        iterations=int(result.iterations),
        timings={k: float(v) for k, v in result.timings.items()},
        device=str(result.device),
        transform=result.transform,
        metric=result.metric,
        masks=_masks_record(result.masks or {}, task),
        landmarks=landmarks,
        qc_png=str(qc) if qc else None,
        qc=qc_record,
    )


def _quality(images: Sequence[Any], reg: Any, matrix: np.ndarray) -> dict[str, Any]:
    """The pair's quality record (:func:`drmime_batch.quality.assess` on small levels of both files).

    ``images``: the opened fixed and moving images (empty when they could not be reopened). The
    levels read are of at most :data:`~drmime_batch.quality.LOCAL_SIZE` px (the local-consistency
    features are measured there; the others on a copy shrunk to ``QC_SIZE``).
    Never fatal: a record that cannot be computed is a flagged one, saying why.
    """
    from drmime_batch.core import matrix_to_level
    from drmime_batch.quality import LOCAL_SIZE, QC_SIZE, assess

    result = reg.result
    try:
        if len(images) != 2:
            raise OSError("the images could not be reopened after the registration")
        fixed, moving = images
        size = max(QC_SIZE, LOCAL_SIZE)
        fl, ml = fixed.level_for(size), moving.level_for(size)
        small = matrix_to_level(matrix, fixed_downsample=fixed.downsamples[fl],
                                moving_downsample=moving.downsamples[ml])
        record = assess(fixed.read_level(fl, scheduler=_SCHEDULER), moving.read_level(ml, scheduler=_SCHEDULER),
                        small, init=result.init, deformation=result.deformation)
        return record.to_dict()
    except Exception as exc:  # noqa: BLE001 - a registered pair stays registered; it is flagged instead
        return {"score": 0.0, "flagged": True, "reasons": [f"the quality could not be assessed: {_one_line(exc)}"],
                "features": {}}


def _writing(what: str, fn: Callable[[], Any]) -> Any:
    """Run an output step; a storage failure (disk full, permissions) is the output's, told as such."""
    from drmime_batch.errors import DrmimeError, OutputStoreError

    try:
        return fn()
    except DrmimeError as exc:
        raise OutputStoreError(f"{what}: {_one_line(exc)}") from exc
    except OSError as exc:
        raise OutputStoreError(f"{what}: {_one_line(exc)}") from exc


def _masks_record(masks: Mapping[str, Any], task: PairTask) -> dict[str, Any]:
    """The result's ``masks`` as plain JSON types, with the file of each user mask."""
    out: dict[str, Any] = {}
    for role, record in (masks or {}).items():
        rec = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
               for k, v in dict(record).items()}
        path = getattr(task, f"{role}_mask", None)
        if path and rec.get("source") == "user":
            rec["file"] = path
        out[str(role)] = rec
    return out


def _score_landmarks(task: PairTask, matrix: np.ndarray, fixed_shape: tuple[int, ...],
                     pixel_size: tuple[float, float] | None, field: Any = None) -> dict[str, Any]:
    """Landmark scores as a dict (µm figures too when the moving image's pixel size is known).

    A landmark problem is reported in the dict, not fatal to the pair.
    """
    from drmime_batch.evaluation import evaluate_matrix, read_landmarks

    assert task.fixed_landmarks and task.moving_landmarks  # only called when the pair has both
    try:
        fixed_lm = read_landmarks(task.fixed_landmarks)
        moving_lm = read_landmarks(task.moving_landmarks)
        return evaluate_matrix(matrix, fixed_lm, moving_lm, fixed_shape=fixed_shape, pixel_size=pixel_size,
                               field=field).to_dict()
    except Exception as exc:  # noqa: BLE001 - the registration itself succeeded
        return {"error": _one_line(exc)}
