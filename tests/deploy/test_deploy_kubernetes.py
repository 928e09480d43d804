"""Kubernetes manifests, the generated DaskCluster spec and the Dockerfile (no cluster, no engine)."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from drmime_batch.engine._cluster_config import load_cluster_config
from drmime_batch.engine._clusters import job_script, make_cluster
from drmime_batch.engine._kubernetes import kubernetes_cluster_spec
from drmime_batch.errors import ClusterConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
HAS_DASK_KUBERNETES = importlib.util.find_spec("dask_kubernetes") is not None
needs_k8s = pytest.mark.skipif(not HAS_DASK_KUBERNETES, reason="dask-kubernetes (extra k8s) not installed")


def _docs(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if d]
    assert docs, name
    return docs


def _all_docs() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _docs(path.name)]


def _one(kind: str) -> dict:
    found = [d for d in _all_docs() if d["kind"] == kind]
    assert len(found) == 1, (kind, [d["kind"] for d in _all_docs()])
    return found[0]


def _check_dask_cluster(spec: dict) -> None:
    """What the dask-kubernetes operator needs, plus our GPU and exposure rules."""
    assert spec["apiVersion"] == "kubernetes.dask.org/v1"
    assert spec["kind"] == "DaskCluster"
    name = spec["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    body = spec["spec"]
    # the CRD requires spec.scheduler{spec, service} and spec.worker{spec}
    assert {"scheduler", "worker"} <= set(body)
    assert {"spec", "service"} <= set(body["scheduler"])
    assert "spec" in body["worker"]

    (sched,) = body["scheduler"]["spec"]["containers"]
    sched_cmd = sched.get("command", []) + sched.get("args", [])
    assert sched_cmd[:2] == ["dask", "scheduler"]
    assert {p["containerPort"] for p in sched["ports"]} >= {8786}
    # CPU scheduler: no GPU anywhere in its resources
    assert "gpu" not in yaml.safe_dump(sched.get("resources", {})).lower()

    service = body["scheduler"]["service"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    assert not any("nodePort" in p for p in service["ports"])
    assert service["selector"] == {
        "dask.org/cluster-name": name,
        "dask.org/component": "scheduler",
    }
    assert {p["port"] for p in service["ports"]} >= {8786}

    (worker,) = body["worker"]["spec"]["containers"]
    cmd = worker.get("command", []) + worker.get("args", [])
    assert cmd[:2] == ["dask", "worker"]
    i = cmd.index("--resources")
    assert cmd[i + 1] == "GPU=1"
    assert "$(DASK_WORKER_NAME)" in cmd
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    # GPU requests, if any, must equal the limit (extended resources cannot be overcommitted)
    assert worker["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1


def test_every_manifest_parses_and_names_kind_and_api_version():
    docs = _all_docs()
    kinds = {d["kind"] for d in docs}
    assert {"DaskCluster", "Job", "PersistentVolumeClaim"} <= kinds
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]


def test_dask_cluster_manifest_cpu_scheduler_gpu_workers():
    spec = _one("DaskCluster")
    _check_dask_cluster(spec)
    worker_pod = spec["spec"]["worker"]["spec"]
    claim = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in worker_pod["volumes"]}
    assert claim["shared"] == _one("PersistentVolumeClaim")["metadata"]["name"]
    mounts = worker_pod["containers"][0]["volumeMounts"]
    assert {"name": "shared", "mountPath": "/data"} in mounts


def test_no_service_anywhere_is_exposed_outside_the_cluster():
    for doc in _all_docs():
        text = yaml.safe_dump(doc)
        assert "LoadBalancer" not in text and "NodePort" not in text, doc["metadata"]["name"]
        assert "hostNetwork: true" not in text and "hostPort" not in text


def test_pvc_is_shared_read_write_many():
    pvc = _one("PersistentVolumeClaim")
    assert pvc["apiVersion"] == "v1"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_driver_job_runs_submit_and_run_against_the_in_cluster_scheduler():
    job = _one("Job")
    cluster = _one("DaskCluster")
    assert job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    script = " ".join(container.get("command", []) + container.get("args", []))
    address = f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    assert "drmime-batch submit" in script
    assert re.search(rf"drmime-batch run .*--scheduler {re.escape(address)}", script), script
    # the driver takes no GPU, and shares the workers' volume at the same path
    assert "gpu" not in yaml.safe_dump(container.get("resources", {})).lower()
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
    pvc = _one("PersistentVolumeClaim")["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if claims[m["name"]] == pvc)
    assert mount["mountPath"] == "/data"
    assert "/data/" in script  # queue and outputs on the shared volume
    # the pod carries the label the NetworkPolicy lets through to the scheduler
    policy = _one("NetworkPolicy")
    allowed = [rule["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"][0]["from"]]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in allowed)


def test_no_secret_values_in_manifests():
    for path in K8S.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?i)(aws_secret_access_key|password|token)\s*[:=]\s*\S", text), path
        assert "kind: Secret" not in text, path  # secrets are created by the user, not committed


@needs_k8s
def test_generated_spec_follows_the_same_rules(tmp_path):
    config = load_cluster_config(DEPLOY / "hpc" / "kubernetes.yaml")
    spec = kubernetes_cluster_spec(config)
    _check_dask_cluster(spec)
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    assert worker["image"] == config["kubernetes"]["image"]
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in worker["env"]
    assert spec["spec"]["worker"]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "drmime-data"
    }
    two = tmp_path / "two.yaml"
    two.write_text("drmime-batch: {gpus-per-job: 2}\n", encoding="utf-8")
    w2 = kubernetes_cluster_spec(load_cluster_config(two))["spec"]["worker"]["spec"]["containers"][0]
    assert w2["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert w2["command"][w2["command"].index("--nworkers") + 1] == "2"
    assert w2["command"][w2["command"].index("--preload") + 1] == "drmime_batch.engine._gpu_pinning"
    assert w2["command"][w2["command"].index("--resources") + 1] == "GPU=1"
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text("drmime-batch: {gpus-per-job: 0}\n", encoding="utf-8")
    pod = kubernetes_cluster_spec(load_cluster_config(cpu))["spec"]["worker"]["spec"]
    assert "gpu" not in yaml.safe_dump(pod).lower()  # no GPU limit, toleration or resource


def _leaves(node: Any, path: tuple = ()) -> dict[tuple, Any]:
    """``{path: value}`` of every leaf of a nested mapping/list (list items by index)."""
    if isinstance(node, dict) and node:
        return {k: v for key, sub in node.items() for k, v in _leaves(sub, (*path, key)).items()}
    if isinstance(node, list) and node:
        return {k: v for i, sub in enumerate(node) for k, v in _leaves(sub, (*path, i)).items()}
    return {path: node}


#: what we set ourselves in each container the operator's builders make (the rest must survive)
_PATCHED = {"args", "env", "resources"}


@needs_k8s
def test_generated_spec_keeps_every_default_of_the_operator_builders():
    from dask_kubernetes.operator import make_cluster_spec
    from dask_kubernetes.operator.validation import validate_cluster_name

    validate_cluster_name(_one("DaskCluster")["metadata"]["name"])
    validate_cluster_name(kubernetes_cluster_spec({})["metadata"]["name"])

    config = load_cluster_config(DEPLOY / "hpc" / "kubernetes.yaml")
    ours = kubernetes_cluster_spec(config)
    theirs = make_cluster_spec(name=ours["metadata"]["name"], image=config["kubernetes"]["image"])
    mine = _leaves(ours)
    for path, value in _leaves(theirs).items():
        if "containers" in path and path[path.index("containers") + 2] in _PATCHED:
            continue
        if path == ("spec", "worker", "replicas"):
            continue  # kubernetes.count.start, 0 by default
        assert path in mine and mine[path] == value, (path, value, mine.get(path))
    (scheduler,) = ours["spec"]["scheduler"]["spec"]["containers"]
    assert scheduler["livenessProbe"]["httpGet"] == {"port": "http-dashboard", "path": "/health"}
    assert scheduler["readinessProbe"]["httpGet"] == {"port": "http-dashboard", "path": "/health"}
    # the builders' `args` become `command` (the image's ENTRYPOINT is drmime-batch), spelled
    # with the `dask` command that distributed ships
    assert "args" not in scheduler and scheduler["command"][:2] == ["dask", "scheduler"]
    (worker,) = ours["spec"]["worker"]["spec"]["containers"]
    (their_worker,) = theirs["spec"]["worker"]["spec"]["containers"]
    assert "args" not in worker
    assert worker["command"][-5:] == their_worker["args"][-5:]  # --name ... --dashboard-address 8788


@needs_k8s
def test_checked_in_manifest_is_in_step_with_the_generated_spec():
    """``kubernetes/daskcluster.yaml`` (applied by hand) and ``run --cluster kubernetes`` with
    ``hpc/kubernetes.yaml`` must describe the same cluster, builder defaults included."""
    generated = kubernetes_cluster_spec(load_cluster_config(DEPLOY / "hpc" / "kubernetes.yaml"))
    checked_in = _one("DaskCluster")

    def shape(spec: dict) -> dict:
        body = spec["spec"]
        (sched,) = body["scheduler"]["spec"]["containers"]
        worker_pod = body["worker"]["spec"]
        (worker,) = worker_pod["containers"]
        pick = ("image", "command", "ports", "resources", "readinessProbe", "livenessProbe", "volumeMounts")
        return {
            "name": spec["metadata"]["name"],
            "idleTimeout": body.get("idleTimeout"),
            "service": body["scheduler"]["service"],
            "scheduler": {k: sched.get(k) for k in pick},
            "worker": {k: worker.get(k) for k in pick},
            "worker_pod": {k: worker_pod.get(k) for k in ("volumes", "tolerations")},
        }

    assert shape(checked_in) == shape(generated)


@needs_k8s
def test_cluster_script_kubernetes_prints_the_builder_based_manifest(capsys):
    from drmime_batch.cli import main

    assert main(["cluster-script", "kubernetes", "--cluster-config", str(DEPLOY / "hpc" / "kubernetes.yaml")]) == 0
    text = capsys.readouterr().out
    assert "&id" not in text and "*id" not in text  # no YAML aliases
    spec = yaml.safe_load(text)
    _check_dask_cluster(spec)
    assert "livenessProbe" in spec["spec"]["scheduler"]["spec"]["containers"][0]


@needs_k8s
def test_list_form_env_is_not_shared_between_containers(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("kubernetes: {env: [{name: A, value: '1'}]}\n", encoding="utf-8")
    text = yaml.safe_dump(kubernetes_cluster_spec(load_cluster_config(path)))
    assert "&id" not in text and text.count("name: A") == 2


@needs_k8s
def test_make_cluster_kubernetes_passes_the_file_settings_as_arguments(tmp_path, monkeypatch):
    """KubeCluster gets the builder-based spec and the file's own settings as arguments, not
    through the process-wide dask config (a stand-in records what it was given; no cluster)."""
    import dask.config
    import dask_kubernetes.operator as operator
    from dask_kubernetes.operator.kubecluster.kubecluster import CreateMode

    seen: dict[str, Any] = {}

    class RecordingKubeCluster:
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs, config_namespace=dask.config.get("kubernetes.namespace", None))
            self.name = kwargs["custom_cluster_spec"]["metadata"]["name"]

        def adapt(self, minimum: int, maximum: int) -> None:
            seen["adapt"] = (minimum, maximum)

    monkeypatch.setattr(operator, "KubeCluster", RecordingKubeCluster)
    path = tmp_path / "k.yaml"
    path.write_text(
        "kubernetes: {namespace: histology, shutdown_on_close: false, create-mode: CONNECT_ONLY}\n",
        encoding="utf-8",
    )
    make_cluster("kubernetes", config_path=path, min_jobs=1, max_jobs=3)
    assert seen["namespace"] == "histology" and seen["config_namespace"] != "histology"
    assert seen["shutdown_on_close"] is False and seen["create_mode"] is CreateMode.CONNECT_ONLY
    _check_dask_cluster(seen["custom_cluster_spec"])
    assert "livenessProbe" in seen["custom_cluster_spec"]["spec"]["scheduler"]["spec"]["containers"][0]
    assert seen["adapt"] == (1, 3)
    path.write_text("kubernetes: {create-mode: SOMETIMES}\n", encoding="utf-8")
    with pytest.raises(ClusterConfigError, match="create-mode must be one of"):
        make_cluster("kubernetes", config_path=path, min_jobs=0, max_jobs=1)


def test_kubernetes_without_the_extra_names_it(monkeypatch):
    """As if dask-kubernetes were not installed (``None`` in sys.modules makes imports fail)."""
    for name in [m for m in sys.modules if m == "dask_kubernetes" or m.startswith("dask_kubernetes.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)
    monkeypatch.setitem(sys.modules, "dask_kubernetes.operator", None)
    with pytest.raises(ClusterConfigError, match=r"pip install 'drmime-batch\[k8s\]'"):
        make_cluster("kubernetes", config_path=None, min_jobs=0, max_jobs=2)
    with pytest.raises(ClusterConfigError, match=r"pip install 'drmime-batch\[k8s\]'"):
        job_script("kubernetes", config_path=None)


# --- Dockerfile: structural lint (no container engine here) -------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, rest = line.partition(" ")
            out.append((instr.upper(), rest.strip()))
    return out


def test_dockerfile_structure():
    steps = _dockerfile()
    instrs = [i for i, _ in steps]
    known = {"ARG", "FROM", "ENV", "WORKDIR", "COPY", "RUN", "USER", "ENTRYPOINT", "CMD", "LABEL"}
    assert set(instrs) <= known, set(instrs) - known
    args = dict(
        a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a
    )
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) == 1
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0])
    assert re.fullmatch(r"pytorch/pytorch:[\w.]+-cuda[\d.]+-cudnn\d+-(runtime|devel)", base), base
    assert instrs.index("FROM") < instrs.index("COPY")

    # the package source is copied and pip-installed from it
    copies = [a for i, a in steps if i == "COPY"]
    assert any(a.startswith("drmime_batch ") for a in copies)
    assert any(a.startswith("pyproject.toml") for a in copies)
    runs = " ".join(a for i, a in steps if i == "RUN")
    assert re.search(r"pip install \"?\.(\[[\w,]+\])?\"?", runs), runs
    assert re.search(r"pip install \"?\.\[[\w,]*\bcloud\b", runs), "the image needs the cloud extra (s3fs, gcsfs)"
    assert instrs.index("COPY") < instrs.index("RUN")

    # runs as a non-root user, from after the installs to the end
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_user = len(instrs) - 1 - instrs[::-1].index("USER")
    assert "RUN" not in instrs[last_user:]

    entry = next(a for i, a in steps if i == "ENTRYPOINT")
    assert yaml.safe_load(entry) == ["drmime-batch"]  # exec form


def test_dockerfile_has_no_secrets_and_no_add_from_urls():
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert not re.search(r"(?i)(secret|password|token|access_key)\s*=", text)
    assert "ADD http" not in text
    for instr, arg in _dockerfile():
        if instr == "ENV":
            for word in shlex.split(arg):
                assert not re.match(r"(?i)(AWS_|GOOGLE_|AZURE_)", word), word


def test_readme_covers_every_deployment_route():
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for needle in (
        "## SLURM", "## PBS", "## Kubernetes", "Dask Gateway", "--scheduler ", "--scheduler-file",
        "s3://", "gs://", "## TLS", "## Resuming", "cluster-script", "--min-jobs", "--max-jobs",
        "Shared storage",
    ):
        assert needle in text, needle
    for path in re.findall(r"`((?:hpc|kubernetes)/[\w.-]+)`", text):
        assert (DEPLOY / path).is_file(), path
