"""A local S3 for the object-store tests: moto's threaded server on 127.0.0.1, one bucket.

Nothing leaves the machine: the server listens on the loopback address, and every S3 client
(s3fs in this process, the CLI's subprocesses and their Dask workers) finds it through the
standard AWS_* variables, exactly as a deployment finds a real endpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass(frozen=True)
class S3:
    """A running moto server and its bucket."""

    endpoint: str
    bucket: str
    env: dict[str, str]
    fs: Any  # s3fs.S3FileSystem

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def upload(self, local: Path, key: str) -> str:
        """Put a file, or a directory tree (a zarr store), at ``key``; return its URL."""
        target = f"{self.bucket}/{key}"
        if local.is_dir():
            for path in sorted(local.rglob("*")):
                if path.is_file():
                    self.fs.put_file(str(path), f"{target}/{path.relative_to(local).as_posix()}")
        else:
            self.fs.put_file(str(local), target)
        self.fs.invalidate_cache()
        return self.url(key)

    def keys(self, prefix: str) -> list[str]:
        """Every object key under ``prefix`` (bucket name left out)."""
        self.fs.invalidate_cache()
        found = self.fs.find(f"{self.bucket}/{prefix}")
        return [k.split("/", 1)[1] for k in found]


def _clear_fsspec_caches() -> None:
    """Forget cached S3 file systems: they keep the endpoint of the server they first met."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def moto_s3() -> Iterator[S3]:
    """Start moto on a free loopback port, point the AWS_* variables at it, make a fresh bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in (*env, "AWS_PROFILE", "AWS_SESSION_TOKEN")}
    try:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(k, None)
        os.environ.update(env)
        _clear_fsspec_caches()
        import s3fs

        fs = s3fs.S3FileSystem()
        bucket = f"drmime-{uuid.uuid4().hex[:10]}"  # new names: per-process caches never mix servers
        fs.mkdir(bucket)
        yield S3(env["AWS_ENDPOINT_URL"], bucket, env, fs)
    finally:
        _clear_fsspec_caches()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
