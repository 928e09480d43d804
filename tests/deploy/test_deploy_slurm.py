"""Batches through a real SLURM scheduler: ``drmime-batch run --cluster slurm`` on a throwaway
single-node cluster (``slurm`` fixture, ``_slurm_support.py``), with jobs cancelled under a pair,
jobs that can never start, and the driver itself stopped or killed mid-batch.

The cluster configuration is the shipped ``deploy/hpc/slurm-gpu.yaml`` with the changes a user
trying it on a workstation makes (1 core, no GPU, the ``debug`` partition, loopback, this python):
what passes here is the example a user starts from. Every command runs as a subprocess, as typed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from _slurm_support import PARTITION, SlurmCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
#: tiny pairs, few iterations: a pair takes seconds, most of it in starting torch
SMALL = ["--max-iterations", "10", "--max-size", "128", "--levels", "1", "--points", "256", "--init", "moments"]
#: pairs slow enough (a few seconds of iterations) to be caught in the middle
SLOWER = ["--max-iterations", "200", "--option", "min_iterations=200", "--max-size", "128", "--levels", "1",
          "--points", "256", "--init", "moments"]
#: how long SLURM jobs may outlive a killed driver: a connected worker stops when its scheduler's
#: connection breaks (then waits for the pair it registers, if any); one still starting gives up
#: after dask-jobqueue's death-timeout (60 s, left at its default here)
WORKERS_OUTLIVE_S = 90


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="session")
def four_pairs(tiny_manifest: Path) -> Path:
    """Four pairs of 128 px crops (each stain onto H&E and H&E onto each stain)."""
    manifest = tiny_manifest.parent / "four-pairs.csv"
    manifest.write_text(
        "pair_id,fixed,moving\nCD31-to-He,He.tif,CD31.tif\nKi67-to-He,He.tif,Ki67.tif\n"
        "He-to-CD31,CD31.tif,He.tif\nHe-to-Ki67,Ki67.tif,He.tif\n",
        encoding="utf-8",
    )
    return manifest


def cpu_config(folder: Path, **changes: Any) -> Path:
    """``deploy/hpc/slurm-gpu.yaml`` made to run on the test cluster, with ``changes`` over it."""
    config = yaml.safe_load((DEPLOY / "hpc" / "slurm-gpu.yaml").read_text(encoding="utf-8"))
    slurm = config["jobqueue"]["slurm"]
    slurm.update(
        name="drmime-test", cores=1, memory="2GB", walltime="00:05:00", queue=PARTITION, interface="lo",
        python=sys.executable, log_directory=str(folder / "jobs"), local_directory=str(folder / "scratch"),
    )
    slurm.pop("job-extra-directives")  # --constraint=a100|h100: no such node here
    slurm["scheduler-options"] = {"interface": "lo", "dashboard_address": ":0"}
    slurm.update(changes)
    config["drmime-batch"] = {"gpus-per-job": 0, "prologue": ["export OMP_NUM_THREADS=1"]}
    path = folder / "slurm-cpu.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _env(slurm: SlurmCluster) -> dict[str, str]:
    # A worker that leaves its scheduler (its job cancelled) keeps its job's slot in the adaptive
    # cluster for dask's lost-worker-timeout (15 s by default) before a replacement job is asked
    # for: 2 s here, the same replacement sooner.
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "2s"}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def cli(slurm: SlurmCluster, *args: Any, cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """``drmime-batch ARGS`` with the test cluster's ``SLURM_CONF``, finished."""
    return subprocess.run([sys.executable, "-m", "drmime_batch", *map(str, args)], cwd=cwd, env=_env(slurm),
                          text=True, capture_output=True, timeout=timeout, check=False)


class Run:
    """``drmime-batch ARGS`` started in the background (its own session: signals reach it alone),
    its output read line by line as it comes."""

    def __init__(self, slurm: SlurmCluster, *args: Any, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "drmime_batch", *map(str, args)], cwd=cwd,
                                     env=_env(slurm), text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_start(self, timeout: float = 120) -> str:
        """The first pair the driver reports started on a worker (``start  PAIR on ADDRESS``).

        The driver's own report, not the queue: a pair's worker column keeps the worker of an
        earlier attempt.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.match(r"start\s+(\S+) on tcp://", line)
                if found:
                    return found.group(1)
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"run ended (exit {self.proc.returncode}) before a pair started:\n{self.output}")
            time.sleep(0.2)
        raise AssertionError(f"no pair started on a SLURM worker within {timeout} s:\n{self.output}")

    def wait(self, timeout: float) -> int:
        """Wait for the end (killed if it outlasts ``timeout``); the exit status."""
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(10)
        return self.proc.returncode


def submit(slurm: SlurmCluster, folder: Path, manifest: Path, options: list[str]) -> Path:
    queue = folder / "batch.sqlite"
    res = cli(slurm, "submit", manifest, "--queue", queue, "--out", folder / "out.zarr", "--quiet", *options,
              cwd=folder)
    assert res.returncode == 0, res.stderr
    return queue


def rows(queue: Path) -> dict[str, Any]:
    """The queue's rows by pair id (read in this process: cheap enough to poll)."""
    from drmime_batch.queue import Queue

    with Queue.open(queue) as q:
        return {r.pair_id: r for r in q.rows()}


def run_args(queue: Path, config: Path, max_jobs: int = 2) -> list[Any]:
    return ["run", "--queue", queue, "--cluster", "slurm", "--cluster-config", config, "--min-jobs", "0",
            "--max-jobs", max_jobs, "--no-warp"]


# ------------------------------------------------------------------------------------ tests
def test_batch_runs_in_slurm_jobs_and_leaves_none(slurm, tmp_path, four_pairs):
    """Four pairs through adaptive SLURM jobs (0..2), warped too; no job is left afterwards."""
    queue = submit(slurm, tmp_path, four_pairs, SMALL)
    config = cpu_config(tmp_path)
    res = cli(slurm, *[a for a in run_args(queue, config) if a != "--no-warp"], "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    done = rows(queue)
    assert {p: r.state for p, r in done.items()} == dict.fromkeys(
        ["CD31-to-He", "Ki67-to-He", "He-to-CD31", "He-to-Ki67"], "done")
    for pair in done:
        assert (tmp_path / "out.zarr" / pair / "transform").is_dir()
        assert (tmp_path / "out.zarr" / pair / "registered").is_dir()
    # the pairs ran on workers of SLURM jobs: each worker address is in a job's log
    job_logs = " ".join(p.read_text(errors="replace") for p in (tmp_path / "jobs").glob("drmime-test-*.err"))
    assert job_logs, "no SLURM job wrote a log"
    for row in done.values():
        assert re.search(rf"Start worker at:\s+{re.escape(row.worker)}\b", job_logs), row.worker
    assert slurm.wait_no_live_jobs(30) == []


def test_pair_under_a_cancelled_job_is_rerun_once(slurm, tmp_path, tiny_manifest):
    """``scancel`` of the job whose worker registers a pair: it is rerun elsewhere, nothing lost or doubled."""
    queue = submit(slurm, tmp_path, tiny_manifest, SLOWER)
    # one job at a time: the running job is the one registering the pair
    run = Run(slurm, *run_args(queue, cpu_config(tmp_path), max_jobs=1), cwd=tmp_path)
    try:
        pair = run.wait_for_start()
        first_worker = rows(queue)[pair].worker
        running = [j for j in slurm.jobs() if j["state"] == "RUNNING" and j["name"] == "drmime-test"]
        assert len(running) == 1, running
        subprocess.run(["scancel", running[0]["id"]], env=slurm.env, check=True, timeout=30)
    finally:
        rc = run.wait(240)
    out = run.output
    assert rc == 0, out
    final = rows(queue)
    assert {r.state for r in final.values()} == {"done"}, out
    assert final[pair].attempts == 2, out  # the retry shows
    assert final[pair].worker != first_worker
    assert [r.attempts for p, r in final.items() if p != pair] == [1], out
    for p in final:  # finished once each
        assert sum(line.split()[:2] == ["done", p] for line in out.splitlines()) == 1, out
    assert slurm.wait_no_live_jobs(30) == []


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({"queue": "no-such-partition"},
         (r"sbatch refused the worker job: invalid partition specified: no-such-partition; "
          r"Batch job submission failed: Invalid partition name specified")),
        ({"walltime": "01:00:00"},
         r"SLURM job \d+ can never start: PartitionTimeLimit, its walltime is over the partition's time limit"),
    ],
    ids=["no-such-partition", "walltime-over-the-limit"],
)
def test_job_that_cannot_start_stops_the_run_with_its_cause(slurm, tmp_path, four_pairs, changes, cause):
    queue = submit(slurm, tmp_path, four_pairs, SMALL)
    config = cpu_config(tmp_path, **changes)
    # would wait forever before: the subprocess timeout is the failure
    res = cli(slurm, *run_args(queue, config), "--quiet", cwd=tmp_path, timeout=90)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert re.fullmatch(rf"drmime-batch run: error: {re.escape(str(config))}: {cause}.*", lines[0]), lines[0]
    assert {r.state for r in rows(queue).values()} == {"pending"}
    assert slurm.wait_no_live_jobs(20) == []  # the pending job was cancelled on the way out


@pytest.mark.parametrize(
    ("changes", "cause"),
    [
        ({"python": "/no/such/python"}, r"/no/such/python: No such file or directory"),
        ({"worker-extra-args": ["--no-such-option"]}, r"Error: No such option '--no-such-option'\."),
    ],
    ids=["no-such-python", "bad-worker-option"],
)
def test_job_that_dies_at_once_stops_the_run_with_its_cause(slurm, tmp_path, four_pairs, changes, cause):
    """The worker command fails on the compute node and the job ends in a second: the run stops
    (it waited forever before) naming the job, its state and exit code and its error file's end."""
    queue = submit(slurm, tmp_path, four_pairs, SMALL)
    config = cpu_config(tmp_path, **changes)
    started = time.monotonic()
    res = cli(slurm, *run_args(queue, config), "--quiet", cwd=tmp_path, timeout=90)
    took = time.monotonic() - started
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    found = re.fullmatch(
        rf"drmime-batch run: error: {re.escape(str(config))}: SLURM job (\d+) ended before its worker "
        rf"connected \((FAILED|COMPLETED), exit code \d+\); {re.escape(str(tmp_path / 'jobs'))}/drmime-test-(\d+)\.err "
        rf"ends: .*{cause}", lines[0])
    assert found is not None and found.group(1) == found.group(3), lines[0]
    assert took < 60, f"the run took {took:.0f} s to stop"
    assert {r.state for r in rows(queue).values()} == {"pending"}
    assert slurm.wait_no_live_jobs(20) == []


def test_controller_not_running_stops_the_run_with_its_cause(slurm, tmp_path, four_pairs):
    """``SLURM_CONF`` naming a controller that does not answer: sbatch's reason, one line."""
    dead = tmp_path / "slurm.conf"
    port = next(line for line in slurm.conf.read_text().splitlines() if line.startswith("SlurmctldPort="))
    from _slurm_support import _free_ports

    # MessageTimeout=1: sbatch gives up on the silent port after its first tries (about 9 s of
    # retries at the default 10 s), with the same message
    dead.write_text(slurm.conf.read_text().replace(port, f"SlurmctldPort={_free_ports(1)[0]}\nMessageTimeout=1"))
    queue = submit(slurm, tmp_path, four_pairs, SMALL)
    offline = SlurmCluster(slurm.folder, dead, {**slurm.env, "SLURM_CONF": str(dead)})
    res = cli(offline, *run_args(queue, cpu_config(tmp_path)), "--quiet", cwd=tmp_path, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "sbatch refused the worker job:" in lines[0] and "Unable to contact slurm controller" in lines[0], lines
    assert {r.state for r in rows(queue).values()} == {"pending"}


def test_driver_stopped_or_killed_mid_batch_leaves_no_job_and_resumes(slurm, tmp_path, tiny_manifest):
    """SIGINT and SIGTERM: the driver cancels its jobs; SIGKILL: the workers end with their
    scheduler and their jobs with them; the next ``run`` finishes every pair.

    Two pairs on up to two jobs: each run has a pair on every worker it starts, as with more."""
    queue = submit(slurm, tmp_path, tiny_manifest, SLOWER)
    args = run_args(queue, cpu_config(tmp_path))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        run = Run(slurm, *args, cwd=tmp_path)
        try:
            run.wait_for_start()
            assert slurm.live_jobs(), f"no SLURM job while a pair registers:\n{run.output}"
            os.kill(run.proc.pid, sig)
        finally:
            rc = run.wait(90)
        if sig == signal.SIGKILL:
            assert any(r.state == "running" for r in rows(queue).values())  # left so by the dead driver
            assert slurm.wait_no_live_jobs(WORKERS_OUTLIVE_S) == [], "SLURM jobs outlive their killed driver"
        else:
            assert rc == 130, run.output
            assert "stopped; run again to resume" in run.output
            assert all(r.state in ("pending", "done") for r in rows(queue).values()), run.output
            assert slurm.wait_no_live_jobs(15) == [], f"jobs left after {sig.name}"
    res = cli(slurm, *args, "--quiet", cwd=tmp_path, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {r.state for r in rows(queue).values()} == {"done"}
    assert slurm.wait_no_live_jobs(30) == []


# ------------------------------------------------------------------------------------ the PBS dialect
def _slurm_torque_wrappers() -> bool:
    """``qsub`` is SLURM's PBS/Torque wrapper (Debian: slurm-wlm-torque), not a PBS server's."""
    import shutil

    qsub = shutil.which("qsub")
    return qsub is not None and "slurm" in Path(qsub).read_text(errors="replace")[:20000].lower()


@pytest.mark.skipif(not _slurm_torque_wrappers(), reason="no qsub/qdel of SLURM's PBS wrappers (slurm-wlm-torque)")
def test_pbs_job_scripts_run_through_slurm_pbs_wrappers(slurm, tmp_path, tiny_manifest):
    """``--cluster pbs`` with the shipped pbs-gpu.yaml, made to run here: the PBS script
    (``#PBS -l select=...``, walltime, ``-j oe``) submitted with qsub, cancelled with qdel.

    Not a PBS server (none is packaged for Debian 12): SLURM runs the jobs behind its wrappers.
    """
    config = yaml.safe_load((DEPLOY / "hpc" / "pbs-gpu.yaml").read_text(encoding="utf-8"))
    config["jobqueue"]["pbs"].update(
        name="drmime-pbs", cores=1, memory="2GB", walltime="00:05:00", queue=PARTITION, interface="lo",
        python=sys.executable, local_directory=str(tmp_path / "scratch"),
        scheduler_options={"interface": "lo", "dashboard_address": ":0"},
    )
    config["drmime-batch"] = {"gpus-per-job": 0}
    path = tmp_path / "pbs-cpu.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    queue = submit(slurm, tmp_path, tiny_manifest, SMALL)
    res = cli(slurm, "run", "--queue", queue, "--cluster", "pbs", "--cluster-config", path, "--max-jobs", "2",
              "--no-warp", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert {r.state for r in rows(queue).values()} == {"done"}
    assert any(j["name"] == "drmime-pbs" for j in slurm.jobs()), slurm.jobs()  # the jobs qsub submitted
    assert slurm.wait_no_live_jobs(30) == []
