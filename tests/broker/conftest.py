"""Broker test helpers: raw paho clients that report SUBACKs and deliveries, TLS test certs."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode


class Probe:
    """A plain paho client for checking what a broker allows.

    ACL denials of a publish are silent in MQTT 3.1.1, so tests look at what a
    subscriber received, always after a message that must arrive.
    """

    def __init__(self, port: int, client_id: str, *, username: str | None = None,
                 password: str | None = None, tls: dict[str, Any] | None = None,
                 will: tuple[str, bytes] | None = None, clean_session: bool = True) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connack: Any = None
        self.disconnected = threading.Event()
        self._suback: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        self.port = port
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311, clean_session=clean_session)
        if username is not None:
            c.username_pw_set(username, password)
        if tls is not None:
            c.tls_set(tls_version=ssl.PROTOCOL_TLS_CLIENT, **tls)
        if will is not None:
            c.will_set(will[0], will[1], qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        self.client = c

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            self.connack = reason
            self._cond.notify_all()

    def _on_disconnect(self, *_args: Any) -> None:
        with self._cond:
            self.disconnected.set()
            self._cond.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[Any], _p: Any) -> None:
        with self._cond:
            self._suback[mid] = codes
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(ready, timeout)

    def connect(self, timeout: float = 5.0) -> bool:
        """True if the broker accepted the connection, False if it refused or went silent."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        # Drive the network loop by hand until the CONNACK: a refused client then has
        # no background thread retrying (and slowing teardown). A TLS handshake the
        # broker rejects shows up as a disconnect, not a CONNACK.
        end = time.monotonic() + timeout
        while self.connack is None and not self.disconnected.is_set():
            rc = self.client.loop(timeout=0.05)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or time.monotonic() > end:
                return False
        if self.connack is None or self.connack.is_failure:
            return False
        self.client.loop_start()
        return True

    def subscribe(self, topic: str, timeout: float = 5.0) -> bool:
        """True if the SUBACK grants the subscription."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        assert self._wait(lambda: mid in self._suback, timeout), f"no SUBACK for {topic}"
        return not self._suback[mid][0].is_failure

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(5)

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> bool:
        return self._wait(lambda: (topic, payload) in self.received, timeout)

    def got(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.received if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()  # returns at once if the loop never started


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

