"""Certificates for a secure local stack: a CA of its own, a server and a client certificate.

Made once per state directory with the ``openssl`` command line (present on every
Debian; no Python dependency), in ``<dev_dir>/tls``::

    ca.pem            the CA certificate: what clients trust (the settings point at it)
    ca.key            the CA's key (kept only to sign the two below)
    server.pem/.key   127.0.0.1 and localhost, for Kafka, Redis and PostgreSQL
    server-bundle.pem the server's key and certificate in one file (Kafka's PEM keystore)
    client.pem/.key   a client certificate, for mutual TLS

Keys are EC P-256 in PKCS#8 without a passphrase: Kafka's PEM keystore, Redis and
PostgreSQL all read that form, and P-256 keys take milliseconds to make.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from resultlog.errors import DevStackError

DAYS = 825  # the longest validity clients accept for a server certificate
SERVER_NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost"
_KEY_OPTIONS = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]


class Certificates:
    """Where the files of one CA and its certificates are (all in ``directory``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = directory / "ca.pem"
        self.ca_key = directory / "ca.key"
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"
        self.server_bundle = directory / "server-bundle.pem"
        self.client_cert = directory / "client.pem"
        self.client_key = directory / "client.key"

    def complete(self) -> bool:
        return all(p.exists() for p in (self.ca, self.server_bundle, self.client_cert, self.client_key))


def ensure_certificates(directory: Path, *, name: str = "resultlog local stack") -> Certificates:
    """The CA and certificates in ``directory``, made now if any is missing.

    ``name`` goes into the CA's common name (a second CA made for a test that needs an
    untrusted one is then easy to tell apart in error messages).
    """
    certs = Certificates(directory)
    if certs.complete():
        return certs
    if shutil.which("openssl") is None:
        raise DevStackError(
            "the secure local stack makes its certificates with `openssl`, which is not on "
            "PATH (Debian: apt-get install -y openssl)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # PostgreSQL (user postgres) reads its copy from here
    _openssl("genpkey", *_KEY_OPTIONS, "-out", str(certs.ca_key))
    _openssl("req", "-x509", "-new", "-key", str(certs.ca_key), "-days", str(DAYS),
             "-subj", f"/CN={name} CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(certs.ca))
    _issue(certs, certs.server_key, certs.server_cert, "/CN=localhost",
           [SERVER_NAMES, "extendedKeyUsage=serverAuth"])
    _issue(certs, certs.client_key, certs.client_cert, "/CN=resultlog",
           ["extendedKeyUsage=clientAuth"])
    certs.server_bundle.write_text(certs.server_key.read_text() + certs.server_cert.read_text())
    for key in (certs.ca_key, certs.server_key, certs.server_bundle, certs.client_key):
        key.chmod(0o600)
    return certs


def _issue(certs: Certificates, key: Path, cert: Path, subject: str, extensions: list[str]) -> None:
    csr = cert.with_suffix(".csr")
    ext_file = cert.with_suffix(".ext")
    ext_file.write_text("\n".join(["basicConstraints=CA:FALSE", *extensions]) + "\n")
    try:
        _openssl("genpkey", *_KEY_OPTIONS, "-out", str(key))
        _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", str(certs.ca_key),
                 "-CAcreateserial", "-days", str(DAYS), "-extfile", str(ext_file), "-out", str(cert))
    finally:
        csr.unlink(missing_ok=True)
        ext_file.unlink(missing_ok=True)


def _openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise DevStackError(f"`openssl {args[0]}` failed (exit {done.returncode}): {done.stderr.strip()}")
