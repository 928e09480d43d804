"""The driver killed (SIGKILL) mid-batch, a second driver refused, Ctrl-C, then resume."""

from __future__ import annotations

import os
import signal
import time

import pytest
from _batch_data import FAST, cli, make_pairs, peek, spawn, status, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # the CLI's run starts a LocalCluster


def test_driver_sigkill_then_resume(tmp_path):
    manifest = make_pairs(tmp_path / "data", n_good=3)
    queue, out = tmp_path / "q.sqlite", tmp_path / "out.zarr"
    cli("submit", manifest, "--queue", queue, "--out", out, *FAST)
    driver = spawn("run", "--queue", queue, "--workers", "1", "--max-in-flight", "1")
    try:
        wait_for(lambda: any(r.state == "done" for r in peek(queue).values()), 120, "a first pair done")
        second = cli("run", "--queue", queue, "--workers", "1", check=1)  # the first is alive
        assert "another 'run' is alive" in second.stderr and f"pid {driver.pid}" in second.stderr
    finally:
        os.kill(driver.pid, signal.SIGKILL)  # the driver dies without any cleanup ...
        driver.wait(30)
        time.sleep(0.5)
        os.killpg(driver.pid, signal.SIGKILL)  # ... then its orphaned LocalCluster processes
    before = status(queue)
    done_before = {k: r for k, r in before.items() if r["state"] == "done"}
    assert done_before and len(done_before) < 3, before
    assert any(r["state"] == "running" for r in before.values()), before  # left behind by the dead driver

    resumed = cli("run", "--queue", queue, "--workers", "2")
    assert "left running by a stopped driver go back to pending" in resumed.stdout
    after = status(queue)
    assert all(r["state"] == "done" for r in after.values()), after
    for pair_id, r in done_before.items():  # done pairs were not recomputed
        assert after[pair_id]["finished_at"] == r["finished_at"] and after[pair_id]["attempts"] == 1
    assert max(r["attempts"] for r in after.values()) == 2  # the interrupted one ran again


def test_ctrl_c_stops_cleanly(tmp_path):
    manifest = make_pairs(tmp_path / "data", n_good=2)
    queue = tmp_path / "q.sqlite"
    slow = ["--transform", "translation", "--max-iterations", "5000", "--option", "min_iterations=5000",
            "--option", "init=moments", "--max-size", "200"]
    cli("submit", manifest, "--queue", queue, "--out", tmp_path / "out.zarr", *slow)
    driver = spawn("run", "--queue", queue, "--workers", "1", "--no-warp")
    try:
        wait_for(lambda: any(r.state == "running" for r in peek(queue).values()), 90, "a running pair")
        os.kill(driver.pid, signal.SIGINT)
        out, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, out
    assert "run again to resume" in out
    assert {r["state"] for r in status(queue).values()} == {"pending"}  # consistent, nothing running
