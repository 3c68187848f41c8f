"""A gateway's own small CA and the broker's server certificate (``cryptography``, EC P-256).

The CA key never leaves the gateway (mode 0600); devices get only ``ca.crt`` and
check the broker's address against the server certificate's SANs, which always
include IP:127.0.0.1 and DNS:localhost so the aggregator on the gateway connects
by loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmq.protocol.errors import ConfigError
from fedmq.runtime.files import write_atomic

CA_DAYS = 3650
SERVER_DAYS = 825
ALWAYS = ("IP:127.0.0.1", "DNS:localhost")


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def parse_san(value: str) -> x509.GeneralName:
    """``IP:192.168.1.10`` or ``DNS:gw.local`` -> a SAN entry; ConfigError naming the value."""
    kind, sep, name = value.partition(":")
    if sep and kind.upper() == "IP":
        try:
            return x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            raise ConfigError(f"--san {value}: {name!r} is not an IP address") from None
    if sep and kind.upper() == "DNS" and name and " " not in name:
        return x509.DNSName(name)
    raise ConfigError(f"--san {value}: expected IP:<address> or DNS:<name>")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False)


def make_tls(directory: Path, fleet: str, sans: Sequence[str]) -> TlsFiles:
    """Write ca.crt, ca.key, server.crt, server.key into ``directory`` (keys 0600)."""
    names = list(dict.fromkeys([*ALWAYS, *sans]))  # keep order, drop repeats
    alt = [parse_san(v) for v in names]
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)  # a device clock a little behind still accepts
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"fedmq {fleet} gateway CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_usage(ca=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (x509.CertificateBuilder().subject_name(_name(f"fedmq {fleet} broker"))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(start)
              .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(_usage(ca=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              # Clients match the broker's address against the SANs, never the CN.
              .add_extension(x509.SubjectAlternativeName(alt), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                  ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    files = TlsFiles(directory / "ca.crt", directory / "ca.key", directory / "server.crt",
                     directory / "server.key")
    write_atomic(files.ca_key, _key_pem(ca_key), private=True)
    write_atomic(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    write_atomic(files.server_key, _key_pem(server_key), private=True)
    write_atomic(files.server_cert, server.public_bytes(serialization.Encoding.PEM))
    return files
