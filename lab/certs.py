"""A small PKI for TLS tests, made with the ``openssl`` command line tool.

``make_pki(directory)`` writes into ``directory``:

- ``ca.pem``/``ca.key``: the test CA, which signs every other certificate here;
- ``other-ca.pem``/``other-ca.key``: an unrelated CA, for "wrong CA" tests;
- ``server.pem``/``server.key``: the broker's certificate, subjectAltName
  ``DNS:localhost`` only and extendedKeyUsage serverAuth. There is deliberately no IP
  SAN: a client that verifies hostnames accepts ``localhost`` and refuses ``127.0.0.1``;
- ``client-<cn>.pem``/``client-<cn>.key`` on demand (``Pki.client_cert(cn)``), with
  extendedKeyUsage clientAuth, for certificate (EXTERNAL) login.

Keys are EC P-256 (generated in milliseconds), unencrypted, and every certificate is
valid for a few days. Generation is idempotent per directory: a file that exists is
kept, and each file appears whole (written under a temporary name, then renamed).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

VALIDITY_DAYS = 3

_CA_EXTENSIONS = """\
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

_LEAF_EXTENSIONS = """\
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Pki:
    """Paths of the test PKI in ``directory`` (see the module's docstring)."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    other_ca_cert: Path
    other_ca_key: Path
    server_cert: Path
    server_key: Path

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        """``(cert_path, key_path)`` of a client certificate for common name ``cn``,
        signed by the CA (made on first use, then reused)."""
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", cn)
        cert, key = self.directory / f"client-{slug}.pem", self.directory / f"client-{slug}.key"
        _issue(cert, key, cn=cn, extensions=_LEAF_EXTENSIONS.format(usage="clientAuth"),
               issuer=(self.ca_cert, self.ca_key))
        return cert, key


def make_pki(directory: str | os.PathLike[str]) -> Pki:
    """Create (or reuse) the test PKI in ``directory`` and return its paths."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory=root,
              ca_cert=root / "ca.pem", ca_key=root / "ca.key",
              other_ca_cert=root / "other-ca.pem", other_ca_key=root / "other-ca.key",
              server_cert=root / "server.pem", server_key=root / "server.key")
    if _issue(pki.ca_cert, pki.ca_key, cn="lifecycle test CA", extensions=_CA_EXTENSIONS):
        for stale in [pki.server_cert, *root.glob("client-*.pem")]:
            stale.unlink(missing_ok=True)  # signed by a CA that is gone
    _issue(pki.other_ca_cert, pki.other_ca_key, cn="lifecycle other test CA",
           extensions=_CA_EXTENSIONS)
    _issue(pki.server_cert, pki.server_key, cn="localhost",
           extensions=_LEAF_EXTENSIONS.format(usage="serverAuth")
           + "subjectAltName = DNS:localhost\n",
           issuer=(pki.ca_cert, pki.ca_key))
    return pki


def _issue(cert: Path, key: Path, *, cn: str, extensions: str,
           issuer: tuple[Path, Path] | None = None) -> bool:
    """Write a new EC P-256 key and its certificate, self-signed or signed by ``issuer``
    (``(cert, key)``), unless both files already exist; True if it wrote them."""
    if cert.exists() and key.exists():
        return False
    config = ("[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ext\n"
              f"[dn]\nCN = {cn}\n[ext]\n{extensions}")
    with tempfile.TemporaryDirectory(dir=cert.parent, prefix=".issue-") as work:
        work_dir = Path(work)
        config_path = work_dir / "openssl.cnf"
        config_path.write_text(config)
        new_cert, new_key = work_dir / "cert.pem", work_dir / "key.pem"
        command = ["openssl", "req", "-x509", "-config", str(config_path),
                   "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc",
                   "-keyout", str(new_key), "-out", str(new_cert),
                   "-days", str(VALIDITY_DAYS)]
        if issuer is not None:
            command += ["-CA", str(issuer[0]), "-CAkey", str(issuer[1])]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"openssl failed for {cert.name} (exit {result.returncode}): "
                               f"{result.stderr.strip()}")
        os.replace(new_key, key)  # the key first: a certificate never lacks its key
        os.replace(new_cert, cert)
    return True
