"""The registration result: a small immutable record that round-trips through JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from drmime_batch.core._field import DisplacementField, map_points
from drmime_batch.errors import ConfigError

__all__ = ["RegistrationResult"]


@dataclass(frozen=True)
class RegistrationResult:
    """What one registration found, and how.

    Attributes
    ----------
    matrix : ndarray, shape (3, 3), float64
        Fixed → moving map in full-resolution pixels of the arrays given to ``register``
        (see :mod:`drmime_batch.core._convention`).
    transform, metric : str
        The transform kind and similarity used.
    parameters : list of float
        The exponential-map parameters (shared + fine-level correction, in the centred frame).
    level_scores : list of float
        Final similarity per pyramid level, finest first (nats for ``mine`` and ``mi``).
    loss_history : list of float
        The similarity (mean over levels) every few iterations.
    iterations : int
    init : dict
        The initialisation chosen (angle in degrees, flip, score).
    timings : dict
        Seconds: ``init_s``, ``optimise_s``, ``total_s``.
    device : str
    seed : int
    config : dict
        The full :class:`RegistrationConfig` used.
    versions : dict
        Package versions (drmime_batch, torch, numpy).
    fixed_shape, moving_shape : tuple of int
        Shapes of the inputs.
    field : DisplacementField or None
        The deformable stage's displacement (``registered(p) = moving(M (p + d(p)))``), in the same
        pixels as ``matrix``; None for a linear result.
    deformation : dict
        The deformable stage's record when it ran: ``kept`` (and why not), iterations, the
        similarity scores of the linear and deformable maps, the Jacobian determinant's minimum and
        percentiles (no fold: minimum > 0).
    masks : dict
        Per image (``"fixed"``, ``"moving"``): where its tissue mask came from (``source``:
        ``"auto"``, ``"user"`` or ``"none"``), the tissue ``fraction``, the ``crop`` box
        ``[y0, y1, x0, x1]`` registered (None: the whole image), the ``ink_fraction`` of marker-pen
        ink painted over and, when an automatic mask found no tissue, a ``fallback`` note.
    """

    matrix: np.ndarray
    transform: str
    metric: str
    parameters: list[float] = field(default_factory=list)
    level_scores: list[float] = field(default_factory=list)
    loss_history: list[float] = field(default_factory=list)
    iterations: int = 0
    init: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    config: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    fixed_shape: tuple[int, ...] = ()
    moving_shape: tuple[int, ...] = ()
    masks: Mapping[str, Any] = field(default_factory=dict)
    deformation: Mapping[str, Any] = field(default_factory=dict)
    field: DisplacementField | None = None  # last: the name hides dataclasses.field below it

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64)
        if m.shape != (3, 3):
            raise ConfigError(f"matrix must be 3x3, got shape {m.shape}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    def map_points(self, xy: Any, *, inverse: bool = False) -> np.ndarray:
        """Fixed pixels ``xy`` (N, 2) to moving pixels (``inverse``: moving to fixed), field included."""
        return map_points(self.matrix, self.field, xy, inverse=inverse)

    @property
    def final_mi(self) -> float:
        """Mean similarity over levels at the end (the value the optimiser maximised)."""
        return float(np.mean(self.level_scores)) if self.level_scores else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``"matrix"`` holds the 3x3 matrix as nested lists."""
        return {
            "matrix": self.matrix.tolist(),
            "transform": self.transform,
            "metric": self.metric,
            "parameters": list(map(float, self.parameters)),
            "level_scores": list(map(float, self.level_scores)),
            "loss_history": list(map(float, self.loss_history)),
            "iterations": int(self.iterations),
            "init": dict(self.init),
            "timings": {k: float(v) for k, v in self.timings.items()},
            "device": self.device,
            "seed": int(self.seed),
            "config": dict(self.config),
            "versions": dict(self.versions),
            "fixed_shape": list(self.fixed_shape),
            "moving_shape": list(self.moving_shape),
            "masks": {k: dict(v) for k, v in self.masks.items()},
            "field": None if self.field is None else self.field.to_dict(),
            "deformation": dict(self.deformation),
            "convention": "fixed->moving, full-resolution pixels (x=column, y=row, origin at the "
            "centre of the top-left pixel); registered(p) = moving(M @ p)",
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistrationResult:
        """Inverse of :meth:`to_dict` (extra keys such as ``"convention"`` are ignored)."""
        return cls(
            matrix=np.asarray(data["matrix"], dtype=np.float64),
            transform=data["transform"],
            metric=data["metric"],
            parameters=list(data.get("parameters", [])),
            level_scores=list(data.get("level_scores", [])),
            loss_history=list(data.get("loss_history", [])),
            iterations=int(data.get("iterations", 0)),
            init=dict(data.get("init", {})),
            timings=dict(data.get("timings", {})),
            device=data.get("device", "cpu"),
            seed=int(data.get("seed", 0)),
            config=dict(data.get("config", {})),
            versions=dict(data.get("versions", {})),
            fixed_shape=tuple(data.get("fixed_shape", ())),
            moving_shape=tuple(data.get("moving_shape", ())),
            masks={k: dict(v) for k, v in data.get("masks", {}).items()},
            field=None if not data.get("field") else DisplacementField.from_dict(data["field"]),
            deformation=dict(data.get("deformation") or {}),
        )

    def to_json(self, path: Any = None) -> str:
        """Serialise to JSON text; also write it to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            from pathlib import Path

            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text: str) -> RegistrationResult:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RegistrationResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
