"""A two-node RabbitMQ cluster with its MQTT plugin, started by the test on 127.0.0.1.

Importable as ``rabbitmq_support``. Each node has its own name, ports and directories in
the test's temp dir; both share one Erlang cookie (through HOME) and the machine's epmd.
RabbitMQ keeps retained MQTT messages per node and hands them only to exact-topic
subscriptions, which is what fedmq must live with on such a cluster. Skips without
RabbitMQ, unless FEDMQ_REQUIRE_RABBITMQ=1 (set by .ci/run) turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from fedmq.broker.embedded import free_port, stop_process
from fedmq.runtime.transport import MqttSettings

# The scripts that run as the calling user (/usr/sbin's wrappers switch to 'rabbitmq').
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
_CLI_DIST_PORTS = range(35672, 35683)  # the CLI tools' own distribution ports


def rabbitmq_scripts() -> Path:
    """RabbitMQ's bin directory; skip without it, or fail if FEDMQ_REQUIRE_RABBITMQ=1."""
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        message = "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server)"
        if os.environ.get("FEDMQ_REQUIRE_RABBITMQ") == "1":
            pytest.fail(message + "; FEDMQ_REQUIRE_RABBITMQ=1 requires it")
        pytest.skip(message)
    return RABBITMQ_BIN


def _port() -> int:
    while (port := free_port()) in _CLI_DIST_PORTS:
        pass
    return port


@dataclass(frozen=True)
class RabbitNode:
    name: str  # rabbit-a-<pid>@localhost
    mqtt_port: int
    amqp_port: int
    dist_port: int
    base: Path

    def env(self, home: Path) -> dict[str, str]:
        return {**os.environ, "HOME": str(home), "RABBITMQ_NODENAME": self.name,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.base / "plugins-expand")}

    def write_config(self) -> None:
        for sub in ("mnesia", "log"):
            (self.base / sub).mkdir(parents=True)
        (self.base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.1 = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = false\n")


@dataclass(frozen=True)
class RabbitCluster:
    nodes: tuple[RabbitNode, ...]
    passwords: dict[str, str]  # MQTT user -> password (RabbitMQ users, vhost "/")

    def login(self, user: str, node: int) -> MqttSettings:
        """``user``'s MQTT settings on node ``node`` (0: A, 1: B)."""
        return MqttSettings(port=self.nodes[node].mqtt_port, username=user,
                            password=self.passwords[user], connect_timeout=5)


def _ctl(home: Path, node: RabbitNode, *args: str, timeout: float = 60) -> None:
    result = _run_ctl(home, node, *args, timeout=timeout)
    if result.returncode != 0:
        _failed(node, args, result)


def _run_ctl(home: Path, node: RabbitNode, *args: str,
             timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.name, *args],
                          env=node.env(home), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _failed(node: RabbitNode, args: tuple[str, ...],
            result: subprocess.CompletedProcess[str]) -> NoReturn:
    log = "\n".join(p.read_text()[-3000:] for p in (*(node.base / "log").glob("*.log"),
                                                      node.base / "server.out"))
    raise AssertionError(f"rabbitmqctl {' '.join(args)} on {node.name} failed:\n"
                             f"{result.stdout}{result.stderr}\n{log}")


def _await_startup(home: Path, node: RabbitNode, proc: subprocess.Popen[bytes]) -> None:
    """Until the node runs; ``await_startup`` fails at once while the node is not yet
    registered with epmd, so it is asked again."""
    end = time.monotonic() + 90
    while True:
        result = _run_ctl(home, node, "await_startup", "--timeout", "60", timeout=90)
        if result.returncode == 0:
            return
        if proc.poll() is not None or time.monotonic() > end:
            _failed(node, ("await_startup",), result)
        time.sleep(0.5)


@contextlib.contextmanager
def rabbitmq_cluster(tmp_path: Path, users: tuple[str, ...]) -> Iterator[RabbitCluster]:
    """Nodes A and B clustered (B joined A), each with the MQTT plugin; ``users`` may
    read and write everything on vhost "/" (their password is ``<user>-pw``)."""
    scripts = rabbitmq_scripts()
    home = tmp_path / "rabbit-home"
    home.mkdir()
    cookie = home / ".erlang.cookie"
    cookie.write_text(f"FEDMQTEST{os.getpid()}{time.time_ns()}")
    cookie.chmod(0o400)
    nodes = tuple(RabbitNode(f"rabbit-{n}-{os.getpid()}@localhost", _port(), _port(), _port(),
                             tmp_path / f"rabbit-{n}") for n in ("a", "b"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for node in nodes:
            node.write_config()
            with (node.base / "server.out").open("wb") as out:
                procs.append(subprocess.Popen([str(scripts / "rabbitmq-server")],
                                              env=node.env(home), stdout=out,
                                              stderr=subprocess.STDOUT))
        for node, proc in zip(nodes, procs, strict=True):
            _await_startup(home, node, proc)
        a, b = nodes
        _ctl(home, b, "stop_app")
        _ctl(home, b, "join_cluster", a.name)
        _ctl(home, b, "start_app")
        passwords = {user: f"{user}-pw" for user in users}
        for user, password in passwords.items():
            _ctl(home, a, "add_user", user, password)
            _ctl(home, a, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield RabbitCluster(nodes, passwords)
    finally:
        for node, proc in zip(nodes, procs, strict=False):
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                _ctl(home, node, "stop", timeout=30)
            stop_process(proc, grace=10)
