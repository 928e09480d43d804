"""The typed record of one pair: what a worker found, as the queue stores it and every reader reads it.

One frozen :class:`PairOutcome` travels from the worker (:func:`drmime_batch.engine.register_pair`)
to the driver, into the queue's ``result`` column (:meth:`PairOutcome.to_dict`) and back out to the
readers (``status``, ``report``, ``evaluate``, the console) through :meth:`PairOutcome.from_dict`.
Everything in it is at the **full resolution** of each image file (the pyramid level and crop
that were registered are recorded beside, in :class:`ImageSide`), and pixel sizes travel with it
so landmark errors can be given in micrometres.

The dict form is versioned (``outcome_version``) and keeps every key earlier releases wrote
(``final_mi``, ``iterations``, ``fixed_level``, ``landmarks``, ...): scripts reading
``status --json`` keep working. Rows written before the version existed read back too.

This module imports numpy only: the queue and the console use it without torch or dask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

__all__ = ["FAILURE_KINDS", "OUTCOME_VERSION", "ImageSide", "PairOutcome"]

#: Version of :meth:`PairOutcome.to_dict`'s layout (``outcome_version``); rows without it are 0.
OUTCOME_VERSION = 1

#: Why a pair failed: ``input`` (a file or option the user can fix: missing, corrupt, constant,
#: a mask covering nothing), ``diverged`` (the optimisation gave no usable transform), ``output``
#: (its results could not be written or were incomplete), ``worker`` (the workers running it
#: died), ``internal`` (an unexpected error, a bug: the traceback is kept).
FAILURE_KINDS = ("input", "diverged", "output", "worker", "internal")


def _floats(values: Any, n: int | None = None) -> tuple[float, ...] | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return tuple(float(v) for v in (np.broadcast_to(arr, (n,)) if n else arr.ravel()))


def _ints(values: Any) -> tuple[int, ...] | None:
    return None if values is None else tuple(int(v) for v in values)


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays turned into JSON types (recursively)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class ImageSide:
    """One image of a pair: the file, its full-resolution geometry and what was registered of it.

    Attributes
    ----------
    path : str
        The image file or URL as registered.
    shape : tuple of int
        Full-resolution shape ``(H, W)`` or ``(H, W, C)``.
    pixel_size : (px, py) or None
        Micrometres per full-resolution pixel along x and y, when the file says.
    level : int
        The pyramid level registered (0 = full resolution).
    downsample : (sx, sy)
        Full-resolution pixels per pixel of that level.
    crop : (y0, y1, x0, x1) or None
        The tissue box read from that level (None: the whole level).
    mask : str or None
        The user's tissue-mask file, when one was given.
    """

    path: str
    shape: tuple[int, ...] = ()
    pixel_size: tuple[float, float] | None = None
    level: int = 0
    downsample: tuple[float, float] = (1.0, 1.0)
    crop: tuple[int, int, int, int] | None = None
    mask: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        object.__setattr__(self, "shape", _ints(self.shape) or ())
        object.__setattr__(self, "pixel_size", _floats(self.pixel_size, 2))
        object.__setattr__(self, "level", int(self.level))
        object.__setattr__(self, "downsample", _floats(self.downsample, 2))
        object.__setattr__(self, "crop", _ints(self.crop))
        if self.mask is not None:
            object.__setattr__(self, "mask", str(self.mask))


@dataclass(frozen=True)
class PairOutcome:
    """What became of one pair: the full-resolution transform and how it was found, or why not.

    Attributes
    ----------
    pair_id : str
    ok : bool
        True when the pair registered and its transform was written.
    fixed, moving : ImageSide or None
        The two images (None when the pair failed before the image was opened).
    matrix : ndarray, shape (3, 3), or None
        Fixed → moving in full-resolution pixels (``registered(p) = moving(M @ p)``).
    registration : dict
        The :class:`~drmime_batch.RegistrationResult` record at full resolution (its ``to_dict``):
        parameters, per-level scores, loss history, initialisation candidates, config, versions.
    final_mi, iterations, timings, device, transform, metric
        The headline figures of ``registration`` (kept flat: they are what readers show).
    masks : dict
        Per image, where its tissue mask came from and how much tissue it holds.
    landmarks : dict or None
        Landmark scores (TRE/rTRE, in µm too when the moving image's pixel size is known), or
        ``{"error": ...}`` when the landmark files could not be scored; None without landmarks.
    qc_png : str or None
        The QC overlay written for the pair.
    error : str or None
        One line naming the file or step and the cause (failed pairs).
    failure : str or None
        One of :data:`FAILURE_KINDS` (failed pairs).
    traceback : str or None
        The Python traceback of an ``internal`` failure (a bug to report).
    worker, pid, attempt, seconds
        Where and how long the attempt ran.
    warped : bool or None
        Whether the registered image was written (set by the driver).
    qc : dict or None
        The landmark-free quality record (:class:`drmime_batch.quality.QualityRecord` as a dict:
        ``score`` in [0, 1], ``flagged``, ``reasons``, ``features``); None for failed pairs and
        rows written before it existed.
    """

    pair_id: str
    ok: bool
    fixed: ImageSide | None = None
    moving: ImageSide | None = None
    matrix: np.ndarray | None = None
    registration: Mapping[str, Any] = field(default_factory=dict)
    final_mi: float | None = None
    iterations: int | None = None
    timings: Mapping[str, float] = field(default_factory=dict)
    device: str | None = None
    transform: str | None = None
    metric: str | None = None
    masks: Mapping[str, Any] = field(default_factory=dict)
    landmarks: Mapping[str, Any] | None = None
    qc_png: str | None = None
    error: str | None = None
    failure: str | None = None
    traceback: str | None = None
    worker: str | None = None
    pid: int | None = None
    attempt: int = 1
    seconds: float | None = None
    warped: bool | None = None
    qc: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.matrix is not None:
            m = np.array(self.matrix, dtype=np.float64)
            if m.shape != (3, 3):
                raise ValueError(f"pair {self.pair_id}: the matrix must be 3x3, got shape {m.shape}")
            m.setflags(write=False)
            object.__setattr__(self, "matrix", m)
        if self.ok and self.matrix is None:
            raise ValueError(f"pair {self.pair_id}: a finished outcome needs its matrix")
        if self.failure is not None and self.failure not in FAILURE_KINDS:
            raise ValueError(f"pair {self.pair_id}: failure must be one of {FAILURE_KINDS}, got {self.failure!r}")

    # ------------------------------------------------------------------ views
    @property
    def fixed_shape(self) -> tuple[int, ...] | None:
        """Full-resolution shape of the fixed image (None when unknown)."""
        return self.fixed.shape if self.fixed is not None and self.fixed.shape else None

    def with_(self, **changes: Any) -> PairOutcome:
        """A copy with ``changes`` applied (the record itself is immutable)."""
        return replace(self, **changes)

    @property
    def flagged(self) -> bool:
        """True when the quality record flags this pair (False without a record)."""
        return bool((self.qc or {}).get("flagged", False))

    @classmethod
    def failed(
        cls, pair_id: str, error: str, *, failure: str, traceback: str | None = None, **fields: Any
    ) -> PairOutcome:
        """The outcome of a pair that failed with a one-line ``error`` of kind ``failure``."""
        line = " ".join(str(error).split()) or "unknown error"
        return cls(pair_id=pair_id, ok=False, error=line, failure=failure, traceback=traceback, **fields)

    # ------------------------------------------------------------------ dict form
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a new object): the layout ``status --json`` shows as ``result``.

        Keys of earlier releases are kept flat (``fixed_shape``, ``fixed_level``,
        ``fixed_downsample``, ``fixed_crop``, ``final_mi``, ...); new ones are added beside them.
        """
        out: dict[str, Any] = {
            "outcome_version": OUTCOME_VERSION,
            "pair_id": self.pair_id,
            "ok": bool(self.ok),
            "matrix": None if self.matrix is None else self.matrix.tolist(),
            "final_mi": self.final_mi,
            "iterations": self.iterations,
            "timings": {str(k): float(v) for k, v in self.timings.items()},
            "device": self.device,
            "transform": self.transform,
            "metric": self.metric,
            "masks": _plain(dict(self.masks)),
            "landmarks": None if self.landmarks is None else _plain(dict(self.landmarks)),
            "qc_png": self.qc_png,
            "error": self.error,
            "failure": self.failure,
            "traceback": self.traceback,
            "worker": self.worker,
            "pid": self.pid,
            "attempt": int(self.attempt),
            "seconds": self.seconds,
            "warped": self.warped,
            "qc": None if self.qc is None else _plain(dict(self.qc)),
            "registration": _plain(dict(self.registration)),
        }
        for role, side in (("fixed", self.fixed), ("moving", self.moving)):
            if side is None:
                continue
            out[f"{role}_path"] = side.path
            out[f"{role}_shape"] = list(side.shape)
            out[f"{role}_pixel_size"] = None if side.pixel_size is None else list(side.pixel_size)
            out[f"{role}_level"] = side.level
            out[f"{role}_downsample"] = list(side.downsample)
            out[f"{role}_crop"] = None if side.crop is None else list(side.crop)
            out[f"{role}_mask_file"] = side.mask
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, pair_id: str | None = None,
                  matrix: Any = None) -> PairOutcome:
        """Inverse of :meth:`to_dict`; also reads the summaries of earlier releases.

        Parameters
        ----------
        data : mapping
            A :meth:`to_dict` dict, or a queue row's ``result`` (which keeps the matrix apart).
        pair_id, matrix : optional
            Used when ``data`` lacks them (a queue row holds both in their own columns).
        """
        d = dict(data)
        m = d.get("matrix", None)
        m = matrix if m is None else m
        ok = bool(d.get("ok", m is not None and not d.get("error")))
        sides: dict[str, ImageSide | None] = {}
        for role in ("fixed", "moving"):
            shape = d.get(f"{role}_shape")
            path = d.get(f"{role}_path")
            if shape is None and path is None and f"{role}_level" not in d:
                sides[role] = None
                continue
            sides[role] = ImageSide(
                path=str(path or ""),
                shape=tuple(shape or ()),
                pixel_size=d.get(f"{role}_pixel_size"),
                level=int(d.get(f"{role}_level") or 0),
                downsample=d.get(f"{role}_downsample") or (1.0, 1.0),
                crop=d.get(f"{role}_crop"),
                mask=d.get(f"{role}_mask_file"),
            )
        final_mi = d.get("final_mi")
        return cls(
            pair_id=str(d.get("pair_id") or pair_id or ""),
            ok=ok and m is not None,
            fixed=sides["fixed"],
            moving=sides["moving"],
            matrix=m,
            registration=dict(d.get("registration") or {}),
            final_mi=None if final_mi is None else float(final_mi),
            iterations=None if d.get("iterations") is None else int(d["iterations"]),
            timings={str(k): float(v) for k, v in (d.get("timings") or {}).items()},
            device=d.get("device"),
            transform=d.get("transform"),
            metric=d.get("metric"),
            masks=dict(d.get("masks") or {}),
            landmarks=None if d.get("landmarks") is None else dict(d["landmarks"]),
            qc_png=d.get("qc_png"),
            error=d.get("error"),
            failure=d.get("failure"),
            traceback=d.get("traceback"),
            worker=d.get("worker"),
            pid=None if d.get("pid") is None else int(d["pid"]),
            attempt=int(d.get("attempt") or 1),
            seconds=None if d.get("seconds") is None else float(d["seconds"]),
            warped=d.get("warped"),
            qc=None if d.get("qc") is None else dict(d["qc"]),
        )

    @classmethod
    def from_row(cls, row: Any) -> PairOutcome:
        """The outcome a queue row records (``row.result`` with the row's matrix, error and id).

        Any object with the attributes of :class:`drmime_batch.queue.PairRow` will do.
        """
        data = dict(getattr(row, "result", None) or {})
        data.setdefault("pair_id", row.pair_id)
        for name in ("error", "traceback", "seconds", "worker", "device"):
            value = getattr(row, name, None)
            if value is not None and data.get(name) is None:
                data[name] = value
        matrix = getattr(row, "matrix", None)
        data["ok"] = getattr(row, "state", "done") == "done" and matrix is not None
        return cls.from_dict(data, matrix=matrix)

    def summary(self) -> dict[str, Any]:
        """The few figures a console row or a report line shows (None where unknown)."""
        lm = self.landmarks or {}
        return {
            "final_mi": None if self.final_mi is None or not math.isfinite(self.final_mi) else self.final_mi,
            "iterations": self.iterations,
            "rtre_median": lm.get("rtre_median"),
            "identity_rtre_median": lm.get("identity_rtre_median"),
            "tre_median_px": lm.get("tre_median_px"),
            "tre_median_um": lm.get("tre_median_um"),
            "qc_png": self.qc_png,
        }

