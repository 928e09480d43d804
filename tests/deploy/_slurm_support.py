"""A throwaway single-node SLURM cluster for the deployment tests.

:func:`single_node_slurm` writes a ``slurm.conf`` (one node of 2 CPUs on 127.0.0.1, one partition
``debug``) and a munge key into a temporary folder, starts ``munged`` (as the ``munge`` user),
``slurmctld`` and ``slurmd`` in the foreground as children of the test process, and on exit cancels
every job, waits for the queue to empty and stops the three daemons. Nothing outside the folder is
written: the client commands (``sbatch``, ``squeue``, ``scancel``) find the cluster through
``SLURM_CONF``, which :attr:`SlurmCluster.env` sets.

:func:`slurm_unavailable` says why this cannot work here (no binaries, not root, no ``munge``
user), so that the tests skip with that reason on a laptop.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PARTITION", "PARTITION_MAX_TIME", "SlurmCluster", "single_node_slurm", "slurm_unavailable"]

_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "squeue", "scancel", "sinfo")
#: the only partition of the test cluster, and its walltime limit
PARTITION = "debug"
PARTITION_MAX_TIME = "00:10:00"


def slurm_unavailable() -> str | None:
    """Why a SLURM cluster cannot be started on this machine, or None when it can."""
    missing = [name for name in (*_DAEMONS, *_CLIENTS) if shutil.which(name) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} not found; Debian/Ubuntu: "
                "apt-get install slurmctld slurmd slurm-client munge)")
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root (the tests start their own single-node cluster)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "there is no 'munge' user to run munged as (install the munge package)"
    return None


@dataclass
class SlurmCluster:
    """A running single-node cluster; ``env`` is what a client process needs to reach it."""

    folder: Path
    conf: Path
    env: dict[str, str] = field(default_factory=dict)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), env=self.env, text=True, capture_output=True, timeout=30,
                              check=check)

    def jobs(self) -> list[dict[str, str]]:
        """The jobs ``squeue`` lists (any state it still shows): id, name, state and reason."""
        out = self._run("squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%r").stdout
        rows = []
        for line in out.splitlines():
            job_id, name, state, reason = line.strip().split("|", 3)
            rows.append({"id": job_id, "name": name, "state": state, "reason": reason})
        return rows

    def live_jobs(self) -> list[dict[str, str]]:
        """Jobs that are not over: pending, configuring, running or completing."""
        return [j for j in self.jobs() if j["state"] in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING",
                                                         "SUSPENDED", "REQUEUED", "RESIZING")]

    def wait_no_live_jobs(self, timeout: float) -> list[dict[str, str]]:
        """Wait until no job is left that is not over; return what is left at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.live_jobs()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    def cancel_all(self) -> None:
        """``scancel`` every job that is not over."""
        ids = [j["id"] for j in self.live_jobs()]
        if ids:
            self._run("scancel", *ids, check=False)

    def log(self, name: str) -> str:
        """The tail of a daemon's log (``slurmctld``, ``slurmd``, ``munged``), for failure messages."""
        path = self.folder / "log" / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.is_file() else f"(no {path.name})"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _slurm_conf(folder: Path, ctld_port: int, slurmd_port: int, cpus: int, memory_mb: int) -> str:
    return f"""\
# a throwaway single-node cluster of the drmime-batch tests: loopback only, its own state and munge key
ClusterName=drmimetest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
PlugStackConfig={folder}/plugstack.conf
# no cgroups (containers, CI): processes tracked through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# the node is described here, whatever the machine has
SlurmdParameters=config_overrides
ReturnToService=2
# cancelled jobs are killed at once, and gone from squeue soon after they end
KillWait=2
MinJobAge=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime={PARTITION_MAX_TIME} State=UP
"""


def _wait(ready, timeout: float, what: str, procs: dict[str, subprocess.Popen[bytes]], folder: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [name for name, p in procs.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2000:]}"
                             for f in sorted((folder / "log").glob("*.log")))
            why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout} s"
            raise RuntimeError(f"single-node SLURM: {what} ({why})\n{logs}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextlib.contextmanager
def single_node_slurm(*, cpus: int = 2, memory_mb: int = 8000) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd on 127.0.0.1 with everything in a temporary folder.

    Parameters
    ----------
    cpus, memory_mb : int
        What the one node offers (``SlurmdParameters=config_overrides``: not checked against the
        machine).

    Yields
    ------
    SlurmCluster
        Up (the node idle); on exit every job is cancelled, the queue waited empty and the
        daemons stopped, then the folder removed.
    """
    # not under pytest's basetemp: munged needs every directory above its socket to be searchable
    # by all, and pytest makes its folders private
    folder = Path(tempfile.mkdtemp(prefix="drmime-slurm-"))
    folder.chmod(0o755)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    cluster = SlurmCluster(folder, folder / "slurm.conf")
    try:
        for sub in ("state", "spool", "log"):
            (folder / sub).mkdir()
        munge_dir = folder / "munge"
        munge_dir.mkdir(mode=0o755)
        shutil.chown(munge_dir, "munge", "munge")
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(key, "munge", "munge")
        (folder / "plugstack.conf").write_text("", encoding="ascii")
        ctld_port, slurmd_port = _free_ports(2)
        cluster.conf.write_text(_slurm_conf(folder, ctld_port, slurmd_port, cpus, memory_mb), encoding="ascii")
        cluster.env = {**os.environ, "SLURM_CONF": str(cluster.conf)}

        def spawn(name: str, args: list[str], **kwargs: object) -> None:
            with open(folder / "log" / f"{name}.out", "wb") as out:
                procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=cluster.env,
                                               cwd=folder, start_new_session=True, **kwargs)  # type: ignore[call-overload]

        spawn("munged", ["munged", "--foreground", f"--key-file={key}", f"--socket={munge_dir}/munge.socket",
                         f"--pid-file={munge_dir}/munged.pid", f"--log-file={folder}/log/munged.log",
                         f"--seed-file={munge_dir}/munged.seed"], user="munge", group="munge", extra_groups=[])
        _wait(lambda: (munge_dir / "munge.socket").exists(), 30, "munged did not start", procs, folder)
        spawn("slurmctld", ["slurmctld", "-D", "-c", "-f", str(cluster.conf)])
        spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(cluster.conf)])

        def node_idle() -> bool:
            res = cluster._run("sinfo", "--noheader", "--format=%t", check=False)
            return res.returncode == 0 and res.stdout.strip() == "idle"

        _wait(node_idle, 60, "the node did not come up idle", procs, folder)
        yield cluster
    finally:
        if "slurmctld" in procs and procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                cluster.cancel_all()
                cluster.wait_no_live_jobs(30)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in procs:
                _stop(procs[name])
        shutil.rmtree(folder, ignore_errors=True)
