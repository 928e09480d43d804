"""Batches on separately started Dask processes, as on an HPC allocation, with and without TLS.

Real ``dask scheduler`` / ``dask worker`` processes on 127.0.0.1 (two "GPU" workers advertising
``--resources GPU=1``; torch runs on the CPU inside them), and ``drmime-batch submit`` / ``run`` as
subprocesses, exactly as a user on a login node would type them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from _deploy_support import cli, hpc_style_cluster, scheduler_address, tls_args, write_tls_config

pytestmark = [pytest.mark.timeout(180), pytest.mark.cluster, pytest.mark.slow]

SMALL = ["--max-iterations", "10", "--max-size", "128", "--levels", "1", "--points", "256", "--init", "moments"]


async def _connect(address: str, security: object) -> int:
    """Connect an asynchronous client and return the number of workers it sees."""
    from distributed import Client

    kwargs = {"security": security} if security is not None else {}
    # not the default client: a refused one never unsets the dask scheduler it would have set,
    # and every later dask computation in this process would then look for a client
    async with Client(address, asynchronous=True, timeout="5s", set_as_default=False, **kwargs) as client:
        await client.wait_for_workers(2, timeout=30)
        return len(client.scheduler_info()["workers"])


def _submit(work: Path, manifest: Path) -> Path:
    queue = work / "batch.sqlite"
    res = cli("submit", str(manifest), "--queue", str(queue), "--out", str(work / "out.zarr"),
              "--quiet", *SMALL, cwd=work)
    assert res.returncode == 0, res.stderr
    return queue


def _status(work: Path, queue: Path) -> list[dict]:
    res = cli("status", "--queue", str(queue), "--json", cwd=work)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_scheduler_file_batch_on_two_gpu_workers(tmp_path, tiny_manifest):
    from distributed import Client

    queue = _submit(tmp_path, tiny_manifest)
    with hpc_style_cluster(tmp_path) as scheduler_file:
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
            workers = client.scheduler_info()["workers"]
        res = cli("run", "--queue", str(queue), "--scheduler-file", str(scheduler_file),
                  "--no-warp", "--quiet", cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(w["name"] for w in workers.values()) == ["gpu-worker-0", "gpu-worker-1"]
    assert all(w["resources"] == {"GPU": 1} for w in workers.values())
    rows = _status(tmp_path, queue)
    assert {r["pair_id"]: r["state"] for r in rows} == {"CD31-to-He": "done", "Ki67-to-He": "done"}
    # the pairs ran on the separately started workers, not in a cluster made by `run`
    assert {r["worker"] for r in rows} <= set(workers), rows
    for pair in ("CD31-to-He", "Ki67-to-He"):
        assert (tmp_path / "out.zarr" / pair / "transform").is_dir()


# the refused clients' __del__ complains about their half-open connection
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls_cluster_runs_a_batch_and_refuses_clients_without_the_certificate(
    tmp_path, tiny_manifest, certs
):
    from distributed import Security

    from drmime_batch.engine._tls import load_security

    queue = _submit(tmp_path, tiny_manifest)
    good = write_tls_config(tmp_path / "tls.yaml", certs, "good")
    rogue = write_tls_config(tmp_path / "rogue.yaml", certs, "rogue")
    with hpc_style_cluster(tmp_path, extra=tls_args(certs, "good")) as scheduler_file:
        address = scheduler_address(scheduler_file)
        assert address.startswith("tls://127.0.0.1:")

        # refused: no certificate at all, a certificate from another CA, plain tcp
        # (asynchronous clients, each in its own event loop: a failed synchronous Client can leave
        # distributed's shared loop thread behind and make the next one flaky)
        with pytest.raises(TypeError, match="TLS expects a `ssl_context` argument"):
            asyncio.run(_connect(address, None))
        rogue_sec = Security(
            tls_ca_file=str(certs / "rogue-ca.pem"),
            tls_client_cert=str(certs / "rogue.pem"),
            tls_client_key=str(certs / "rogue-key.pem"),
            require_encryption=True,
        )
        with pytest.raises((OSError, TimeoutError)):
            asyncio.run(_connect(address, rogue_sec))
        with pytest.raises((OSError, TimeoutError)):
            asyncio.run(_connect(address.replace("tls://", "tcp://"), None))
        good_sec = load_security(good)
        assert asyncio.run(_connect(address, good_sec)) == 2  # the same client code, right certs
        res = cli("run", "--queue", str(queue), "--scheduler-file", str(scheduler_file),
                  "--cluster-config", str(rogue), "--no-warp", "--quiet", cwd=tmp_path)
        assert res.returncode != 0
        assert "cannot reach" in res.stderr
        assert all(r["state"] == "pending" for r in _status(tmp_path, queue))

        # accepted: the cluster's CA and a certificate it signed, from --cluster-config
        res = cli("run", "--queue", str(queue), "--scheduler-file", str(scheduler_file),
                  "--cluster-config", str(good), "--no-warp", "--quiet", cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "BEGIN" not in res.stdout + res.stderr  # no key material in the output
    assert {r["state"] for r in _status(tmp_path, queue)} == {"done"}
