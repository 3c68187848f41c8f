"""Connection-storm benchmark: a broker's memory before, during and after a storm.

``fedmq bench-storm [--idle 500] [--half-open 100] [--rounds 3] [--broker mosquitto]``.
A real ``fedmq broker`` process with TLS on 127.0.0.1 and a short
``connect_timeout`` (or Mosquitto with the generated configuration and TLS) takes,
each round, ``--idle`` sockets that finish the TLS handshake and never send
CONNECT plus ``--half-open`` sockets that send a TLS ClientHello and nothing
more. The broker closes them all (the embedded one after its CONNECT and TLS
handshake timeouts, Mosquitto 2.0 after 90-95 s); the benchmark then waits
``--settle`` seconds and reads the broker's RSS from /proc. Prints idle, peak and
after-storm RSS, and the after/idle ratio; the target is after-storm RSS within
20 MB of idle.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.broker.acl import FleetAcl
from fedmq.broker.certs import make_tls
from fedmq.broker.embedded import free_port, stop_process, wait_listening
from fedmq.broker.memory import CHECK_INTERVAL
from fedmq.broker.mosquitto import MosquittoSetup, write_files
from fedmq.protocol.topics import Topics

TARGET_MB = 20.0


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
    port: int = 0
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
        conf.write_text(
            f"[broker]\nport = {self.port}\nconnect_timeout = {self.connect_timeout}\n"
            f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
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


@dataclass(frozen=True)
class StormResult:
    idle_mb: float
    peak_mb: float
    after_mb: list[float]  # after each round

    @property
    def growth_mb(self) -> float:
        return self.after_mb[-1] - self.idle_mb


def run(*, idle: int = 500, half_open: int = 100, rounds: int = 3,
        settle: float = CHECK_INTERVAL + 2,
        connect_timeout: float = 2.0, env: dict[str, str] | None = None,
        mosquitto: bool = False) -> StormResult:
    """``env``: extra environment of the broker (``MALLOC_ARENA_MAX`` ...)."""
    with tempfile.TemporaryDirectory(prefix="fedmq-storm-") as tmp, StormBroker(
            Path(tmp), connect_timeout=connect_timeout, env=env or {},
            mosquitto=mosquitto) as broker:
        time.sleep(settle)
        before = rss_mb(broker.pid)
        after = []
        for _ in range(rounds):
            storm(broker.port, broker.ca_file, idle=idle, half_open=half_open,
                  timeout=150 if mosquitto else connect_timeout * 4 + 30)
            time.sleep(settle)
            after.append(rss_mb(broker.pid))
        return StormResult(before, rss_mb(broker.pid, "VmHWM"), after)


def report(result: StormResult, *, idle: int, half_open: int,
           broker: str = "embedded broker") -> str:
    verdict = "within" if result.growth_mb <= TARGET_MB else "OVER"
    rounds = ", ".join(f"{mb:.1f}" for mb in result.after_mb)
    return "\n".join([
        f"{broker}, {idle} idle TLS sockets + {half_open} half-open TLS handshakes "
        f"per round, {len(result.after_mb)} rounds",
        f"RSS idle {result.idle_mb:.1f} MB, peak {result.peak_mb:.1f} MB, after each round "
        f"{rounds} MB",
        f"after / idle x{result.after_mb[-1] / result.idle_mb:.2f}, +{result.growth_mb:.1f} MB "
        f"({verdict} the {TARGET_MB:g} MB target)",
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idle", type=int, default=500, help="TLS sockets without CONNECT")
    parser.add_argument("--half-open", type=int, default=100, help="TLS handshakes left open")
    parser.add_argument("--rounds", type=int, default=3, help="storms, one after another")
    parser.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded",
                        help="mosquitto: the generated configuration (sockets last 90-95 s)")
    parser.add_argument("--settle", type=float, default=CHECK_INTERVAL + 2,
                        help="seconds between the last close and the RSS reading (longer "
                             "than the broker's memory check interval)")


def run_from_args(args: argparse.Namespace) -> int:
    mosquitto = args.broker == "mosquitto"
    result = run(idle=args.idle, half_open=args.half_open, rounds=args.rounds,
                 settle=args.settle, mosquitto=mosquitto)
    print(report(result, idle=args.idle, half_open=args.half_open,
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
