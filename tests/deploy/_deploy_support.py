"""Helpers of the deployment tests: real ``dask scheduler`` / ``dask worker`` processes on
127.0.0.1 and ``drmime-batch`` subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence


def tls_args(certs: Path, prefix: str = "good") -> list[str]:
    return [
        "--tls-ca-file", str(certs / f"{prefix}-ca.pem"),
        "--tls-cert", str(certs / f"{prefix}.pem"),
        "--tls-key", str(certs / f"{prefix}-key.pem"),
    ]


def write_tls_config(path: Path, certs: Path, prefix: str = "good") -> Path:
    """A cluster config with only the ``distributed.comm.tls`` section (client role)."""
    path.write_text(
        "distributed:\n"
        "  comm:\n"
        "    require-encryption: true\n"
        "    tls:\n"
        f"      ca-file: {certs / f'{prefix}-ca.pem'}\n"
        "      client:\n"
        f"        cert: {certs / f'{prefix}.pem'}\n"
        f"        key: {certs / f'{prefix}-key.pem'}\n",
        encoding="utf-8",
    )
    return path


# ------------------------------------------------------------------------------- processes
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


@contextlib.contextmanager
def hpc_style_cluster(
    folder: Path, *, n_workers: int = 2, extra: Sequence[str] = ()
) -> Iterator[Path]:
    """``dask scheduler --scheduler-file F`` + ``n_workers`` × ``dask worker --scheduler-file F
    --resources GPU=1``, as an HPC job would start them; yields F and stops the processes."""
    scheduler_file = folder / "scheduler.json"
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, args: list[str]) -> None:
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "dask", *args], stdout=out, stderr=subprocess.STDOUT,
                env=_env(), cwd=folder, start_new_session=True,
            )
        )
        out.close()

    try:
        spawn("scheduler", ["scheduler", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                            "--port", "0", "--dashboard-address", ":0", *extra])
        _wait(lambda: scheduler_file.is_file() and scheduler_file.stat().st_size > 0, 60, procs, logs)
        for i in range(n_workers):
            spawn(f"worker{i}", ["worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                                 "--nthreads", "1", "--resources", "GPU=1", "--name", f"gpu-worker-{i}",
                                 "--no-dashboard", "--memory-limit", "0", *extra])
        yield scheduler_file
    finally:
        for proc in procs[::-1]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def _wait(ready, timeout: float, procs, logs: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            text = "\n".join(f.read_text(errors="replace")[-2000:] for f in sorted(logs.glob("*.log")))
            raise RuntimeError(f"dask processes did not come up:\n{text}")
        time.sleep(0.1)


def scheduler_address(scheduler_file: Path) -> str:
    return str(json.loads(scheduler_file.read_text())["address"])


def cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``drmime-batch ARGS`` in a subprocess (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "drmime_batch", *args], cwd=cwd, env=_env(), text=True,
        capture_output=True, timeout=timeout,
    )
