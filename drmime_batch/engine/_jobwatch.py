"""Watching a dask-jobqueue cluster's own jobs: the ones that can never start, or die at once.

dask-jobqueue submits a job and waits for its worker. Three ways for that worker never to come
leave it waiting forever, with nothing shown:

* the submission is refused (``sbatch``: "Invalid partition name specified"; ``bsub``: "User
  permission denied. Job not submitted."): dask-jobqueue logs the error once and waits on;
* the scheduler keeps the job pending for good (SLURM's ``PartitionTimeLimit``: the walltime is
  over the partition's limit), indistinguishable from a job waiting its turn;
* the job starts and ends within seconds, before its worker ever connects (the wrong python on
  the compute nodes, a module not found, a bad worker option): its Job object stays in the
  cluster, which waits for a worker that will not come.

:class:`_JobWatch` finds them: a refused submission (any scheduler, through the job class of
:func:`_watched_job_cls`), and, polling the scheduler every few seconds (one states function per
scheduler, :data:`_SCHEDULERS`), a job that can never start or a job over (or no longer listed)
from which no worker ever connected:

* SLURM (``squeue``, then ``scontrol``/``sacct`` for an ended job): pending for a reason of
  :data:`SLURM_NEVER_STARTS`; over (:data:`SLURM_ENDED`) with its state and ``ExitCode``;
* PBS (``qstat -x -f -F json``, PBS Pro / OpenPBS 19 and later; else plain ``qstat -f``, Torque
  and older PBS): queued with a ``comment`` starting "Can Never Run" (PBS Pro's scheduler);
  finished (``job_state`` F, C on Torque) with its ``Exit_status`` and ``Error_Path``;
* LSF (``bjobs -a -o ... -json``; else the same fields as text): EXIT or DONE with its exit
  code and error file. LSF's pending reasons describe its last dispatch turn and may all clear:
  none is taken as final.

Each stops the batch the way Ctrl-C does (finished pairs stay finished, the others go back to
pending; a dead job while other workers are connected is only warned of, once: one bad node
should not stop the batch) and the cluster, once closed, raises a :class:`ClusterConfigError`
naming the cause: the command's own error, the pending reason, or the dead job's state, exit code
and the last lines of its error file. A scheduler command that is missing or fails detects
nothing: the batch waits as before.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import logging
import re
import shlex
import signal
import subprocess
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drmime_batch.errors import ClusterConfigError

if TYPE_CHECKING:
    from distributed.deploy import Cluster

__all__ = ["SLURM_ENDED", "SLURM_NEVER_STARTS"]

logger = logging.getLogger(__name__)

#: SLURM's reasons (``squeue --format=%r``) for a pending job that can never start as it was
#: submitted, and what each one means for a worker job
SLURM_NEVER_STARTS: dict[str, str] = {
    "PartitionTimeLimit": "its walltime is over the partition's time limit",
    "PartitionNodeLimit": "it asks more nodes than the partition allows",
    "PartitionConfig": "it asks more than the partition's nodes have (cores, memory, GPUs)",
    "BadConstraints": "no node has the cores, memory, GPUs or features it asks",
    "InvalidAccount": "its account is not valid",
    "InvalidQOS": "its QOS is not valid",
    "QOSMaxWallDurationPerJobLimit": "its walltime is over the QOS's limit",
    "AssocMaxWallDurationPerJobLimit": "its walltime is over the account's limit",
    "QOSMaxCpuPerJobLimit": "it asks more cores than the QOS allows",
    "QOSMaxMemoryPerJob": "it asks more memory than the QOS allows",
    "QOSMaxGRESPerJob": "it asks more GPUs than the QOS allows",
    "QOSMaxNodePerJobLimit": "it asks more nodes than the QOS allows",
    "AssocMaxCpuPerJobLimit": "it asks more cores than the account allows",
}
#: SLURM's states (``squeue --format=%T``, ``sacct``'s State) of a job that is over
SLURM_ENDED = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT",
})
#: seconds between two ``squeue`` calls of the watch
_WATCH_EVERY_S = 2.0
#: calls in a row a reason must be seen on (SLURM may give a first reason before it schedules);
#: also the calls an ended job's error file is waited for (a shared file system may show it late)
_WATCH_CONFIRM = 2
#: lines, and characters, of a dead job's error file quoted in the message
_TAIL_LINES = 2
_TAIL_CHARS = 300


class _JobWatch:
    """Finds, while a batch runs, that the cluster's jobs can never start or died at once.

    See the module docstring.

    Parameters
    ----------
    source : str
        The configuration's name, the start of the message.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connected: set[str] = set()
        self._alive: set[str] = set()
        self._warned: set[str] = set()

    def fail(self, reason: str) -> None:
        """Record why the jobs cannot start (the first reason wins) and stop the batch as Ctrl-C does."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason = f"{self.source}: {reason}"
        logger.info("stopping the batch: %s", self.reason)  # raised, hence printed, later
        # The driver loop runs on the main thread and knows nothing of the cluster: interrupt it as
        # Ctrl-C would (the CLI's handler stops the batch cleanly, in-flight pairs back to pending);
        # leaving the cluster's context then raises the reason (_watched_cluster_cls).
        _thread.interrupt_main(signal.SIGINT)

    def raise_if_failed(self, cause: BaseException | None = None) -> None:
        """Raise the recorded reason as a :class:`ClusterConfigError`, if there is one."""
        if self.reason is not None:
            raise ClusterConfigError(self.reason) from cause

    def stop(self) -> None:
        """End the polling thread (idempotent)."""
        self._stop.set()

    # -------------------------------------------------------------------- workers that connected
    def worker_connected(self, name: str) -> None:
        """Note that a worker named ``name`` registered with the scheduler (its loop thread)."""
        with self._lock:
            self._connected.add(name)
            self._alive.add(name)

    def worker_left(self, name: str) -> None:
        """Note that a worker named ``name`` left the scheduler (its loop thread)."""
        with self._lock:
            self._alive.discard(name)

    def any_alive(self) -> bool:
        """Whether some worker is connected now: the batch can go on without a dead job's."""
        with self._lock:
            return bool(self._alive)

    def job_died(self, job_id: str, message: str) -> bool:
        """A job ended before its worker connected: stop the batch when no worker is left to run it
        (the same cause, e.g. the wrong python, will end every job), else warn once and go on (one
        node's failure should not stop hundreds of pairs). True when the batch was stopped."""
        if not self.any_alive():
            self.fail(message)
            return True
        with self._lock:
            first = job_id not in self._warned
            self._warned.add(job_id)
        if first:
            logger.warning("%s: %s; the batch goes on with the workers connected", self.source, message)
        return False

    def ever_connected(self, job: Any) -> bool:
        """Whether a worker of ``job`` (named as the job, or ``<job>-<i>`` for a job of several
        worker processes) ever registered, or the cluster is closing the job itself."""
        if getattr(job, "_drmime_closing", False):  # scaled down or shut: its end is no failure
            return True
        name = str(job.name)
        with self._lock:
            return any(w == name or w.startswith(f"{name}-") for w in self._connected)

    def watch_workers(self, cluster: Cluster) -> None:
        """Have the cluster's (in-process) scheduler report each worker that registers."""
        from distributed.diagnostics.plugin import SchedulerPlugin

        watch = self

        class _WorkerNames(SchedulerPlugin):
            name = "drmime-job-watch"

            names: dict[str, str] = {}  # address -> name: a leaving worker is no longer listed

            def add_worker(self, scheduler: Any, worker: str) -> None:
                state = scheduler.workers.get(worker)
                if state is not None:
                    self.names[worker] = str(state.name)
                    watch.worker_connected(str(state.name))

            def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
                watch.worker_left(self.names.pop(worker, worker))

        async def install() -> None:  # on the scheduler's loop, which iterates its plugins
            cluster.scheduler.add_plugin(_WorkerNames())  # type: ignore[attr-defined]

        cluster.sync(install)  # type: ignore[attr-defined]

    # -------------------------------------------------------------------- polling the scheduler
    def poll(self, cluster: Cluster, kind: str) -> None:
        """Poll the scheduler of ``kind`` (:data:`_SCHEDULERS`) for the cluster's jobs in a daemon
        thread until :meth:`stop`."""
        self.watch_workers(cluster)
        threading.Thread(target=self._poll, args=(weakref.ref(cluster), _SCHEDULERS[kind]), daemon=True,
                         name=f"drmime-{kind}-job-watch").start()

    def _poll(self, ref: weakref.ref[Any], scheduler: _Scheduler) -> None:
        from distributed.core import Status

        seen: dict[str, int] = {}
        ended: dict[str, int] = {}
        while not self._stop.wait(_WATCH_EVERY_S):
            cluster = ref()
            if cluster is None or cluster.status in (Status.closing, Status.closed):
                return
            try:  # the cluster's loop thread changes this dict: a snapshot, tried again next time
                jobs = {str(job.job_id): job for job in list(cluster.workers.values())
                        if getattr(job, "job_id", None)}
            except RuntimeError:
                continue
            finally:
                del cluster
            statuses = scheduler.statuses(list(jobs)) if jobs else {}
            seen = {job: seen.get(job, 0) + 1 for job, status in statuses.items() if status.never_starts}
            for job, count in seen.items():
                if count >= _WATCH_CONFIRM:
                    self.fail(f"{scheduler.name} job {job} can never start: {statuses[job].never_starts} "
                              f"(see jobqueue.{scheduler.kind})")
                    return
            # jobs over whose worker never came
            over = [j for j, status in statuses.items() if status.ended and not self.ever_connected(jobs[j])]
            ended = {j: ended.get(j, 0) + 1 for j in over}
            for job_id, count in ended.items():
                if self.ever_connected(jobs[job_id]):  # registered (or closed) while the command ran
                    continue
                message = _died_message(scheduler, job_id, jobs[job_id], statuses[job_id],
                                        last_try=count > _WATCH_CONFIRM)
                if message is not None and job_id not in self._warned and self.job_died(job_id, message):
                    return


# ------------------------------------------------------------------------------ what the schedulers say
@dataclass(frozen=True)
class _JobEnd:
    """What the scheduler says of a job that is over: its state, exit code and output files."""

    state: str
    exit_code: str | None = None
    stderr: str | None = None
    stdout: str | None = None


@dataclass(frozen=True)
class _JobStatus:
    """One job as the scheduler lists it now.

    ``state`` is the scheduler's own word (``""``: no longer listed); ``ended``: the job is over;
    ``never_starts``: why a pending job can never start; ``end``: what the same command said of an
    ended job (SLURM asks ``scontrol``/``sacct`` for it afterwards instead).
    """

    state: str
    ended: bool = False
    never_starts: str | None = None
    end: _JobEnd | None = None


@dataclass(frozen=True)
class _Scheduler:
    """How the watch asks one batch scheduler about its jobs."""

    name: str  # in the messages: "SLURM job 42 ..."
    kind: str  # the configuration's jobqueue section
    lister: str  # the command that lists the jobs: "no longer in squeue"
    statuses: Callable[[list[str]], dict[str, _JobStatus]]  # {} when the command fails
    job_end: Callable[[str, _JobStatus], _JobEnd | None]
    log_files: Callable[[str, Any, _JobEnd | None], list[Path]]  # stderr first


def _run(*cmd: str) -> subprocess.CompletedProcess[str] | None:
    """``cmd``'s result, None when it cannot run (not installed, hung)."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def _died_message(scheduler: _Scheduler, job_id: str, job: Any, status: _JobStatus, *, last_try: bool) -> str | None:
    """The one line naming a job that ended with no worker connected: its state, exit code and
    the tail of its error (else output) file. None to wait one more poll for a file still empty."""
    end = scheduler.job_end(job_id, status)
    if end is not None:
        what = f"{end.state}, {_exit_text(end.exit_code)}"
    else:
        what = f"{status.state}, exit code unknown" if status.state else f"no longer in {scheduler.lister}, exit code unknown"
    head = f"{scheduler.name} job {job_id} ended before its worker connected ({what})"
    files = scheduler.log_files(job_id, job, end)
    for path in files:
        tail = _log_tail(path)
        if tail:
            return f"{head}; {path} ends: {tail}"
    if not last_try and files:
        return None  # written on the compute node: a shared file system may show it a little later
    where = (f"nothing readable in {' or '.join(map(str, files))}" if files
             else f"its output file is not known (set jobqueue.{scheduler.kind}.log-directory)")
    return f"{head}; {where}"


def _exit_text(code: str | None) -> str:
    """``"127:0"`` -> ``"exit code 127"``; ``"0:9"`` -> ``"signal 9"``; ``"1"`` -> ``"exit code 1"``.

    >>> _exit_text("127:0"), _exit_text("0:9"), _exit_text("1"), _exit_text(None)
    ('exit code 127', 'signal 9', 'exit code 1', 'exit code unknown')
    """
    if not code:
        return "exit code unknown"
    status, _, sig = code.partition(":")
    return f"signal {sig}" if sig not in ("", "0") else f"exit code {status}"


def _log_tail(path: Path) -> str | None:
    """The last non-empty lines of ``path``, on one line; None when it cannot be read or is empty.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "job.err"
    >>> _ = p.write_text("starting\\n\\nTraceback ...\\n  import x\\nModuleNotFoundError: No module named 'x'\\n\\n")
    >>> _log_tail(p)
    "import x | ModuleNotFoundError: No module named 'x'"
    """
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()][-_TAIL_LINES:]
    tail = " | ".join(lines)
    return tail if len(tail) <= _TAIL_CHARS else "..." + tail[-_TAIL_CHARS:]


def _log_directory_files(job: Any, stem: str) -> list[Path]:
    """``<log-directory>/<stem>.err`` and ``.out``, dask-jobqueue's own paths; [] without a folder."""
    folder = getattr(job, "log_directory", None)
    return [] if folder is None else [Path(folder) / f"{stem}.err", Path(folder) / f"{stem}.out"]


# ------------------------------------------------------------------------------ SLURM
def _slurm_statuses(job_ids: list[str]) -> dict[str, _JobStatus]:
    """``squeue``: the pending jobs (with a reason of :data:`SLURM_NEVER_STARTS` or not), then
    the others' states (``""``: squeue no longer knows the job)."""
    pending = _slurm_pending_reasons(job_ids)
    statuses = {j: _JobStatus("PENDING", never_starts=f"{why}, {SLURM_NEVER_STARTS[why]}"
                              if why in SLURM_NEVER_STARTS else None)
                for j, why in pending.items()}
    rest = [j for j in job_ids if j not in pending]
    for job, state in ((_slurm_states(rest) if rest else None) or {}).items():
        statuses[job] = _JobStatus(state, ended=state == "" or state in SLURM_ENDED)
    return statuses


def _slurm_pending_reasons(job_ids: list[str]) -> dict[str, str]:
    """``{job id: reason}`` of those of ``job_ids`` that are pending; ``{}`` when squeue fails."""
    res = _run("squeue", "--noheader", "--states=PENDING", "--format=%i|%r", f"--jobs={','.join(job_ids)}")
    if res is None or res.returncode != 0:  # e.g. every job already gone ("Invalid job id specified")
        return {}
    reasons = {}
    for line in res.stdout.splitlines():
        job, _, why = line.strip().partition("|")
        if job:
            reasons[job] = why
    return reasons


def _slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """``{job id: state}`` of ``job_ids`` (any state), ``""`` for a job squeue no longer knows.

    None when squeue fails (no controller, no command): nothing can be said of the jobs then.
    """
    res = _run("squeue", "--noheader", "--states=all", "--format=%i|%T", f"--jobs={','.join(job_ids)}")
    if res is None:
        return None
    if res.returncode != 0:
        # one unknown job id is an error, several are an empty list
        return dict.fromkeys(job_ids, "") if "Invalid job id" in res.stderr else None
    states = dict.fromkeys(job_ids, "")
    for line in res.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job in states:
            states[job] = state.strip()
    return states


def _slurm_job_end(job_id: str, status: _JobStatus | None = None) -> _JobEnd | None:
    """The state, exit code and output files of an ended job (``scontrol show job``, else
    ``sacct``); None when neither command knows it."""

    def run(*cmd: str) -> str | None:
        res = _run(*cmd)
        return res.stdout if res is not None and res.returncode == 0 else None

    out = run("scontrol", "show", "job", "--oneliner", job_id)
    if out:
        fields = dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", out))
        if fields.get("JobState"):
            return _JobEnd(fields["JobState"], fields.get("ExitCode"), fields.get("StdErr") or None,
                           fields.get("StdOut") or None)
    # the controller has forgotten it (MinJobAge): the accounting database may still know
    out = run("sacct", "--noheader", "--parsable2", "--allocations", "--format=State,ExitCode",
              f"--jobs={job_id}")
    for line in (out or "").splitlines():
        state, _, code = line.strip().partition("|")
        if state:
            return _JobEnd(state.split()[0], code or None)  # "CANCELLED by 0" -> "CANCELLED"
    return None


def _slurm_filename(pattern: str, job_id: str, job_name: str | None) -> str:
    """An ``-e``/``-o`` file name pattern as SLURM expands it for a batch job (``scontrol`` may
    show it unexpanded): ``%j``/``%J``/``%A`` the job id, ``%x`` its name, ``%u`` the user.

    >>> _slurm_filename("logs/%x-%J.err", "42", "drmime"), _slurm_filename("100%%-%j", "7", None)
    ('logs/drmime-42.err', '100%-7')
    """
    import getpass

    def one(found: re.Match[str]) -> str:
        code = found.group(1)
        if code in "jJA":
            return job_id
        if code == "x" and job_name:
            return job_name
        if code == "u":
            with contextlib.suppress(Exception):
                return getpass.getuser()
        return "%" if code == "%" else found.group(0)

    return re.sub(r"%(.)", one, pattern)


def _slurm_log_files(job_id: str, job: Any, end: _JobEnd | None) -> list[Path]:
    """Where the job's stderr and stdout are: what SLURM says, else dask-jobqueue's ``-e``/``-o``
    paths (``<log-directory>/<job name>-<id>.err``/``.out``)."""
    if end is not None and (end.stderr or end.stdout):
        name = getattr(job, "job_name", None)
        return list(dict.fromkeys(Path(_slurm_filename(p, job_id, name)) for p in (end.stderr, end.stdout) if p))
    return _log_directory_files(job, f"{getattr(job, 'job_name', None) or 'worker'}-{job_id}")


# ------------------------------------------------------------------------------ PBS
def _pbs_statuses(job_ids: list[str]) -> dict[str, _JobStatus]:
    """``qstat -x -f -F json`` (PBS Pro / OpenPBS 19 and later: finished jobs included), else
    plain ``qstat -f`` (Torque, older PBS); ``{}`` when neither answers."""
    res = _run("qstat", "-x", "-f", "-F", "json", *job_ids)
    jobs: dict[str, dict[str, Any]] | None = None
    if res is not None and res.stdout.strip().startswith("{"):
        with contextlib.suppress(ValueError):
            jobs = {str(k): v for k, v in (json.loads(res.stdout).get("Jobs") or {}).items() if isinstance(v, dict)}
    if jobs is None:
        res = _run("qstat", "-f", *job_ids)
        if res is None:
            return {}
        jobs = _pbs_parse_full(res.stdout)
    gone = res is not None and (res.returncode == 0 or "Unknown Job Id" in res.stderr)
    by_number = {key.split(".")[0]: attrs for key, attrs in jobs.items()}  # "42.server": qsub said "42..."
    statuses = {}
    for job_id in job_ids:
        attrs = jobs.get(job_id) or by_number.get(job_id.split(".")[0])
        if attrs is not None:
            statuses[job_id] = _pbs_status(attrs)
        elif res is not None and re.search(rf"\b{re.escape(job_id)}\S* Job has finished", res.stderr):
            statuses[job_id] = _JobStatus("F", ended=True, end=_JobEnd("F"))  # PBS Pro without -x
        elif gone:  # purged from the history, or from Torque's completed jobs
            statuses[job_id] = _JobStatus("", ended=True)
    return statuses


def _pbs_parse_full(text: str) -> dict[str, dict[str, Any]]:
    """``qstat -f``'s text: ``{job id: {attribute: value}}`` (a long value goes on, after a
    newline, on lines that start with a tab).

    >>> _pbs_parse_full("Job Id: 7.srv\\n    Job_Name = w\\n    comment = Not Running: a\\n\\tnd b\\n    exit_status = 1\\n")
    {'7.srv': {'Job_Name': 'w', 'comment': 'Not Running: and b', 'exit_status': '1'}}
    """
    jobs: dict[str, dict[str, Any]] = {}
    attrs: dict[str, Any] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            attrs = jobs.setdefault(line.partition(":")[2].strip(), {})
        elif line.startswith("\t") and key:
            attrs[key] += line.strip()
        elif " = " in line:
            key, _, value = line.strip().partition(" = ")
            attrs[key] = value
    return jobs


#: ``job_state`` of a job that is over: F finished (PBS Pro, ``qstat -x``), C completed (Torque),
#: X a finished subjob
_PBS_ENDED = frozenset({"F", "C", "X"})
#: PBS Pro's scheduler starts the ``comment`` of a job that can never run as submitted with this
#: (e.g. "Can Never Run: Insufficient amount of resource: host (node42)"); its other
#: comments ("Not Running: ...") name a passing reason
_PBS_NEVER_RUNS = "Can Never Run"


def _pbs_status(attrs: Mapping[str, Any]) -> _JobStatus:
    state = str(attrs.get("job_state", ""))
    comment = str(attrs.get("comment", ""))
    if state in _PBS_ENDED:
        code = attrs.get("Exit_status", attrs.get("exit_status"))  # PBS Pro, Torque
        files = [_pbs_path(attrs.get(k)) for k in ("Error_Path", "Output_Path")]
        return _JobStatus(state, ended=True, end=_JobEnd(state, None if code is None else str(code), *files))
    never = None
    if state == "Q" and comment.startswith(_PBS_NEVER_RUNS):
        never = comment[len(_PBS_NEVER_RUNS):].lstrip(": ") or comment
    return _JobStatus(state, never_starts=never)


def _pbs_path(value: Any) -> str | None:
    """``Error_Path``/``Output_Path`` without the host: ``"node1:/x/w.e42"`` -> ``"/x/w.e42"``."""
    return (str(value).split(":", 1)[-1] or None) if value else None


def _pbs_log_files(job_id: str, job: Any, end: _JobEnd | None) -> list[Path]:
    """Where the job's stderr and stdout are: ``Error_Path``/``Output_Path``, else (or when those
    name a folder, as dask-jobqueue's ``-e <log-directory>/`` does) the files PBS puts in it:
    ``<job id>.ER``/``.OU`` (PBS Pro), ``<job name>.e<number>``/``.o<number>`` (Torque)."""
    paths = [p for p in (end.stderr, end.stdout) if p] if end is not None else []
    if paths and not any(p.endswith("/") or Path(p).is_dir() for p in paths):
        return list(dict.fromkeys(map(Path, paths)))
    folders = list(dict.fromkeys(map(Path, paths))) or [Path(f) for f in [getattr(job, "log_directory", None)] if f]
    name, number = getattr(job, "job_name", None) or "STDIN", job_id.split(".")[0]
    found = [p for pattern in (f"{number}.*ER", f"{name}.e{number}", f"{number}.*OU", f"{name}.o{number}")
             for folder in folders for p in sorted(folder.glob(pattern))]
    return found or [folder / f for folder in folders for f in (f"{number}.*ER", f"{name}.e{number}")]


# ------------------------------------------------------------------------------ LSF
#: ``bjobs -o`` fields asked for
_LSF_FIELDS = ("jobid", "stat", "exit_code", "error_file", "output_file")
#: LSF's states (``bjobs``' STAT) of a job that is over
_LSF_ENDED = frozenset({"DONE", "EXIT"})


def _lsf_statuses(job_ids: list[str]) -> dict[str, _JobStatus]:
    """``bjobs -a -o ... -json`` (LSF 10.1), else the same fields as text; ``{}`` when bjobs
    fails. LSF's pending reasons describe its last dispatch turn: none is taken as final."""
    res = _run("bjobs", "-a", "-o", " ".join(_LSF_FIELDS), "-json", *job_ids)
    records: list[dict[str, Any]] | None = None
    if res is not None and "{" in res.stdout:  # after any "Cannot connect to LSF. Please wait ..." line
        with contextlib.suppress(ValueError, AttributeError):
            found = json.loads(res.stdout[res.stdout.index("{"):]).get("RECORDS")
            records = [r for r in found or [] if isinstance(r, dict)]
    if records is None:  # no -json: one line a job, the fields split by "|"
        res = _run("bjobs", "-a", "-noheader", "-o", f"{' '.join(_LSF_FIELDS)} delimiter='|'", *job_ids)
        if res is None or (res.returncode != 0 and "is not found" not in res.stdout + res.stderr):
            return {}
        records = [dict(zip((f.upper() for f in _LSF_FIELDS), line.split("|"), strict=False))
                   for line in res.stdout.splitlines() if "|" in line]
    found = {str(r.get("JOBID", "")).strip(): r for r in records if r.get("STAT")}
    statuses = {}
    for job_id in job_ids:
        record = found.get(job_id)
        if record is None:  # finished longer ago than CLEAN_PERIOD, or "Job <id> is not found"
            statuses[job_id] = _JobStatus("", ended=True)
            continue
        state = str(record["STAT"]).strip()
        code = _lsf_field(record, "EXIT_CODE") or ("0" if state == "DONE" else None)
        files = [_lsf_field(record, k) for k in ("ERROR_FILE", "OUTPUT_FILE")]
        statuses[job_id] = _JobStatus(state, ended=state in _LSF_ENDED, end=_JobEnd(state, code, *files))
    return statuses


def _lsf_field(record: Mapping[str, Any], key: str) -> str | None:
    """A field of a bjobs record; None when empty (``""`` in JSON, ``-`` in text)."""
    value = str(record.get(key) or "").strip()
    return None if value in ("", "-") else value


def _lsf_log_files(job_id: str, job: Any, end: _JobEnd | None) -> list[Path]:
    """Where the job's stderr and stdout are: what bjobs says (``%J`` the job id), else
    dask-jobqueue's ``-e``/``-o`` (``<log-directory>/<worker name>-<id>.err``/``.out``)."""
    paths = [p.replace("%J", job_id).replace("%I", "0") for p in (end.stderr, end.stdout) if p] if end else []
    if paths:
        return list(dict.fromkeys(Path(p) for p in paths))
    return _log_directory_files(job, f"{getattr(job, 'name', None) or 'worker'}-{job_id}")


#: the schedulers the watch can poll, by the configuration's kind
_SCHEDULERS: dict[str, _Scheduler] = {
    "slurm": _Scheduler("SLURM", "slurm", "squeue", _slurm_statuses, _slurm_job_end, _slurm_log_files),
    "pbs": _Scheduler("PBS", "pbs", "qstat", _pbs_statuses, lambda _, status: status.end, _pbs_log_files),
    "lsf": _Scheduler("LSF", "lsf", "bjobs", _lsf_statuses, lambda _, status: status.end, _lsf_log_files),
}


# ------------------------------------------------------------------------------ refused submissions
def _command_error(exc: BaseException) -> str:
    """What a failed submission command said, on one line.

    >>> _command_error(RuntimeError("Command exited with non-zero exit code.\\nExit code: 1\\n"
    ...     "Command:\\nsbatch x.sh\\nstdout:\\n\\nstderr:\\nsbatch: error: invalid partition specified: "
    ...     "nope\\nsbatch: error: Batch job submission failed: Invalid partition name specified\\n"))
    'invalid partition specified: nope; Batch job submission failed: Invalid partition name specified'
    """
    text = str(exc)
    _, found, err = text.partition("stderr:\n")
    lines = [re.sub(r"^\S+: error: ", "", line.strip()) for line in err.splitlines() if line.strip()]
    if found and lines:
        return "; ".join(dict.fromkeys(lines))
    code = re.search(r"Exit code: (-?\d+)", text)
    return f"exit code {code.group(1)}" if code else " ".join(text.split()) or type(exc).__name__


def _watched_job_cls(job_cls: type[Any], watch: _JobWatch) -> type[Any]:
    """``job_cls`` whose refused submission is reported to ``watch`` and leaves the job ``failed``.

    The error is not raised on to dask-jobqueue, which would log it and wait on regardless. A job
    the cluster closes (scaled down, shut) is marked first, so that its end is not taken for a
    death. LSF's ``bsub < script`` (``use-stdin``, dask-jobqueue's default) keeps bsub's stderr,
    which dask-jobqueue sends to ``/dev/null``: it is the reason a submission was refused.
    """

    from distributed.core import Status

    async def start(self: Any) -> None:
        try:
            await job_cls.start(self)
        except Exception as exc:  # noqa: BLE001 - whatever stopped the submission is the reason
            command = str(self.submit_command).split()[0]
            watch.fail(f"{command} refused the worker job: {_command_error(exc)}")
            # not raised on: the cluster's loop would only log it with a traceback, and the batch
            # stops on the reason recorded instead. The cluster requires a started job to be
            # "running"; this one has no job id, so closing it cancels nothing.
            self.status = Status.running

    async def close(self: Any) -> None:
        self._drmime_closing = True
        await job_cls.close(self)
        if self.job_id is None:  # never submitted: closing the cluster checks that it is closed
            self.status = Status.closed

    members: dict[str, Any] = {"start": start, "close": close, "__module__": __name__}
    if getattr(job_cls, "config_name", None) == "lsf":

        async def _submit_job(self: Any, script_filename: str) -> Any:
            if not getattr(self, "use_stdin", False):
                return await job_cls._submit_job(self, script_filename)
            # dask-jobqueue's own command, without its "2> /dev/null"
            return await self._call([f"{self.submit_command} < {shlex.quote(script_filename)}"], shell=True)

        members["_submit_job"] = _submit_job
    return type(job_cls.__name__, (job_cls,), members)


def _watched_cluster_cls(cluster_cls: type[Any]) -> type[Any]:
    """``cluster_cls`` that, when its context is left, stops its watch and raises what it found."""

    def __exit__(self: Any, *exc_info: Any) -> None:
        watch: _JobWatch = self._drmime_watch
        watch.stop()
        try:
            cluster_cls.__exit__(self, *exc_info)
        except Exception as exc:
            watch.raise_if_failed(exc)
            raise
        watch.raise_if_failed(exc_info[1])

    return type(cluster_cls.__name__, (cluster_cls,), {"__exit__": __exit__, "__module__": __name__})

