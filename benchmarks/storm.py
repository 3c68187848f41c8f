"""Connection-storm benchmark: a broker's memory before, during and after a storm.

``fedmq bench-storm [--idle 500] [--half-open 100] [--churn 0] [--rounds 3] [--broker mosquitto]``.
A real ``fedmq broker`` process with TLS on 127.0.0.1 and a short
``connect_timeout`` (or Mosquitto with the generated configuration and TLS) takes,
each round, ``--idle`` sockets that finish the TLS handshake and never send
CONNECT plus ``--half-open`` sockets that send a TLS ClientHello and nothing
more, then ``--churn`` clients that log in with a password, subscribe to and
unsubscribe from 10 filters and disconnect. The broker closes the storm's
sockets (the embedded one after its CONNECT and TLS handshake timeouts,
Mosquitto 2.0 after 90-95 s); the benchmark then waits
``--settle`` seconds and reads the broker's RSS from /proc. Prints idle, peak and
after-storm RSS, and the after/idle ratio; the target is RSS within 20 MB of
idle after each round.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.broker.acl import FleetAcl
from fedmq.broker.certs import make_tls
from fedmq.broker.embedded import free_port, stop_process, wait_listening
from fedmq.broker.memory import CHECK_INTERVAL
from fedmq.broker.mosquitto import MosquittoSetup, write_files
from fedmq.broker.passwords import add_user, new_password
from fedmq.protocol.topics import Topics

TARGET_MB = 20.0
CHURN_USER = "storm"


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A /proc/<pid>/status memory field in MB (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field_name} in /proc/{pid}/status")


@dataclass
class StormBroker:
    """``fedmq broker`` with TLS in a child process; ``with`` starts and stops it."""

    root: Path
    connect_timeout: float = 2.0
    max_pending: int = 1024  # every storm socket waits at once, as behind a NAT
    env: dict[str, str] = field(default_factory=dict)
    mosquitto: bool = False  # Mosquitto with the generated configuration instead
    logins: bool = False  # a password file with CHURN_USER (``password``); no anonymous
    port: int = 0
    password: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StormBroker:
        tls = make_tls(self.root, "storm", [])
        self.ca_file = tls.ca_cert
        self.port = free_port()
        self.log = self.root / "broker.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self._command(tls.server_cert, tls.server_key),
                                         stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, **self.env})
        proc = self.proc
        if not wait_listening(self.port, 30, lambda: proc.poll() is None):
            stop_process(proc)
            raise RuntimeError(f"broker did not start: {self.log.read_text()[-2000:]}")
        return self

    def _command(self, cert: Path, key: Path) -> list[str]:
        if self.mosquitto:
            written = write_files(self.root / "mosquitto", MosquittoSetup(
                FleetAcl(Topics("storm"), ("aggregator",), ("dev-a",)), host="127.0.0.1",
                port=self.port, tls_cert_file=str(cert), tls_key_file=str(key)))
            if os.geteuid() == 0:  # as root it would switch to a user that cannot read
                with written.conf.open("a") as fh:  # the 0600 files we (root) wrote
                    fh.write("user root\n")
            binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            return [binary, "-c", str(written.conf)]
        conf = self.root / "broker.toml"
        logins = ""
        if self.logins:
            self.password = new_password()
            add_user(self.root / "passwords.txt", CHURN_USER, self.password)
            logins = 'password_file = "passwords.txt"\nallow_anonymous = false\n'
        conf.write_text(
            f"[broker]\nport = {self.port}\nconnect_timeout = {self.connect_timeout}\n"
            f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n{logins}'
            f"max_pending = {self.max_pending}\nmax_pending_per_source = {self.max_pending}\n")
        return [sys.executable, "-m", "fedmq", "broker", "--config", str(conf)]

    def __exit__(self, *_exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def _half_open(port: int) -> socket.socket:
    """A TCP connection that sent a TLS ClientHello and will send nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the ServerHello
        tls.do_handshake()
    sock.sendall(outgoing.read())
    return sock


def _idle(port: int, ca_file: Path) -> ssl.SSLSocket:
    """A TLS connection that completed its handshake and will never send CONNECT."""
    context = ssl.create_default_context(cafile=str(ca_file))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                               server_hostname="localhost")


def storm(port: int, ca_file: Path, *, idle: int, half_open: int,
          timeout: float) -> list[float]:
    """Open the storm's sockets, wait until the broker has closed every one (or
    ``timeout`` s); return the broker-side lifetimes seen, one per closed socket."""
    socks: list[socket.socket] = [_idle(port, ca_file) for _ in range(idle)]
    socks += [_half_open(port) for _ in range(half_open)]
    opened, lifetimes = time.monotonic(), []
    waiting: set[socket.socket] = set(socks)
    with selectors.DefaultSelector() as selector:  # epoll: select() stops at fd 1024
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, sock)
        end = opened + timeout
        while waiting and time.monotonic() < end:
            for key, _ in selector.select(0.5):
                sock = key.data
                try:
                    data = sock.recv(4096)
                except (ssl.SSLWantReadError, BlockingIOError):
                    continue  # a TLS record that was not application data
                except OSError:
                    data = b""
                if not data:
                    lifetimes.append(time.monotonic() - opened)
                    waiting.discard(sock)
                    selector.unregister(sock)
                    sock.close()
    for sock in waiting:
        sock.close()
    if waiting:
        raise RuntimeError(f"the broker left {len(waiting)} of {len(socks)} storm sockets "
                           f"open for {timeout:g} s")
    return lifetimes


def _mqtt_string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(kind: int, body: bytes) -> bytes:
    """An MQTT 3.1.1 packet: fixed header (remaining length as a varint) and body."""
    length, size = b"", len(body)
    while True:
        size, digit = divmod(size, 128)
        length += bytes([digit | (128 if size else 0)])
        if not size:
            return bytes([kind]) + length + body


def _expect(sock: ssl.SSLSocket, size: int, what: str) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise RuntimeError(f"the broker closed a churn connection before its {what}")
        data += chunk
    return data


def _churn_client(port: int, context: ssl.SSLContext, password: str, name: str,
                  filters: int) -> None:
    """One logged-in client: CONNECT (clean session), SUBSCRIBE and UNSUBSCRIBE
    ``filters`` filters one by one, DISCONNECT."""
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30),
                             server_hostname="localhost") as sock:
        sock.sendall(_packet(0x10, _mqtt_string("MQTT") + bytes([4, 0xC2, 0, 60])
                             + _mqtt_string(name) + _mqtt_string(CHURN_USER)
                             + _mqtt_string(password)))
        if _expect(sock, 4, "CONNACK")[3] != 0:
            raise RuntimeError("the broker refused a churn login")
        for packet_id in range(1, filters + 1):
            topic = _mqtt_string(f"fedmq/storm/status/{name}-{packet_id}")
            sock.sendall(_packet(0x82, packet_id.to_bytes(2, "big") + topic + b"\x01"))
            _expect(sock, 5, "SUBACK")
            sock.sendall(_packet(0xA2, packet_id.to_bytes(2, "big") + topic))
            _expect(sock, 4, "UNSUBACK")
        sock.sendall(_packet(0xE0, b""))


_client_ids = itertools.count()


def churn(port: int, ca_file: Path, password: str, *, connections: int,
          filters: int = 10, workers: int = 20) -> None:
    """``connections`` logged-in clients, ``workers`` at a time, each subscribing and
    unsubscribing ``filters`` filters before it disconnects."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with ThreadPoolExecutor(workers) as pool:
        for done in [pool.submit(_churn_client, port, context, password,
                                 f"churn-{next(_client_ids)}", filters)
                     for _ in range(connections)]:
            done.result()


@dataclass(frozen=True)
class StormResult:
    idle_mb: float
    peak_mb: float
    after_mb: list[float]  # after each round

    @property
    def growth_mb(self) -> float:
        return max(self.after_mb) - self.idle_mb  # the target holds after every round


def run(*, idle: int = 500, half_open: int = 100, churn_clients: int = 0, rounds: int = 3,
        settle: float = CHECK_INTERVAL + 2,
        connect_timeout: float = 2.0, env: dict[str, str] | None = None,
        mosquitto: bool = False) -> StormResult:
    """``env``: extra environment of the broker (``MALLOC_ARENA_MAX`` ...)."""
    with tempfile.TemporaryDirectory(prefix="fedmq-storm-") as tmp, StormBroker(
            Path(tmp), connect_timeout=connect_timeout, env=env or {},
            mosquitto=mosquitto, logins=churn_clients > 0) as broker:
        time.sleep(settle)
        before = rss_mb(broker.pid)
        after = []
        for _ in range(rounds):
            if idle or half_open:
                storm(broker.port, broker.ca_file, idle=idle, half_open=half_open,
                      timeout=150 if mosquitto else connect_timeout * 4 + 30)
            if churn_clients:
                churn(broker.port, broker.ca_file, broker.password, connections=churn_clients)
            time.sleep(settle)
            after.append(rss_mb(broker.pid))
        return StormResult(before, rss_mb(broker.pid, "VmHWM"), after)


def report(result: StormResult, *, idle: int, half_open: int, churn_clients: int = 0,
           broker: str = "embedded broker") -> str:
    verdict = "within" if result.growth_mb <= TARGET_MB else "OVER"
    rounds = ", ".join(f"{mb:.1f}" for mb in result.after_mb)
    logged_in = (f" + {churn_clients} logged-in clients (10 filters subscribed and "
                 "unsubscribed each)" if churn_clients else "")
    return "\n".join([
        f"{broker}, {idle} idle TLS sockets + {half_open} half-open TLS handshakes"
        f"{logged_in} per round, {len(result.after_mb)} rounds",
        f"RSS idle {result.idle_mb:.1f} MB, peak {result.peak_mb:.1f} MB, after each round "
        f"{rounds} MB",
        f"after / idle x{result.after_mb[-1] / result.idle_mb:.2f}, +{result.growth_mb:.1f} MB "
        f"({verdict} the {TARGET_MB:g} MB target)",
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle", type=int, default=500, help="TLS sockets without CONNECT")
    parser.add_argument("--half-open", type=int, default=100, help="TLS handshakes left open")
    parser.add_argument("--churn", type=int, default=0,
                        help="TLS clients per round that log in, subscribe, unsubscribe and "
                             "disconnect (embedded broker only)")
    parser.add_argument("--rounds", type=int, default=3, help="storms, one after another")
    parser.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded",
                        help="mosquitto: the generated configuration (sockets last 90-95 s)")
    parser.add_argument("--settle", type=float, default=CHECK_INTERVAL + 2,
                        help="seconds between the last close and the RSS reading (longer "
                             "than the broker's memory check interval)")


def run_from_args(args: argparse.Namespace) -> int:
    mosquitto = args.broker == "mosquitto"
    if mosquitto and args.churn:
        raise SystemExit("--churn: the generated Mosquitto configuration has no password file")
    result = run(idle=args.idle, half_open=args.half_open, churn_clients=args.churn,
                 rounds=args.rounds, settle=args.settle, mosquitto=mosquitto)
    print(report(result, idle=args.idle, half_open=args.half_open, churn_clients=args.churn,
                 broker="Mosquitto (generated config)" if mosquitto else "embedded broker"))
    return 0 if result.growth_mb <= TARGET_MB else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedmq.benchmarks.storm", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-storm", help=help_text, description=__doc__)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
