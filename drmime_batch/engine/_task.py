"""The task a Dask worker runs for one pair: open, register, write the transform, score.

It receives paths and options only (nothing heavy travels through the scheduler), opens both
images itself, registers a pyramid level of at most ``max_size`` pixels (with the pair's tissue
masks when it has them, each read at its level closest to, and not smaller than, the image level),
converts the matrix to full resolution, writes ``<out>/<pair_id>/transform`` (atomically) and the
QC picture, scores the landmarks when the pair has them, and returns a small JSON-ready dict.

Expected failures (missing or corrupt image or mask file, unsupported format, constant image, a
mask of another aspect ratio or covering nothing, divergence) are returned as
``{"ok": False, "error": "<one line naming the file and cause>"}`` rather than raised, so that the
driver can tell them from a lost worker.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["PROGRESS_TOPIC", "PairTask", "register_pair"]

logger = logging.getLogger(__name__)

#: Topic of the worker events (start, progress) the driver subscribes to.
PROGRESS_TOPIC = "drmime-batch-progress"
_DEFAULT_MAX_SIZE = 1024
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
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Failure(Exception):
    """Carries a finished one-line message out of a step."""


def _step(what: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn any error into a one-line :class:`_Failure` prefixed by ``what``."""
    try:
        return fn()
    except _Failure:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        message = _one_line(exc)
        raise _Failure(message if what in message else f"{what}: {message}") from exc


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


def register_pair(task: PairTask) -> dict[str, Any]:
    """Register one pair on this worker and write its transform; return a small summary.

    Computes (eagerly, on this process) and writes files under ``task.out/task.pair_id``.

    Parameters
    ----------
    task : PairTask

    Returns
    -------
    dict
        ``ok`` (bool); when true: ``matrix`` (3x3 nested lists, fixed → moving, full-resolution
        pixels), ``final_mi``, ``iterations``, ``timings``, ``device``, ``levels`` (the pyramid
        level and downsample used for each image), ``fixed_shape``, ``masks`` (per image: the
        mask's ``source`` auto/user/none, tissue ``fraction``, ``crop``, and ``file`` for a user
        mask), ``landmarks`` (scores dict, when the pair has landmarks), ``qc_png``; when false:
        ``error`` (one line). Always ``pair_id``, ``worker``, ``pid``, ``seconds``.
    """
    t0 = time.perf_counter()
    worker, address = _worker_context()
    base = {"pair_id": task.pair_id, "worker": address, "pid": os.getpid(), "attempt": task.attempt}
    _publish(worker, {**base, "event": "start", "time": time.time()})
    import dask

    try:
        # any dask array computed here (reading a level, a QC overlay) stays on this thread: a task
        # waiting on chunk tasks of its own cluster can deadlock single-threaded workers
        with dask.config.set(scheduler="synchronous"):
            summary = _register(task, worker, base)
    except _Failure as exc:
        return {**base, "ok": False, "error": str(exc), "seconds": time.perf_counter() - t0}
    return {**base, **summary, "ok": True, "seconds": time.perf_counter() - t0}


def _register(task: PairTask, worker: Any, base: dict[str, Any]) -> dict[str, Any]:
    from drmime_batch import register
    from drmime_batch.core._convention import matrix_from_crop, matrix_from_level
    from drmime_batch.errors import InputImageError
    from drmime_batch.io import open_image, read_mask, read_tissue, write_qc, write_transform

    options = dict(task.options)
    max_size = int(options.get("max_size") or _DEFAULT_MAX_SIZE)
    if worker is not None:
        import torch

        _tune_malloc()
        threads = int(options.get("threads") or _nthreads(worker))
        torch.set_num_threads(threads)
        options["threads"] = threads

    fixed_img = _step(f"fixed image {task.fixed}", lambda: open_image(task.fixed))
    moving_img = _step(f"moving image {task.moving}", lambda: open_image(task.moving))
    f_level = _step(f"fixed image {task.fixed}", lambda: fixed_img.level_for(max_size=max_size))
    m_level = _step(f"moving image {task.moving}", lambda: moving_img.level_for(max_size=max_size))
    fixed = _step(f"fixed image {task.fixed}", lambda: fixed_img.read_level(f_level))
    moving = _step(f"moving image {task.moving}", lambda: moving_img.read_level(m_level))
    for role, path, arr in (("fixed", task.fixed, fixed), ("moving", task.moving, moving)):
        a = np.asarray(arr)
        if a.size == 0 or not np.isfinite(a).any() or float(np.nanmax(a)) == float(np.nanmin(a)):
            raise _Failure(f"{role} image {path}: InputImageError: the image is empty or constant "
                           f"(shape {a.shape}, value {float(np.nanmax(a)) if a.size else 'none'})")
    masks = {
        f"{role}_mask": _step(f"{role} mask {path}", lambda p=path, a=arr: read_mask(p, np.shape(a)))
        for role, path, arr in (("fixed", task.fixed_mask, fixed), ("moving", task.moving_mask, moving))
        if path
    }
    # Small tissue on a large slide: read the tissue's box from a finer level instead (automatic
    # masks only; a user mask keeps the level it was read for).
    offsets = {"fixed": (0, 0), "moving": (0, 0)}
    crops: dict[str, Any] = {}
    if options.get("mask", "auto") != "none":
        if not task.fixed_mask:
            fixed, f_level, offsets["fixed"], crops["fixed_crop"] = _step(
                f"fixed image {task.fixed}", lambda: read_tissue(fixed_img, f_level, fixed, max_size))
        if not task.moving_mask:
            moving, m_level, offsets["moving"], crops["moving_crop"] = _step(
                f"moving image {task.moving}", lambda: read_tissue(moving_img, m_level, moving, max_size))

    last = [0.0]

    def callback(iteration: int, value: float) -> None:
        now = time.monotonic()
        if now - last[0] >= _PUBLISH_EVERY_S:
            last[0] = now
            _publish(worker, {**base, "event": "progress", "iteration": int(iteration), "value": float(value)})

    try:
        result = _step(
            f"registering {task.moving} onto {task.fixed}",
            lambda: register(fixed, moving, callback=callback, **masks, **options),
        )
    except _Failure as exc:
        # an InputImageError about a mask ("fixed mask has shape ...") names the mask file instead
        cause = exc.__cause__
        for role in ("fixed", "moving"):
            path = getattr(task, f"{role}_mask")
            if path and isinstance(cause, InputImageError) and str(cause).startswith(f"{role} mask"):
                raise _Failure(f"{role} mask {path}: {_one_line(cause)}") from cause
        raise
    f_ds, m_ds = fixed_img.downsamples[f_level], moving_img.downsamples[m_level]
    level_matrix = matrix_from_crop(result.matrix, fixed_offset=offsets["fixed"], moving_offset=offsets["moving"])
    matrix = matrix_from_level(level_matrix, fixed_downsample=f_ds, moving_downsample=m_ds)
    if not np.all(np.isfinite(matrix)):
        raise _Failure(f"registering {task.moving} onto {task.fixed}: RegistrationDivergedError: non-finite matrix")
    full_shape = tuple(int(v) for v in fixed_img.levels[0].shape[:2])
    levels = {
        "fixed_level": int(f_level),
        "moving_level": int(m_level),
        "fixed_downsample": [float(v) for v in np.broadcast_to(f_ds, 2)],
        "moving_downsample": [float(v) for v in np.broadcast_to(m_ds, 2)],
        **{k: v for k, v in crops.items() if v is not None},
    }
    attrs = {
        "pair_id": task.pair_id,
        "fixed": task.fixed,
        "moving": task.moving,
        "result": result.to_dict(),
        **levels,
    }
    _step(f"writing the transform of {task.pair_id} to {task.out}",
          lambda: write_transform(task.out, task.pair_id, matrix, attrs=attrs,
                                  fixed_pixel_size=fixed_img.pixel_size, moving_pixel_size=moving_img.pixel_size))
    qc = _step(f"writing the QC picture of {task.pair_id} to {task.out}",
               lambda: write_qc(task.out, task.pair_id, fixed_img, moving_img, matrix))
    summary: dict[str, Any] = {
        "matrix": matrix.tolist(),
        "final_mi": float(result.final_mi),
        "iterations": int(result.iterations),
        "timings": {k: float(v) for k, v in result.timings.items()},
        "device": str(result.device),
        "transform": result.transform,
        "metric": result.metric,
        "fixed_shape": list(full_shape),
        "qc_png": str(qc) if qc else None,
        "masks": _masks_record(getattr(result, "masks", None) or {}, task),
        **levels,
    }
    if task.fixed_landmarks and task.moving_landmarks:
        summary["landmarks"] = _score_landmarks(task, matrix, full_shape)
    return summary


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


def _score_landmarks(task: PairTask, matrix: np.ndarray, fixed_shape: tuple[int, ...]) -> dict[str, Any]:
    """Landmark scores as a dict; a landmark problem is reported, not fatal to the pair."""
    from drmime_batch.evaluation import evaluate_matrix, read_landmarks

    try:
        fixed_lm = read_landmarks(task.fixed_landmarks)
        moving_lm = read_landmarks(task.moving_landmarks)
        return evaluate_matrix(matrix, fixed_lm, moving_lm, fixed_shape=fixed_shape).to_dict()
    except Exception as exc:  # noqa: BLE001 - the registration itself succeeded
        return {"error": _one_line(exc)}
