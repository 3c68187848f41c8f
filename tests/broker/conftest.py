"""Broker test helpers: raw paho clients (``mqtt_support.Probe``), TLS test certs."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mqtt_support import USERS, Probe

from fedmq.broker.cli import add_user


@pytest.fixture(scope="session")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A password file (amqtt's Argon2 format) holding ``USERS``."""
    path = tmp_path_factory.mktemp("logins") / "passwords.txt"
    for user, password in USERS.items():
        add_user(path, user, password)
    return path


@pytest.fixture
def probe() -> Iterator[Callable[..., Probe]]:
    """Make Probes; all are disconnected at teardown."""
    made: list[Probe] = []

    def make(port: int, client_id: str, **kw: Any) -> Probe:
        p = Probe(port, client_id, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, Any] | None,
          *, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True)
    if server:  # clients check the broker's address against the SAN, not the CN
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, key: ec.EllipticCurvePrivateKey,
           cert: x509.Certificate) -> tuple[str, str]:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("tls")
    ca_key, server_key, client_key, other_key = (ec.generate_private_key(ec.SECP256R1())
                                                 for _ in range(4))
    ca = _cert("fedmq test CA", ca_key, None, ca=True)
    files: dict[str, str] = {}
    files["ca"], _ = _write(d, "ca", ca_key, ca)
    files["server_cert"], files["server_key"] = _write(
        d, "server", server_key, _cert("broker", server_key, ("fedmq test CA", ca_key),
                                       server=True))
    files["client_cert"], files["client_key"] = _write(
        d, "client", client_key, _cert("dev-000", client_key, ("fedmq test CA", ca_key)))
    other = _cert("another CA", other_key, None, ca=True)
    files["other_ca"], _ = _write(d, "other", other_key, other)
    return files

