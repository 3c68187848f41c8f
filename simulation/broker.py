"""The simulation's broker: ``--broker embedded|mosquitto|HOST:PORT``.

embedded: fedmq's amqtt broker, on a thread of this process (``--workers 0``) or
in a process of its own (it must not share a GIL with the aggregator and a
thousand agents: late PUBACKs are what amqtt gives up on). mosquitto: Mosquitto
started on a free loopback port with the config ``fedmq broker
mosquitto-config`` would write (users, passwords, topic ACL, payload cap), each
agent logging in as itself. HOST:PORT: a broker someone else runs, anonymous.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedmq.broker.acl import FleetAcl
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port, stop_process, wait_listening
from fedmq.broker.limits import MAX_PENDING_CONNECTIONS
from fedmq.broker.mosquitto import (
    CONF_FILE,
    CREDENTIALS_FILE,
    MEMORY_LIMIT,
    MosquittoSetup,
    read_credentials,
)
from fedmq.broker.mosquitto import write_files as write_mosquitto_files
from fedmq.protocol.errors import ConfigError, FedmqError
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttSettings

log = logging.getLogger(__name__)

AGGREGATOR_USER = "aggregator"
DASHBOARD_USER = "dashboard"  # simulate --dashboard's read-only login on Mosquitto
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/bin/mosquitto")


@dataclass(frozen=True)
class BrokerChoice:
    kind: str  # "embedded", "mosquitto" or "external"
    host: str = "127.0.0.1"
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> BrokerChoice:
        if text in ("embedded", "mosquitto"):
            return cls(text)
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--broker: expected embedded, mosquitto or HOST:PORT, got {text!r}")
        return cls("external", host, int(port))


@dataclass
class BrokerEnd:
    """What the broker said about the run, once it stopped."""

    peak_rss: int = 0  # bytes; 0 when not ours to measure (a thread of main, external)
    puback_timeouts: int = 0  # deliveries amqtt gave up waiting for (embedded)
    warnings: int = 0  # other warnings or errors in its log
    log_lines: list[str] = field(default_factory=list)  # a few, for the report


@dataclass(frozen=True)
class RunEnd:
    """Peak memory of every process of a simulated run and what its broker complained of."""

    main_rss: int
    broker: BrokerEnd
    worker_rss: tuple[int, ...] = ()

    @property
    def total_rss(self) -> int:
        """Sum of the processes' peaks (an upper bound of the peak of the whole)."""
        return self.main_rss + self.broker.peak_rss + sum(self.worker_rss)

    def to_dict(self) -> dict[str, Any]:
        """resources.json of the run directory (benchmarks.scale reads it)."""
        return {"main_rss": self.main_rss, "broker_rss": self.broker.peak_rss,
                "worker_rss": list(self.worker_rss), "total_rss": self.total_rss,
                "puback_timeouts": self.broker.puback_timeouts,
                "broker_warnings": self.broker.warnings,
                "broker_log": self.broker.log_lines}

    def line(self) -> str:
        mb = 1024 * 1024
        parts = [f"main {self.main_rss / mb:.0f} MB"]
        if self.broker.peak_rss:
            parts.append(f"broker {self.broker.peak_rss / mb:.0f} MB")
        if self.worker_rss:
            parts.append(f"{len(self.worker_rss)} workers "
                         + "+".join(f"{r / mb:.0f}" for r in self.worker_rss) + " MB")
        return (f"peak RSS {self.total_rss / mb:.0f} MB ({', '.join(parts)}); broker: "
                f"{self.broker.puback_timeouts} PUBACK timeouts, {self.broker.warnings} other "
                "warnings")


def for_fleet(settings: MqttSettings, agents: int) -> MqttSettings:
    """A simulated agent's [mqtt] for a fleet of ``agents`` on one machine.

    Its CONNECT competes with the whole fleet's for the broker and for CPU: the
    10 s a device waits for one CONNACK is too short when a thousand connect
    within seconds (they gave up, backed off up to 60 s and missed the round).
    A keepalive of 2 minutes: all agents are on loopback, and a dead one is
    seen at once (its socket closes); 30 s PINGs of a thousand starved agents
    are what the broker disconnected them for.
    """
    return replace(settings, connect_timeout=max(settings.connect_timeout, agents / 25),
                   keepalive=max(settings.keepalive, 120 if agents > 100 else 0))


def memory_limit(agents: int) -> int:
    """Mosquitto's memory_limit for a simulated fleet: its 512 MB default ran out once
    at 1,000 agents (a round announcement queued for each, updates in flight)."""
    return max(MEMORY_LIMIT, agents * 1024 * 1024)


def raise_open_files(needed: int) -> None:
    """Lift this process's soft cap on open files (inherited by Mosquitto and the workers)
    towards ``needed``: the usual 1024 is below a thousand agents' sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        log.warning("open files are capped at %d (ulimit -n) for a fleet needing %d; raise it "
                    "if agents fail to connect", hard, needed)


@dataclass
class FleetBroker:
    aggregator: MqttSettings
    agent_settings: dict[str, MqttSettings]
    where: str
    end: BrokerEnd = field(default_factory=BrokerEnd)
    fleet_size: int = 0
    # Trustee logins (Mosquitto); elsewhere a trustee connects like the aggregator.
    trustee_settings: dict[str, MqttSettings] = field(default_factory=dict)
    # The dashboard's read-only login (Mosquitto); elsewhere it connects anonymously.
    dashboard_settings: MqttSettings | None = None

    def agent(self, agent_id: str) -> MqttSettings:
        return for_fleet(self.agent_settings.get(agent_id, self.aggregator), self.fleet_size)

    def trustee(self, trustee_id: str) -> MqttSettings:
        """A trustee reads every update, as the aggregator does: the same fleet timeouts."""
        return for_fleet(self.trustee_settings.get(trustee_id, self.aggregator), self.fleet_size)

    def dashboard(self) -> MqttSettings:
        return self.dashboard_settings or self.aggregator


class _Counter(logging.Handler):
    """Counts amqtt's complaints in the broker process (tracebacks included)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.puback = self.other = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        if "PUBACK" in text:
            self.puback += 1
        else:
            self.other += 1


def _broker_process(settings: BrokerSettings, conn: Any) -> None:
    counter = _Counter()
    logging.getLogger("amqtt").addHandler(counter)
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    try:
        broker = EmbeddedBroker(settings).start()
    except FedmqError as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("started",))
    conn.recv()  # stop
    broker.stop()
    from fedmq.simulation.shards import peak_rss_bytes

    conn.send(("done", peak_rss_bytes(), counter.puback, counter.other))


@contextlib.contextmanager
def _embedded_process(settings: BrokerSettings, end: BrokerEnd) -> Iterator[None]:
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_broker_process, args=(settings, theirs), name="fedmq-broker",
                       daemon=True)
    proc.start()
    if not mine.poll(60):
        proc.terminate()
        raise FedmqError("the embedded broker process did not start within 60 s")
    first = mine.recv()
    if first[0] == "error":
        raise FedmqError(first[1])
    try:
        yield
    finally:
        mine.send(("stop",))
        if mine.poll(30):
            _done, end.peak_rss, end.puback_timeouts, end.warnings = mine.recv()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if Path(p).exists()), None)
    if found is None:
        raise ConfigError("--broker mosquitto: mosquitto is not installed "
                          "(Debian: apt-get install mosquitto)")
    return found


def _vm_hwm(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextlib.contextmanager
def _mosquitto(out_dir: Path, topics: Topics, agent_ids: Sequence[str],
               end: BrokerEnd, trustee_users: Sequence[str] = ()) -> Iterator[FleetBroker]:
    binary = mosquitto_binary()
    port = free_port()
    setup = MosquittoSetup(acl=FleetAcl(topics, aggregator_users=(AGGREGATOR_USER,),
                                        agents=tuple(agent_ids),
                                        trustee_users=tuple(trustee_users),
                                        dashboard_users=(DASHBOARD_USER,)),
                           host="127.0.0.1", port=port,
                           memory_limit_bytes=memory_limit(len(agent_ids)))
    written = write_mosquitto_files(out_dir, setup)
    conf = written.conf
    if os.geteuid() == 0:  # as root it would switch to user mosquitto, which cannot read
        with conf.open("a") as fh:  # the 0600 password file we (root) just wrote
            fh.write("user root\n")
    creds = read_credentials(out_dir / CREDENTIALS_FILE)
    log_path = out_dir / "mosquitto.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        if not wait_listening(port, 15.0, lambda: proc.poll() is None):
            raise FedmqError(f"mosquitto did not start ({out_dir / CONF_FILE}): "
                             + log_path.read_text()[-500:])
        base = MqttSettings(host="127.0.0.1", port=port)
        yield FleetBroker(
            aggregator=replace(base, username=AGGREGATOR_USER, password=creds[AGGREGATOR_USER]),
            agent_settings={a: replace(base, username=a, password=creds[a]) for a in agent_ids},
            where=f"Mosquitto on 127.0.0.1:{port} (config {conf})", end=end,
            fleet_size=len(agent_ids),
            trustee_settings={t: replace(base, username=t, password=creds[t])
                              for t in trustee_users},
            dashboard_settings=replace(base, username=DASHBOARD_USER,
                                       password=creds[DASHBOARD_USER]))
    finally:
        end.peak_rss = _vm_hwm(proc.pid)
        stop_process(proc)
        lines = log_path.read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if "run as root" not in ln and any(
            w in ln.lower() for w in ("error", "warning", "out of memory", "dropped",
                                      "exceeded"))]
        end.warnings, end.log_lines = len(bad), bad[:5]


@contextlib.contextmanager
def fleet_broker(choice: BrokerChoice, *, topics: Topics, agent_ids: Sequence[str],
                 out_dir: Path, own_process: bool,
                 trustee_users: Sequence[str] = ()) -> Iterator[FleetBroker]:
    """The broker for one simulated run, started (unless external) and stopped.

    ``trustee_users`` get logins of their own on Mosquitto (the embedded and
    external brokers of a simulation take anonymous clients, trustees included).
    """
    end = BrokerEnd()
    raise_open_files(2 * len(agent_ids) + 256)  # the broker's sockets and the agents'
    if choice.kind == "mosquitto":
        with _mosquitto(out_dir / "mosquitto", topics, agent_ids, end,
                        trustee_users) as fb:
            yield fb
        return
    if choice.kind == "external":
        settings = MqttSettings(host=choice.host, port=choice.port)
        yield FleetBroker(settings, {}, f"broker {choice.host}:{choice.port}", end,
                          fleet_size=len(agent_ids))
        return
    port = free_port()
    settings = MqttSettings(host="127.0.0.1", port=port)
    # Every simulated agent connects from 127.0.0.1: the per-address cap on sockets
    # waiting for their CONNECT (64, against slowloris) closed genuine agents of a
    # 200-agent fleet mid-CONNECT. Fleet-sized, it still bounds the waiting sockets.
    pending = max(MAX_PENDING_CONNECTIONS, 2 * len(agent_ids))
    broker = BrokerSettings(port=port, max_pending_per_source=pending, max_pending=pending)
    where = f"embedded broker on 127.0.0.1:{port}"
    if own_process:
        with _embedded_process(broker, end):
            yield FleetBroker(settings, {}, where + " (own process)", end,
                              fleet_size=len(agent_ids))
    else:
        counter = _Counter()
        logging.getLogger("amqtt").addHandler(counter)
        try:
            with EmbeddedBroker(broker):
                yield FleetBroker(settings, {}, where, end, fleet_size=len(agent_ids))
        finally:
            logging.getLogger("amqtt").removeHandler(counter)
            end.puback_timeouts, end.warnings = counter.puback, counter.other


__all__ = ["BrokerChoice", "BrokerEnd", "FleetBroker", "RunEnd", "fleet_broker"]
