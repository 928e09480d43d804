"""``run --cluster slurm`` stops with one line when its jobs cannot start, and refuses bad cluster
configurations with one line: no SLURM needed (stand-in ``sbatch``/``squeue``/``scancel`` scripts
on the PATH). The same through a real SLURM cluster: ``test_deploy_slurm.py``."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("dask_jobqueue")

pytestmark = pytest.mark.timeout(120)


def _config(folder: Path, body: str) -> Path:
    path = folder / "cluster.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


CPU_JOBS = """\
jobqueue:
  slurm:
    cores: 1
    memory: 1GB
    walltime: "00:05:00"
    interface: lo
    scheduler-options: {dashboard_address: ":0"}
drmime-batch: {gpus-per-job: 0}
"""


def _tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(script), encoding="ascii")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _cli(*args: object, cwd: Path, path_prefix: Path | None = None, timeout: float = 90,
         extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(extra_env or {})}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([sys.executable, "-m", "drmime_batch", *map(str, args)], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


@pytest.fixture
def queue(tmp_path: Path, tiny_manifest: Path) -> Path:
    path = tmp_path / "batch.sqlite"
    res = _cli("submit", tiny_manifest, "--queue", path, "--out", tmp_path / "out.zarr", "--quiet",
               "--max-iterations", "10", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    return path


def _one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("drmime-batch run: error: "), lines[0]
    return lines[0]


def _pending(queue: Path) -> set[str]:
    from drmime_batch.queue import Queue

    with Queue.open(queue) as q:
        return {r.state for r in q.rows()}


def _run_slurm(queue: Path, config: Path) -> list[object]:
    return ["run", "--queue", queue, "--cluster", "slurm", "--cluster-config", config, "--no-warp", "--quiet"]


# ------------------------------------------------------------------------------------ bad input
def test_unknown_jobqueue_key_is_refused_naming_it(tmp_path, queue):
    config = _config(tmp_path, CPU_JOBS.replace('walltime: "00:05:00"', 'walltme: "00:05:00"'))
    line = _one_error_line(_cli(*_run_slurm(queue, config), cwd=tmp_path))
    assert line.endswith("unknown key(s) ['walltme'] under jobqueue.slurm; did you mean 'walltime'?"), line
    assert _pending(queue) == {"pending"}


def test_unknown_key_without_a_near_name_lists_the_known_ones(tmp_path):
    from drmime_batch.engine._clusters import job_script
    from drmime_batch.errors import ClusterConfigError

    config = _config(tmp_path, CPU_JOBS.replace("cores: 1", "cores: 1\n    gpus: 4"))
    with pytest.raises(ClusterConfigError, match=r"unknown key\(s\) \['gpus'\] under jobqueue.slurm; "
                                                 r"dask-jobqueue's slurm settings are \[.*'walltime'"):
        job_script("slurm", config_path=config)


def test_config_without_jobqueue_section_is_refused(tmp_path, queue):
    config = _config(tmp_path, "drmime-batch: {gpus-per-job: 0}\n")
    line = _one_error_line(_cli(*_run_slurm(queue, config), cwd=tmp_path))
    assert "jobqueue.slurm.cores and memory not set" in line, line
    assert _pending(queue) == {"pending"}


@pytest.mark.slow
def test_scheduler_not_running_is_one_line(tmp_path, queue):
    """Nothing listens at the address: refused after the client's connect timeout (dask's, 3 s here)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = _one_error_line(_cli("run", "--queue", queue, "--scheduler", f"tcp://127.0.0.1:{port}", "--quiet",
                                cwd=tmp_path, extra_env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}))
    assert f"cannot reach tcp://127.0.0.1:{port}" in line, line
    assert _pending(queue) == {"pending"}


# ------------------------------------------------------------------------------------ jobs that never start
def test_refused_submission_stops_the_run_with_sbatch_reason(tmp_path, queue):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "sbatch", """\
        echo "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified" >&2
        exit 1
        """)
    config = _config(tmp_path, CPU_JOBS)
    line = _one_error_line(_cli(*_run_slurm(queue, config), cwd=tmp_path, path_prefix=bin_dir))
    assert line == (f"drmime-batch run: error: {config}: sbatch refused the worker job: Batch job submission "
                    "failed: Invalid account or account/partition combination specified")
    assert _pending(queue) == {"pending"}


def test_job_pending_for_good_stops_the_run_and_is_cancelled(tmp_path, queue):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "sbatch", 'echo "Submitted batch job 4242"\n')
    # what squeue says of a job whose walltime is over the partition's limit
    _tool(bin_dir, "squeue", f'echo "$@" >> {tmp_path}/squeue.args\necho "4242|PartitionTimeLimit"\n')
    _tool(bin_dir, "scancel", f'echo "$@" >> {tmp_path}/scancel.args\n')
    config = _config(tmp_path, CPU_JOBS)
    line = _one_error_line(_cli(*_run_slurm(queue, config), cwd=tmp_path, path_prefix=bin_dir))
    assert line == (f"drmime-batch run: error: {config}: SLURM job 4242 can never start: PartitionTimeLimit, "
                    "its walltime is over the partition's time limit (see jobqueue.slurm)")
    assert "--jobs=4242" in (tmp_path / "squeue.args").read_text()
    assert "4242" in (tmp_path / "scancel.args").read_text().split()  # cancelled on the way out
    assert _pending(queue) == {"pending"}


def test_pending_for_a_passing_reason_is_left_waiting():
    from drmime_batch.engine._jobqueue import SLURM_NEVER_STARTS

    # a busy cluster, a held job, a node down: they may start later, the batch waits
    for reason in ("Resources", "Priority", "JobHeldUser", "ReqNodeNotAvail", "AssocGrpCpuLimit", "None"):
        assert reason not in SLURM_NEVER_STARTS


def test_importing_dask_jobqueue_keeps_the_sigint_handler():
    """dask_jobqueue's import installs SIGINT -> sys.exit(): Ctrl-C would end ``run`` with status 0."""
    code = textwrap.dedent("""\
        import signal, sys
        def mine(*_): pass
        signal.signal(signal.SIGINT, mine)
        from drmime_batch.engine._jobqueue import _jobqueue_classes
        _jobqueue_classes("slurm")
        import dask_jobqueue.runner  # noqa: F401 - already imported: no second change
        sys.exit(0 if signal.getsignal(signal.SIGINT) is mine else 1)
        """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr


# ------------------------------------------------------------------------------------ jobs that die at once
#: a stand-in sbatch that "runs" the job at once: it writes what bash says of a python that does not
#: exist into the script's ``#SBATCH -e`` file (``%J``: the job id), as a failed job would
SBATCH_JOB_DIES = """\
    err=$(sed -n 's/^#SBATCH -e //p' "$1" | sed 's/%J/4243/')
    echo "$@" >> {folder}/sbatch.args
    if [ -n "$err" ]; then
        printf 'starting\\n%s: line 12: /no/such/python: No such file or directory\\n' "$1" > "$err"
    fi
    echo "Submitted batch job 4243"
    """


def _dead_job_tools(bin_dir: Path, folder: Path, *, squeue_knows: bool, scontrol: str) -> None:
    _tool(bin_dir, "sbatch", SBATCH_JOB_DIES.format(folder=folder))
    if squeue_knows:  # within MinJobAge: squeue still lists the job, as FAILED
        _tool(bin_dir, "squeue", 'case "$*" in *--states=all*) echo "4243|FAILED";; esac\n')
    else:  # forgotten: one unknown job id is an error
        _tool(bin_dir, "squeue", 'echo "slurm_load_jobs error: Invalid job id specified" >&2\nexit 1\n')
    _tool(bin_dir, "scontrol", scontrol)
    _tool(bin_dir, "sacct", 'echo "FAILED|127:0"\n')
    _tool(bin_dir, "scancel", f'echo "$@" >> {folder}/scancel.args\n')


def test_job_that_dies_at_once_stops_the_run_naming_its_state_and_error(tmp_path, queue):
    """The job's worker never connects and squeue says FAILED: its stderr's last lines, one line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logs = tmp_path / "logs"
    # SLURM shows the -e/-o patterns as given (%J unexpanded)
    scontrol = (f'echo "JobId=4243 JobName=dask-worker JobState=FAILED Reason=NonZeroExitCode ExitCode=127:0 '
                f'StdErr={logs}/dask-worker-%J.err StdIn=/dev/null StdOut={logs}/dask-worker-%J.out"\n')
    _dead_job_tools(bin_dir, tmp_path, squeue_knows=True, scontrol=scontrol)
    config = _config(tmp_path, CPU_JOBS.replace("cores: 1", f"cores: 1\n    log-directory: {logs}"))
    line = _one_error_line(_cli(*_run_slurm(queue, config), cwd=tmp_path, path_prefix=bin_dir))
    assert line == (f"drmime-batch run: error: {config}: SLURM job 4243 ended before its worker connected "
                    f"(FAILED, exit code 127); {logs}/dask-worker-4243.err ends: starting | "
                    f"{next(iter(_sbatch_scripts(tmp_path)))}: line 12: /no/such/python: No such file or directory")
    assert _pending(queue) == {"pending"}


def _sbatch_scripts(folder: Path) -> list[str]:
    return [line.split()[-1] for line in (folder / "sbatch.args").read_text().splitlines()]


def test_dead_job_gone_from_squeue_is_found_through_sacct_and_the_default_log_folder(tmp_path, queue):
    """No log-directory in the config: ``run`` puts the jobs' logs beside the queue
    (``batch-jobs/``), and a job squeue and scontrol have forgotten is read from sacct."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _dead_job_tools(bin_dir, tmp_path, squeue_knows=False,
                    scontrol='echo "slurm_load_jobs error: Invalid job id specified" >&2\nexit 1\n')
    config = _config(tmp_path, CPU_JOBS)
    line = _one_error_line(_cli(*_run_slurm(queue, config), cwd=tmp_path, path_prefix=bin_dir))
    err = queue.parent / "batch-jobs" / "dask-worker-4243.err"
    assert line.startswith(f"drmime-batch run: error: {config}: SLURM job 4243 ended before its worker connected "
                           f"(FAILED, exit code 127); {err} ends: starting | "), line
    assert line.endswith("/no/such/python: No such file or directory"), line
    assert _pending(queue) == {"pending"}


def test_dead_job_without_a_readable_log_says_where_it_looked(tmp_path, queue):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _dead_job_tools(bin_dir, tmp_path, squeue_knows=True, scontrol=(
        'echo "JobId=4243 JobState=NODE_FAIL ExitCode=0:9 StdErr=/nonexistent/x.err StdOut=/nonexistent/x.out"\n'))
    line = _one_error_line(_cli(*_run_slurm(queue, _config(tmp_path, CPU_JOBS)), cwd=tmp_path,
                                path_prefix=bin_dir))
    assert line.endswith("SLURM job 4243 ended before its worker connected (NODE_FAIL, signal 9); nothing "
                         "readable in /nonexistent/x.err or /nonexistent/x.out"), line
    assert _pending(queue) == {"pending"}


def test_ever_connected_matches_the_job_and_its_worker_processes():
    from types import SimpleNamespace

    from drmime_batch.engine._jobwatch import _JobWatch

    watch = _JobWatch("c.yaml")
    watch.worker_connected("SLURMCluster-1-0")  # a job of several worker processes
    watch.worker_connected("SLURMCluster-3")
    assert watch.ever_connected(SimpleNamespace(name="SLURMCluster-1"))
    assert watch.ever_connected(SimpleNamespace(name="SLURMCluster-3"))
    assert not watch.ever_connected(SimpleNamespace(name="SLURMCluster-10"))  # not a prefix match
    assert not watch.ever_connected(SimpleNamespace(name="SLURMCluster-2"))
    # a job the cluster closes itself (scaled down) is no death
    assert watch.ever_connected(SimpleNamespace(name="SLURMCluster-2", _drmime_closing=True))


# ------------------------------------------------------------------------------------ LSF
LSF_JOBS = CPU_JOBS.replace("slurm:", "lsf:").replace('"00:05:00"', '"00:05"')  # LSF walltime is HH:MM


@pytest.mark.parametrize("use_stdin", [True, False], ids=["bsub-stdin", "bsub-file"])
def test_refused_bsub_stops_the_run_with_its_stderr(tmp_path, queue, use_stdin):
    """dask-jobqueue runs ``bsub < script 2> /dev/null``: the reason was lost."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "bsub", f"""\
        cat > {tmp_path}/bsub.stdin
        echo "$@" > {tmp_path}/bsub.args
        echo "User <me> is not a user of queue <gpu>. Job not submitted." >&2
        exit 255
        """)
    config = _config(tmp_path, LSF_JOBS.replace("cores: 1", f"cores: 1\n    use-stdin: {str(use_stdin).lower()}"))
    res = _cli("run", "--queue", queue, "--cluster", "lsf", "--cluster-config", config, "--no-warp", "--quiet",
               cwd=tmp_path, path_prefix=bin_dir)
    line = _one_error_line(res)
    assert line == (f"drmime-batch run: error: {config}: bsub refused the worker job: User <me> is not a user "
                    "of queue <gpu>. Job not submitted.")
    script = (tmp_path / "bsub.stdin").read_text() if use_stdin else ""
    assert ("#BSUB -W 00:05" in script) == use_stdin  # spooled on stdin, or named on the command line
    assert _pending(queue) == {"pending"}


def test_a_dead_job_beside_connected_workers_is_warned_of_once_and_the_batch_goes_on(monkeypatch, caplog):
    """One bad node must not stop hundreds of pairs: only a dead job with no worker left stops the batch."""
    from drmime_batch.engine import _jobwatch

    interrupts: list[object] = []
    monkeypatch.setattr(_jobwatch._thread, "interrupt_main", lambda *a: interrupts.append(a))
    watch = _jobwatch._JobWatch("slurm.yaml")
    watch.worker_connected("job-a")
    with caplog.at_level("WARNING", logger=_jobwatch.__name__):
        assert watch.job_died("17", "SLURM job 17 ended before its worker connected (FAILED, exit code 1)") is False
        assert watch.job_died("17", "SLURM job 17 ended before its worker connected (FAILED, exit code 1)") is False
    warned = [r.getMessage() for r in caplog.records if "job 17" in r.getMessage()]
    assert len(warned) == 1 and "goes on" in warned[0]
    assert watch.reason is None and not interrupts
    watch.worker_left("job-a")  # the last worker gone: the next dead job stops the batch
    assert watch.job_died("18", "SLURM job 18 ended before its worker connected (FAILED, exit code 1)") is True
    assert watch.reason is not None and "job 18" in watch.reason and len(interrupts) == 1


# ------------------------------------------------------------------------------------ PBS
PBS_JOBS = CPU_JOBS.replace("slurm:", "pbs:")
#: what ``qstat -x -f -F json`` prints of a job (PBS Pro / OpenPBS 19+), cut to the attributes the
#: watch reads and a few around them
PBS_JSON_JOB = {
    "Job_Name": "dask-worker", "Job_Owner": "me@login1", "job_state": "F", "queue": "workq",
    "server": "pbs", "Error_Path": "login1:{err}", "exec_host": "node7/0", "Join_Path": "n",
    "Keep_Files": "n", "Output_Path": "login1:{out}", "Rerunable": "True",
    "comment": "Job run at Wed Mar 17 at 20:36 on (node7:ncpus=1) and finished", "run_count": 1,
    "Exit_status": 127, "project": "_pbs_project_default",
}


def _qstat_json(jobs: dict[str, dict[str, object]]) -> str:
    import json

    return json.dumps({"timestamp": 1616013438, "pbs_version": "19.0.0", "pbs_server": "pbs", "Jobs": jobs},
                      indent=4)


def _heredoc(text: str) -> str:
    """Shell lines that print ``text`` as it is."""
    return f"cat <<'__END__'\n{text}\n__END__\n"


#: a stand-in qsub that "runs" the job at once: it writes what bash says of a python that does not
#: exist into the script's ``#PBS -e`` folder, under the name PBS gives it there
QSUB_JOB_DIES = """\
    err=$(sed -n 's/^#PBS -e //p' "$1")
    echo "$@" >> {folder}/qsub.args
    printf 'starting\\n%s: line 12: /no/such/python: No such file or directory\\n' "$1" > "${{err}}{name}"
    echo "{job_id}"
    """


def _run_pbs(queue: Path, config: Path) -> list[object]:
    return ["run", "--queue", queue, "--cluster", "pbs", "--cluster-config", config, "--no-warp", "--quiet"]


def test_pbs_job_that_dies_at_once_is_named_with_its_exit_status_and_error_file(tmp_path, queue):
    """PBS Pro: ``qstat -x -F json`` lists the finished job with its Exit_status and Error_Path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logs = tmp_path / "logs"
    err = logs / "4343.pbs.ER"
    _tool(bin_dir, "qsub", QSUB_JOB_DIES.format(folder=tmp_path, name="4343.pbs.ER", job_id="4343.pbs"))
    job = {k: v.format(err=err, out=logs / "4343.pbs.OU") if isinstance(v, str) else v
           for k, v in PBS_JSON_JOB.items()}
    _tool(bin_dir, "qstat", f'echo "$@" >> {tmp_path}/qstat.args\n' + _heredoc(_qstat_json({"4343.pbs": job})))
    _tool(bin_dir, "qdel", f'echo "$@" >> {tmp_path}/qdel.args\n')
    config = _config(tmp_path, PBS_JOBS.replace("cores: 1", f"cores: 1\n    log-directory: {logs}"))
    line = _one_error_line(_cli(*_run_pbs(queue, config), cwd=tmp_path, path_prefix=bin_dir))
    script = (tmp_path / "qsub.args").read_text().split()[-1]
    assert line == (f"drmime-batch run: error: {config}: PBS job 4343 ended before its worker connected "
                    f"(F, exit code 127); {err} ends: starting | {script}: line 12: /no/such/python: "
                    "No such file or directory")
    assert "-x -f -F json 4343" in (tmp_path / "qstat.args").read_text()
    assert _pending(queue) == {"pending"}


def test_torque_job_no_longer_listed_is_found_through_the_default_log_folder(tmp_path, queue):
    """Torque: no ``-F json`` (plain ``qstat -f``), and a job purged from its completed jobs is
    unknown; its error file is ``<job name>.e<number>`` in ``run``'s log folder beside the queue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "qsub", QSUB_JOB_DIES.format(folder=tmp_path, name="dask-worker.e4343", job_id="4343.torque"))
    _tool(bin_dir, "qstat", f"""\
        echo "$@" >> {tmp_path}/qstat.args
        case "$*" in
            *-F*) echo "qstat: invalid option -- 'F'" >&2; exit 2;;
            *) echo "qstat: Unknown Job Id Error 4343.torque" >&2; exit 153;;
        esac
        """)
    _tool(bin_dir, "qdel", "true\n")
    config = _config(tmp_path, PBS_JOBS)
    line = _one_error_line(_cli(*_run_pbs(queue, config), cwd=tmp_path, path_prefix=bin_dir))
    err = queue.parent / "batch-jobs" / "dask-worker.e4343"
    assert line.startswith(f"drmime-batch run: error: {config}: PBS job 4343 ended before its worker connected "
                           f"(no longer in qstat, exit code unknown); {err} ends: starting | "), line
    assert line.endswith("/no/such/python: No such file or directory"), line
    assert "-f 4343" in (tmp_path / "qstat.args").read_text().splitlines()
    assert _pending(queue) == {"pending"}


def test_pbs_job_that_can_never_run_stops_the_run_and_is_deleted(tmp_path, queue):
    """PBS Pro's scheduler comments a job that can never run as submitted "Can Never Run: ..."."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "qsub", 'echo "4242.pbs"\n')
    job = {"Job_Name": "dask-worker", "job_state": "Q", "queue": "workq",
           "comment": "Can Never Run: Insufficient amount of resource: host (node42)"}
    _tool(bin_dir, "qstat", _heredoc(_qstat_json({"4242.pbs": job})))
    _tool(bin_dir, "qdel", f'echo "$@" >> {tmp_path}/qdel.args\n')
    config = _config(tmp_path, PBS_JOBS)
    line = _one_error_line(_cli(*_run_pbs(queue, config), cwd=tmp_path, path_prefix=bin_dir))
    assert line == (f"drmime-batch run: error: {config}: PBS job 4242 can never start: Insufficient amount of "
                    "resource: host (node42) (see jobqueue.pbs)")
    assert "4242" in (tmp_path / "qdel.args").read_text().split()  # deleted on the way out
    assert _pending(queue) == {"pending"}


def _on_path(monkeypatch: pytest.MonkeyPatch, bin_dir: Path) -> None:
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_pbs_jobs_waiting_or_running_are_left_alone(tmp_path, monkeypatch):
    from drmime_batch.engine._jobwatch import _pbs_statuses

    jobs = {
        "11.pbs": {"job_state": "Q", "comment": "Not Running: Insufficient amount of resource: ncpus "
                                                "(R: 8 A: 4 T: 16)"},  # busy: it will start
        "12.pbs": {"job_state": "H", "comment": "Can Never Run: held"},  # held jobs may be released
        "13.pbs": {"job_state": "R", "comment": "Job run at Wed Mar 17 at 20:36 on (node7:ncpus=1)"},
        "14.pbs": {"job_state": "E", "Exit_status": 0},  # exiting: not over yet
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "qstat", _heredoc(_qstat_json(jobs)))
    _on_path(monkeypatch, bin_dir)
    statuses = _pbs_statuses(["11", "12", "13", "14"])
    assert {j: (s.state, s.ended, s.never_starts) for j, s in statuses.items()} == {
        "11": ("Q", False, None), "12": ("H", False, None), "13": ("R", False, None), "14": ("E", False, None)}


def test_torque_qstat_text_of_a_completed_job(tmp_path, monkeypatch):
    from drmime_batch.engine._jobwatch import _pbs_statuses

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "qstat", """\
        case "$*" in *-F*) echo "qstat: invalid option -- 'F'" >&2; exit 2;; esac
        cat <<'__END__'
        Job Id: 4343.torque
            Job_Name = dask-worker
            Job_Owner = me@login1
            job_state = C
            queue = batch
            server = torque
            Error_Path = login1:/shared/logs/a-very-long-folder-name-that-qstat-cuts/dask-wo
        \trker.e4343
            exit_status = 127
        __END__
        """)
    _on_path(monkeypatch, bin_dir)
    status = _pbs_statuses(["4343"])["4343"]
    assert status.ended and status.end is not None
    assert (status.end.state, status.end.exit_code) == ("C", "127")
    assert status.end.stderr == "/shared/logs/a-very-long-folder-name-that-qstat-cuts/dask-worker.e4343"


@pytest.mark.parametrize(
    ("tool", "script", "statuses"),
    [
        ("qstat", None, "_pbs_statuses"),
        ("qstat", 'echo "qstat: cannot connect to server pbs (errno=15010)" >&2\nexit 2\n', "_pbs_statuses"),
        ("bjobs", None, "_lsf_statuses"),
        ("bjobs", 'echo "LSF is down. Please wait ..." >&2\nexit 255\n', "_lsf_statuses"),
    ],
    ids=["pbs-missing", "pbs-failing", "lsf-missing", "lsf-failing"],
)
def test_watch_without_an_answering_status_command_detects_nothing(tmp_path, monkeypatch, tool, script, statuses):
    from drmime_batch.engine import _jobwatch

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if script is not None:
        _tool(bin_dir, tool, script)
        _on_path(monkeypatch, bin_dir)
    else:
        monkeypatch.setenv("PATH", str(bin_dir))  # no such command at all
    assert getattr(_jobwatch, statuses)(["4343"]) == {}


# ------------------------------------------------------------------------------------ LSF: jobs that die
def _bjobs_json(records: list[dict[str, str]]) -> str:
    """``bjobs -o ... -json`` as LSF prints it (slashes escaped)."""
    import json

    return json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}, indent=2).replace("/", "\\/")


def test_lsf_job_that_dies_at_once_is_named_with_its_exit_code_and_error_file(tmp_path, queue):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    logs = tmp_path / "logs"
    _tool(bin_dir, "bsub", f"""\
        cat > {tmp_path}/bsub.stdin
        err=$(sed -n 's/^#BSUB -e //p' {tmp_path}/bsub.stdin | sed 's/%J/4444/')
        printf 'starting\\n/no/such/python: No such file or directory\\n' > "$err"
        echo "Job <4444> is submitted to queue <normal>."
        """)
    _tool(bin_dir, "bjobs", f"""\
        echo "$@" >> {tmp_path}/bjobs.args
        err=$(sed -n 's/^#BSUB -e //p' {tmp_path}/bsub.stdin | sed 's/%J/4444/')
        out=$(sed -n 's/^#BSUB -o //p' {tmp_path}/bsub.stdin | sed 's/%J/4444/')
        """ + _heredoc(_bjobs_json([{"JOBID": "4444", "STAT": "EXIT", "EXIT_CODE": "127",
                                     "ERROR_FILE": "ERR", "OUTPUT_FILE": "OUT"}])).replace("'__END__'", "__END__")
        .replace('"ERR"', '"$err"').replace('"OUT"', '"$out"'))
    _tool(bin_dir, "bkill", "true\n")
    config = _config(tmp_path, LSF_JOBS.replace("cores: 1", f"cores: 1\n    log-directory: {logs}"))
    res = _cli("run", "--queue", queue, "--cluster", "lsf", "--cluster-config", config, "--no-warp", "--quiet",
               cwd=tmp_path, path_prefix=bin_dir)
    line = _one_error_line(res)
    err = next(logs.glob("*-4444.err"))
    assert line == (f"drmime-batch run: error: {config}: LSF job 4444 ended before its worker connected "
                    f"(EXIT, exit code 127); {err} ends: starting | /no/such/python: No such file or directory")
    assert "-a -o jobid stat exit_code error_file output_file -json 4444" in (tmp_path / "bjobs.args").read_text()
    assert _pending(queue) == {"pending"}


def test_lsf_pending_running_and_gone_jobs(tmp_path, monkeypatch):
    from drmime_batch.engine._jobwatch import _lsf_statuses

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    records = [
        {"JOBID": "21", "STAT": "PEND", "EXIT_CODE": "", "ERROR_FILE": "", "OUTPUT_FILE": ""},
        {"JOBID": "22", "STAT": "RUN", "EXIT_CODE": "", "ERROR_FILE": "/x/w-22.err", "OUTPUT_FILE": "/x/w-22.out"},
        {"JOBID": "23", "STAT": "DONE", "EXIT_CODE": "", "ERROR_FILE": "/x/w-23.err", "OUTPUT_FILE": ""},
    ]
    _tool(bin_dir, "bjobs", _heredoc(_bjobs_json(records)))
    _on_path(monkeypatch, bin_dir)
    statuses = _lsf_statuses(["21", "22", "23", "24"])
    assert {j: (s.state, s.ended, s.never_starts) for j, s in statuses.items()} == {
        "21": ("PEND", False, None), "22": ("RUN", False, None), "23": ("DONE", True, None),
        "24": ("", True, None)}  # no longer listed
    end = statuses["23"].end
    assert end is not None and (end.exit_code, end.stderr, end.stdout) == ("0", "/x/w-23.err", None)


def test_lsf_without_json_reads_the_text_columns(tmp_path, monkeypatch):
    from drmime_batch.engine._jobwatch import _lsf_statuses

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "bjobs", """\
        case "$*" in *-json*) echo "-json: Illegal option" >&2; exit 255;; esac
        echo "31|EXIT|2|/x/w-31.err|/x/w-31.out"
        echo "32|PEND|-|-|-"
        echo "Job <33> is not found" >&2
        exit 255
        """)
    _on_path(monkeypatch, bin_dir)
    statuses = _lsf_statuses(["31", "32", "33"])
    assert {j: (s.state, s.ended) for j, s in statuses.items()} == {"31": ("EXIT", True), "32": ("PEND", False),
                                                                    "33": ("", True)}
    end = statuses["31"].end
    assert end is not None and (end.exit_code, end.stderr) == ("2", "/x/w-31.err")


