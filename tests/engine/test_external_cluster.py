"""``run`` against a real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1.

One worker advertises ``--resources GPU=1``: ``--device cuda`` must route every pair to it. Then a
worker is SIGKILLed in the middle of a pair: the pair is retried and the batch completes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _batch_data import FAST, cli, make_pairs, peek, spawn, status, wait_for

distributed = pytest.importorskip("distributed")

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _dask(*args: str, log: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("dask")
    return subprocess.Popen([str(exe), *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    sfile = tmp / "scheduler.json"
    procs = [_dask("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                   "--scheduler-file", str(sfile), log=tmp / "scheduler.log")]
    try:
        wait_for(sfile.exists, 60, "the scheduler file")
        common = ["--scheduler-file", str(sfile), "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                  "--host", "127.0.0.1", "--death-timeout", "60"]
        procs.append(_dask("worker", *common, "--name", "cpu-worker", log=tmp / "w1.log"))
        procs.append(_dask("worker", *common, "--name", "gpu-worker", "--resources", "GPU=1", log=tmp / "w2.log"))
        with distributed.Client(scheduler_file=str(sfile), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        yield {"file": sfile, "address": address, "tmp": tmp}
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def _workers(sfile: Path) -> dict[str, dict]:
    with distributed.Client(scheduler_file=str(sfile), timeout="30s") as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        pids = client.run(os.getpid)
    return {addr: {"name": w["name"], "resources": w.get("resources", {}), "pid": pids[addr]}
            for addr, w in info.items()}


def test_scheduler_file_and_gpu_routing(cluster, tmp_path):
    manifest = make_pairs(tmp_path / "data", n_good=2)
    queue = tmp_path / "q.sqlite"
    cli("submit", manifest, "--queue", queue, "--out", tmp_path / "out.zarr", *FAST)
    cli("run", "--queue", queue, "--scheduler-file", cluster["file"], "--no-warp", "--quiet")
    rows = status(queue)
    workers = _workers(cluster["file"])
    assert all(r["state"] == "done" and r["worker"] in workers for r in rows.values()), rows
    assert not (tmp_path / "out.zarr" / "good0" / "registered").exists()  # --no-warp

    # --device cuda asks for resources={"GPU": 1}: only the GPU worker may take the pairs
    gpu = [a for a, w in workers.items() if w["resources"].get("GPU")]
    assert len(gpu) == 1
    queue2 = tmp_path / "q2.sqlite"
    cli("submit", manifest, "--queue", queue2, "--out", tmp_path / "out2.zarr", *FAST)
    proc = cli("run", "--queue", queue2, "--scheduler", cluster["address"], "--device", "cuda", "--no-warp",
               "--json", check=None)
    rows = {r["pair_id"]: r for r in json.loads(proc.stdout)}
    assert {r["worker"] for r in rows.values()} == set(gpu), rows
    for r in rows.values():  # on a machine without CUDA the pairs fail, naming the cause
        assert r["state"] == "done" or "cuda" in r["error"].lower(), r
    assert proc.returncode == (0 if all(r["state"] == "done" for r in rows.values()) else 1)


def test_worker_sigkill_mid_pair_is_retried(cluster, tmp_path):
    manifest = make_pairs(tmp_path / "data", n_good=1)
    queue = tmp_path / "q.sqlite"
    # 150 iterations on each of two levels: seconds on a warm worker, still mid-pair after the 1 s
    # below; the retry, on a worker of its own or the other one, runs them all again
    slow = ["--transform", "translation", "--max-iterations", "150", "--option", "min_iterations=150",
            "--option", "init=moments", "--max-size", "200"]
    cli("submit", manifest, "--queue", queue, "--out", tmp_path / "out.zarr", *slow)
    driver = spawn("run", "--queue", queue, "--scheduler-file", cluster["file"], "--no-warp")
    try:
        row = wait_for(lambda: (r := peek(queue)["good0"]).state == "running" and r.worker and r,
                       90, "the pair to start on a worker")
        victim = _workers(cluster["file"])[row.worker]["pid"]
        time.sleep(1.0)
        assert peek(queue)["good0"].state == "running"  # still mid-pair
        os.kill(victim, signal.SIGKILL)
        out, _ = driver.communicate(timeout=180)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, out
    row = status(queue)["good0"]
    assert row["state"] == "done" and row["attempts"] == 2, (row, out)
    assert row["worker"] != "" and (tmp_path / "out.zarr" / "good0" / "transform").is_dir()
