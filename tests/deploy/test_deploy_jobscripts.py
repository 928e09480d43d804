"""Job scripts dask-jobqueue generates from our cluster configuration (nothing is submitted)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("dask_jobqueue")

from drmime_batch.cli import main  # noqa: E402
from drmime_batch.engine._cluster_config import hpc_settings, load_cluster_config  # noqa: E402
from drmime_batch.engine._clusters import job_script, make_cluster  # noqa: E402
from drmime_batch.engine._tls import load_security  # noqa: E402
from drmime_batch.errors import ClusterConfigError  # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

WALLTIME = {"slurm": "03:30:00", "pbs": "03:30:00", "lsf": "03:30"}
GPU_REQUEST = {
    "slurm": lambda n: f"#SBATCH --gres=gpu:{n}",
    "pbs": lambda n: f"ngpus={n}",
    "lsf": lambda n: f'#BSUB -gpu "num={n}"',
}
MEMORY = {"slurm": "#SBATCH --mem=", "pbs": ":mem=", "lsf": "#BSUB -M "}
WALLTIME_LINE = {"slurm": "#SBATCH -t ", "pbs": "#PBS -l walltime=", "lsf": "#BSUB -W "}


def _write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _config(tmp_path: Path, kind: str, gpus: int = 1, extra: str = "") -> Path:
    return _write(
        tmp_path,
        f"""
        jobqueue:
          {kind}:
            cores: 6
            memory: 48GB
            walltime: "{WALLTIME[kind]}"
            queue: gpuq
            {extra}
        drmime-batch:
          gpus-per-job: {gpus}
          prologue:
            - module load cuda/12.4
            - source /opt/venvs/drmime/bin/activate
        """,
    )


@pytest.mark.parametrize("kind", ["slurm", "pbs", "lsf"])
@pytest.mark.parametrize("gpus", [1, 2])
def test_job_script_has_gpu_resources_prologue_memory_walltime(tmp_path, kind, gpus):
    script = job_script(kind, config_path=_config(tmp_path, kind, gpus))
    lines = script.splitlines()
    header = [ln for ln in lines if ln.startswith(("#SBATCH", "#PBS", "#BSUB"))]
    command = next(ln for ln in lines if "distributed.cli.dask_worker" in ln)

    # the GPU asked in the scheduler's own terms, in a header directive
    assert any(GPU_REQUEST[kind](gpus) in ln for ln in header), header
    # memory and walltime of the job
    assert any(ln.startswith(MEMORY[kind]) or MEMORY[kind] in ln for ln in header), header
    assert f"{WALLTIME_LINE[kind]}{WALLTIME[kind]}" in header
    # the prologue runs before the worker, in order
    i_module = lines.index("module load cuda/12.4")
    i_venv = lines.index("source /opt/venvs/drmime/bin/activate")
    assert i_module < i_venv < lines.index(command)
    # one worker process per GPU, each advertising one GPU
    assert "--resources GPU=1" in command
    assert f"--nthreads {6 // gpus}" in command
    if gpus == 1:
        assert "--nworkers" not in command and "--preload" not in command
    else:
        assert f"--nworkers {gpus}" in command
        assert "--preload drmime_batch.engine._gpu_pinning" in command


def test_pbs_select_statement_carries_cpus_memory_and_gpus(tmp_path):
    script = job_script("pbs", config_path=_config(tmp_path, "pbs", gpus=1))
    assert re.search(r"^#PBS -l select=1:ncpus=6:mem=\d+GB:ngpus=1$", script, re.M), script


def test_pbs_user_resource_spec_gets_ngpus_appended_or_checked(tmp_path):
    path = _config(tmp_path, "pbs", 1, extra='resource-spec: "select=1:ncpus=6:mem=48GB:host_type=x"')
    assert "#PBS -l select=1:ncpus=6:mem=48GB:host_type=x:ngpus=1" in job_script("pbs", config_path=path)
    bad = _config(tmp_path, "pbs", 1, extra='resource-spec: "select=1:ncpus=6:ngpus=4"')
    with pytest.raises(ClusterConfigError, match=r"ngpus=4 but drmime-batch\.gpus-per-job is 1"):
        job_script("pbs", config_path=bad)


def test_user_gpu_directive_is_kept_not_duplicated(tmp_path):
    path = _config(tmp_path, "slurm", 1, extra='job-extra-directives: ["--gres=gpu:a100:1"]')
    script = job_script("slurm", config_path=path)
    assert "#SBATCH --gres=gpu:a100:1" in script
    assert "--gres=gpu:1\n" not in script


def test_cpu_only_jobs_ask_no_gpu_and_advertise_no_gpu(tmp_path):
    script = job_script("slurm", config_path=_config(tmp_path, "slurm", gpus=0))
    assert "gres" not in script and "GPU=1" not in script


def test_underscore_keys_and_dask_config_semantics(tmp_path):
    path = _write(
        tmp_path,
        """
        jobqueue:
          slurm:
            cores: 4
            memory: 16GB
            job_extra_directives: ["--qos=short"]
            job_script_prologue: ["echo centre-prologue"]
        drmime_batch:
          gpus_per_job: 1
          prologue: echo our-prologue
          worker_resources: {GPU: 1, VRAM_GB: 40}
        """,
    )
    script = job_script("slurm", config_path=path)
    assert "#SBATCH --qos=short" in script and "#SBATCH --gres=gpu:1" in script
    assert script.index("echo centre-prologue") < script.index("echo our-prologue")
    assert "--resources GPU=1 VRAM_GB=40" in script


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("jobqueue: {slurm: {cores: 4}}\n", r"jobqueue.slurm.memory not set"),
        (
            "jobqueue: {slurm: {cores: 4, memory: 8GB, processes: 1}}\ndrmime-batch: {gpus-per-job: 2}\n",
            r"processes is 1 but drmime-batch.gpus-per-job is 2",
        ),
        (
            "jobqueue: {slurm: {cores: 1, memory: 8GB}}\ndrmime-batch: {gpus-per-job: 2}\n",
            r"cores \(1\) must be at least drmime-batch.gpus-per-job \(2\)",
        ),
        ("drmime-batch: {gpu: 1}\n", r"unknown key\(s\) \['gpu'\] under 'drmime-batch'"),
        ("drmime-batch: {gpus-per-job: -1}\n", r"gpus-per-job must be an integer >= 0, got -1"),
        ("slurm: {cores: 4}\n", r"unknown top-level section\(s\) \['slurm'\]"),
        ("- a\n- b\n", r"must be a YAML mapping"),
        ("jobqueue: [1, 2\n", r"not valid YAML"),
        (
            "jobqueue: {slurm: {cores: 4, memory: 8GB, worker-extra-args: [--resources, GPU=2]}}\n",
            r"already has --resources",
        ),
    ],
)
def test_bad_configs_are_refused_with_the_reason(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ClusterConfigError, match=match):
        job_script("slurm", config_path=path)


def test_missing_file_and_unknown_kind(tmp_path):
    with pytest.raises(ClusterConfigError, match="cluster config file not found"):
        load_cluster_config(tmp_path / "nope.yaml")
    with pytest.raises(ClusterConfigError, match=r"cluster kind must be one of .*got 'sge'"):
        job_script("sge", config_path=None)


def test_tls_settings_reach_the_worker_command(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("ca.pem", "w.pem", "w-key.pem", "c.pem", "c-key.pem"):
        (certs / name).write_text("placeholder", encoding="utf-8")
    path = _write(
        tmp_path,
        """
        jobqueue: {slurm: {cores: 4, memory: 16GB}}
        distributed:
          comm:
            require-encryption: true
            tls:
              ca-file: certs/ca.pem
              worker: {cert: certs/w.pem, key: certs/w-key.pem}
              client: {cert: certs/c.pem, key: certs/c-key.pem}
        """,
    )
    script = job_script("slurm", config_path=path)
    assert "tls://<scheduler-address>:8786" in script
    assert f"--tls-ca-file {certs / 'ca.pem'}" in script  # relative paths resolved against the file
    assert f"--tls-cert {certs / 'w.pem'}" in script and f"--tls-key {certs / 'w-key.pem'}" in script
    assert "--protocol tls://" in script
    security = load_security(path)
    assert security is not None and security.require_encryption
    assert security.tls_client_cert == str(certs / "c.pem")


def test_job_script_and_tls_never_set_the_process_wide_dask_config(tmp_path, monkeypatch):
    """Other threads of the driver share dask's config: the file's settings are passed as
    arguments and win over Dask's own, which stay as they were."""
    import dask.config

    for name in ("ca.pem", "c.pem", "c-key.pem"):
        (tmp_path / name).write_text("placeholder", encoding="utf-8")
    path = _config(tmp_path, "slurm", extra="interface: ib0")
    with open(path, "a", encoding="utf-8") as f:
        f.write("distributed: {comm: {tls: {ca-file: ca.pem, min-version: 1.3,"
                " client: {cert: c.pem, key: c-key.pem}}}}\n")

    def refuse(*args, **kwargs):
        raise AssertionError(f"dask.config.set{args}")

    with dask.config.set({"jobqueue.slurm.queue": "theirs", "jobqueue.slurm.interface": "eth0"}):
        monkeypatch.setattr(dask.config, "set", refuse)
        script = job_script("slurm", config_path=path)
        security = load_security(path)
        monkeypatch.undo()
        assert dask.config.get("jobqueue.slurm.queue") == "theirs"
        assert dask.config.get("distributed.comm.tls.ca-file") is None
    assert "#SBATCH -p gpuq" in script and "--interface ib0" in script
    assert security is not None and security.tls_ca_file == str(tmp_path / "ca.pem")
    assert security.tls_client_key == str(tmp_path / "c-key.pem")
    assert security.tls_min_version.name == "TLSv1_3"
    bad = _write(tmp_path, "distributed: {comm: {tls: {ca-file: ca.pem, max-version: 1.1}}}\n", "v.yaml")
    with pytest.raises(ClusterConfigError, match=r"tls.max-version must be 1.2, 1.3 or null, got 1.1"):
        load_security(bad)


def test_load_security_none_and_errors(tmp_path):
    assert load_security(None) is None
    assert load_security(_config(tmp_path, "slurm")) is None
    missing = _write(tmp_path, "distributed: {comm: {tls: {ca-file: nowhere/ca.pem}}}\n", "m.yaml")
    with pytest.raises(ClusterConfigError, match=r"tls.ca-file file not found: .*nowhere"):
        load_security(missing)
    (tmp_path / "ca.pem").write_text("x", encoding="utf-8")
    half = _write(
        tmp_path, "distributed: {comm: {tls: {ca-file: ca.pem, client: {cert: ca.pem}}}}\n", "h.yaml"
    )
    with pytest.raises(ClusterConfigError, match=r"tls.client needs both 'cert' and 'key'"):
        load_security(half)
    no_ca = _write(tmp_path, "distributed: {comm: {require-encryption: true}}\n", "n.yaml")
    with pytest.raises(ClusterConfigError, match="require-encryption is true but"):
        load_security(no_ca)


@pytest.mark.parametrize(
    ("name", "kind", "gpus"),
    [
        ("slurm-gpu.yaml", "slurm", 1),
        ("pbs-gpu.yaml", "pbs", 1),
        ("lsf-gpu.yaml", "lsf", 1),
        ("slurm-4gpu-node.yaml", "slurm", 4),
    ],
)
def test_documented_examples_give_gpu_job_scripts(name, kind, gpus, tmp_path, monkeypatch):
    path = DEPLOY / "hpc" / name
    monkeypatch.chdir(tmp_path)  # the examples' relative log-directory is created where the cluster is built
    script = job_script(kind, config_path=path)
    assert GPU_REQUEST[kind](gpus) in script
    assert "--resources GPU=1" in script
    assert "source $HOME/venvs/drmime/bin/activate" in script
    assert hpc_settings(load_cluster_config(path)).gpus_per_job == gpus


def test_cluster_script_command_prints_the_script(tmp_path, capsys):
    path = _config(tmp_path, "lsf")
    assert main(["cluster-script", "lsf", "--cluster-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/usr/bin/env bash") and '#BSUB -gpu "num=1"' in out
    assert main(["cluster-script", "slurm", "--cluster-config", str(tmp_path / "x.yaml")]) == 1
    assert "cluster config file not found" in capsys.readouterr().err


@pytest.mark.cluster
def test_make_cluster_submits_the_same_script_and_adapts(tmp_path):
    """A real SLURMCluster (scheduler on this machine, no job submitted with min_jobs=0)."""
    path = _config(
        tmp_path, "slurm", 2, extra='scheduler-options: {dashboard_address: ":0", host: 127.0.0.1}'
    )
    with pytest.raises(ClusterConfigError, match="min_jobs <= max_jobs"):
        make_cluster("slurm", config_path=path, min_jobs=3, max_jobs=2)
    cluster = make_cluster("slurm", config_path=path, min_jobs=0, max_jobs=3)
    try:
        real = cluster.job_script()
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        expected = job_script("slurm", config_path=path).replace(
            "tcp://<scheduler-address>:8786", cluster.scheduler_address
        )
        assert real == expected
        assert cluster._adaptive is not None
        assert cluster._adaptive.maximum == 3 * 2  # jobs x worker processes per job
        assert len(cluster.workers) == 0  # nothing submitted
    finally:
        cluster.close()


def test_former_hpc_module_keeps_its_names_and_its_preload():
    """Job scripts written before the split preload ``drmime_batch.engine._hpc``; it must still pin."""
    import drmime_batch.engine as engine
    from drmime_batch.engine import _gpu_pinning, _hpc

    assert _hpc.dask_setup is _gpu_pinning.dask_setup  # what distributed calls for a preload module
    for name in _hpc.__all__:
        assert getattr(_hpc, name) is not None, name
    for name in ("job_script", "load_cluster_config", "load_security", "make_cluster"):
        assert getattr(engine, name) is getattr(_hpc, name), name
