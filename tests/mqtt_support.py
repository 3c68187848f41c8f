"""MQTT test tools shared by broker and integration tests: a raw paho client and Mosquitto.

Importable as ``mqtt_support`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from support import AGGREGATOR_SIGNER, wait_until

from fedmq.broker.embedded import free_port, stop_process
from fedmq.broker.mosquitto import CONF_FILE, CREDENTIALS_FILE, read_credentials
from fedmq.cli import main
from fedmq.protocol.messages import RoundMessage
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings

# Logins of the broker tests' password file (tests/broker/conftest.py ``password_file``).
USERS = {"aggregator": "aggregator-pw", "dev-a": "dev-a-password", "dev-b": "dev-b-password"}


class Probe:
    """A plain paho client for checking what a broker allows.

    ACL denials of a publish are silent in MQTT 3.1.1, so tests look at what a
    subscriber received, always after a message that must arrive.
    """

    def __init__(self, port: int, client_id: str, *, username: str | None = None,
                 password: str | None = None, tls: dict[str, Any] | None = None,
                 will: tuple[str, bytes] | None = None, clean_session: bool = True,
                 reconnect: bool = True, bind_address: str = "") -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connack: Any = None
        self.disconnected = threading.Event()
        self._suback: dict[int, list[Any]] = {}
        self._cond = threading.Condition()
        self.port = port
        self.bind_address = bind_address  # another 127.x.y.z: another source address
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311, clean_session=clean_session,
                        reconnect_on_failure=reconnect)
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

    def wait(self, ready: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(ready, timeout)

    def connect(self, timeout: float = 5.0) -> bool:
        """True if the broker accepted the connection, False if it refused or went silent."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30,
                                bind_address=self.bind_address)
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
        assert mid is not None, f"cannot subscribe to {topic}: not connected"
        assert self.wait(lambda: mid in self._suback, timeout), f"no SUBACK for {topic}"
        return not self._suback[mid][0].is_failure

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(5)

    def wait_for(self, topic: str, payload: bytes, timeout: float = 5.0) -> bool:
        return self.wait(lambda: (topic, payload) in self.received, timeout)

    def got(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.received if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()  # returns at once if the loop never started



class FleetClient(Probe):
    """A Probe logged in as one user, without automatic reconnects: a client the
    broker threw out stays out."""

    def __init__(self, port: int, *, username: str, password: str, client_id: str,
                 will: tuple[str, bytes] | None = None) -> None:
        super().__init__(port, client_id, username=username, password=password, will=will,
                         reconnect=False)
        self.username = username

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> None:
        """Publish; with QoS 1, return once the broker acknowledged it.

        A PUBACK says the broker took the message, not that anyone may read it:
        a publish outside the ACL is acknowledged and silently dropped.
        """
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos:
            info.wait_for_publish(5)
            assert info.is_published(), f"no PUBACK for {topic}"

def signed_round(client: Probe, topics: Topics, round_id: int,
                 timeout: float = 15.0, *, state: str | None = None) -> RoundMessage:
    """Round ``round_id`` as ``client`` saw it announced (and signed by the aggregator);
    with ``state``, the announcement in that state (the final evaluation and the
    "finished" announcement share the id after the last round)."""
    def find() -> RoundMessage | None:
        for payload in client.got(topics.round):
            msg = RoundMessage.from_bytes(payload, verify_with=AGGREGATOR_SIGNER.public_key)
            if msg.round_id == round_id and state in (None, msg.state):
                return msg
        return None
    found: RoundMessage = wait_until(find, f"round {round_id}", timeout)
    return found


class TcpProxy:
    """A loopback TCP relay to ``target_port`` that a test can cut like a network link.

    ``cut()`` closes every relayed connection and refuses new ones (the client
    sees a dropped link, the broker a vanished peer); ``restore()`` lets
    connections through again. ``connections`` counts the ones relayed.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            if not self._open.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self._open.set()

    def close(self) -> None:
        self.cut()
        self._server.close()


def mosquitto_binary(name: str = "mosquitto") -> str:
    """A Mosquitto executable; skip without it, or fail if FEDMQ_REQUIRE_MOSQUITTO=1."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None)
    if found is None:
        message = f"{name} is not installed (Debian: apt-get install mosquitto)"
        if os.environ.get("FEDMQ_REQUIRE_MOSQUITTO") == "1":
            pytest.fail(message + "; FEDMQ_REQUIRE_MOSQUITTO=1 requires it")
        pytest.skip(message)
    return found


def _allow_root(conf: Path) -> None:
    """As root Mosquitto switches to user 'mosquitto', which cannot read a root-owned
    0600 password file; on a gateway the operator chowns it, a test runs as root."""
    if os.geteuid() == 0 and "user root\n" not in conf.read_text():
        with conf.open("a") as fh:
            fh.write("user root\n")


@contextlib.contextmanager
def running_mosquitto(conf: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``mosquitto -c conf`` until the block ends; fails with its log if it does not listen."""
    _allow_root(conf)
    with log.open("wb") as out:
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    raise AssertionError(f"mosquitto did not start:\n{log.read_text()}") from None
                time.sleep(0.05)
        yield proc
    finally:
        stop_process(proc, grace=5)


@dataclass(frozen=True)
class Mosquitto:
    port: int
    credentials: dict[str, str]  # user -> password, as credentials.txt hands them out
    conf: Path | None = None  # to start it again after a test stopped ``process``
    process: subprocess.Popen[bytes] | None = None

    def login(self, user: str, *, port: int | None = None) -> MqttSettings:
        """``user``'s MQTT settings; ``port`` to go through e.g. a TcpProxy."""
        return MqttSettings(port=port or self.port, username=user,
                            password=self.credentials[user], connect_timeout=5)


@contextlib.contextmanager
def generated_mosquitto(tmp_path: Path, fleet: str, agents: tuple[str, ...],
                        aggregator_users: tuple[str, ...]) -> Iterator[Mosquitto]:
    """``fedmq broker mosquitto-config`` for the fleet, then ``mosquitto -c`` on a free port."""
    mosquitto_binary()  # skip (or fail in CI) before writing anything
    port, out = free_port(), tmp_path / "mosquitto"
    argv = ["broker", "mosquitto-config", "--out", str(out), "--fleet", fleet,
            "--host", "127.0.0.1", "--port", str(port)]
    for user in aggregator_users:
        argv += ["--aggregator-user", user]
    for agent in agents:
        argv += ["--agent", agent]
    assert main(argv) == 0
    with running_mosquitto(out / CONF_FILE, port, tmp_path / "mosquitto.log") as proc:
        yield Mosquitto(port, read_credentials(out / CREDENTIALS_FILE), out / CONF_FILE, proc)
