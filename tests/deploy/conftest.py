"""Fixtures of the deployment tests: self-signed TLS certificates and a tiny batch made from the
bundled JPEGs (helpers for the dask processes live in ``_deploy_support.py``)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "drmime_batch" / "examples" / "cima-lung-lesion3" / "images"


# ------------------------------------------------------------------------------- certificates
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca_and_leaf_openssl(folder: Path, prefix: str) -> None:
    ext = folder / f"{prefix}-leaf.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        encoding="ascii",
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", f"{prefix}-ca-key.pem", "-out", f"{prefix}-ca.pem",
             "-days", "2", "-subj", f"/CN={prefix}-test-ca",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    _openssl("req", "-new", *ec, "-keyout", f"{prefix}-key.pem", "-out", f"{prefix}.csr",
             "-subj", "/CN=dask-test", cwd=folder)
    _openssl("x509", "-req", "-in", f"{prefix}.csr", "-CA", f"{prefix}-ca.pem",
             "-CAkey", f"{prefix}-ca-key.pem", "-CAcreateserial", "-out", f"{prefix}.pem",
             "-days", "2", "-extfile", ext.name, cwd=folder)


def _make_ca_and_leaf_cryptography(folder: Path, prefix: str) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name(f"{prefix}-test-ca")).issuer_name(name(f"{prefix}-test-ca"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(name("dask-test")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    nokey = serialization.NoEncryption()
    (folder / f"{prefix}-ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / f"{prefix}.pem").write_bytes(leaf.public_bytes(pem))
    (folder / f"{prefix}-key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, nokey)
    )


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``good-ca.pem``/``good.pem``/``good-key.pem`` (the cluster's CA and one leaf
    for every role) and ``rogue-*`` (an unrelated CA and leaf)."""
    folder = tmp_path_factory.mktemp("certs")
    try:
        import cryptography  # noqa: F401

        make = _make_ca_and_leaf_cryptography
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        make = _make_ca_and_leaf_openssl
    for prefix in ("good", "rogue"):
        make(folder, prefix)
    return folder


# ------------------------------------------------------------------------------- a tiny batch
@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two pairs of 128 px crops (TIFF) of the bundled lung-lesion stains, and their manifest."""
    import tifffile
    from PIL import Image

    folder = tmp_path_factory.mktemp("tiny-batch")
    crops = {}
    for stain, name in (("He", "29-041-Izd2-w35-He-les3.jpg"), ("CD31", "29-041-Izd2-w35-CD31-3-les3.jpg"),
                        ("Ki67", "29-041-Izd2-w35-Ki67-7-les3.jpg")):
        with Image.open(EXAMPLE / name) as img:
            small = np.asarray(img.convert("RGB").resize((img.width // 4, img.height // 4)))
        crop = np.ascontiguousarray(small[20:148, 40:168])
        path = folder / f"{stain}.tif"
        tifffile.imwrite(path, crop, photometric="rgb")
        crops[stain] = path
    manifest = folder / "manifest.csv"
    manifest.write_text(
        "pair_id,fixed,moving\n"
        f"CD31-to-He,{crops['He'].name},{crops['CD31'].name}\n"
        f"Ki67-to-He,{crops['He'].name},{crops['Ki67'].name}\n",
        encoding="utf-8",
    )
    return manifest




# ------------------------------------------------------------------------------- a real SLURM cluster
@pytest.fixture(scope="session")
def slurm_session():  # type: ignore[no-untyped-def]
    """A throwaway single-node SLURM cluster for the whole session (``_slurm_support``); skips with
    the reason where it cannot be started (no SLURM binaries, not root)."""
    from _slurm_support import single_node_slurm, slurm_unavailable

    why = slurm_unavailable()
    if why is not None:
        pytest.skip(why)
    with single_node_slurm() as cluster:
        yield cluster


@pytest.fixture
def slurm(slurm_session):  # type: ignore[no-untyped-def]
    """The session's SLURM cluster, with no job left over from the test before (cancelled after each)."""
    yield slurm_session
    slurm_session.cancel_all()
    slurm_session.wait_no_live_jobs(30)
