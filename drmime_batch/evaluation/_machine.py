"""What a benchmark ran on: one description of the machine, recorded next to every figure.

Benchmarks compare against a peer measured in the same run, but the absolute figures still need
the machine they came from (processor, cores, memory, load, library versions).
"""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Iterable
from typing import Any

__all__ = ["machine_info", "machine_summary"]


def _cpu_model() -> str | None:
    """The processor's marketing name from ``/proc/cpuinfo`` (Linux), else None."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info(versions: Iterable[str] = ("numpy", "torch")) -> dict[str, Any]:
    """The machine and the versions of ``versions`` (modules that import; others are left out).

    Returns
    -------
    dict
        ``platform``, ``python``, ``cpu_count``, ``processor``, and where known ``cpu_model``,
        ``memory_gib``, ``load_average`` and ``<module>_version`` for each module.

    >>> info = machine_info(versions=("numpy", "math", "no_such_module"))
    >>> info["cpu_count"] == os.cpu_count(), "numpy_version" in info, "math_version" in info
    (True, True, False)
    """
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    if (model := _cpu_model()) is not None:
        info["cpu_model"] = model
    try:
        import psutil  # type: ignore[import-untyped]

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # psutil is a dependency, but a benchmark should still run without it
        pass
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    for name in versions:
        try:
            version = getattr(importlib.import_module(name), "__version__", None)
        except Exception:  # noqa: BLE001 - an optional peer that fails to import is simply absent
            continue
        if version is not None:
            info[f"{name}_version"] = str(version)
    return info


def machine_summary() -> str:
    """:func:`machine_info` as one line: system, cores, processor, memory, Python.

    >>> "CPUs" in machine_summary()
    True
    """
    info = machine_info(versions=())
    memory = f"{info['memory_gib']:.0f} GiB RAM" if "memory_gib" in info else "RAM ?"
    cpu = info.get("cpu_model", info["processor"] or "?")
    return (f"{platform.system()} {platform.machine()}, {info['cpu_count']} CPUs ({cpu}), {memory}, "
            f"Python {info['python']}")
