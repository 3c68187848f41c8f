"""The fedmq half of ``fedmq bench-flower``: fedmq.simulation.run on the Task's fleet, timed.

With ``workers=0`` the simulation runs broker, aggregator and agents as threads of
this process; CPU is read per thread from /proc at each round's close and summed by
role, and the agents' own log lines give their compute and encryption times. With
``workers=N`` the agents run in N worker processes and the broker in one of its own
(Flower's side is a clients process and a server process): CPU is read per process,
and the agents' timing lines stay in their processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fedmq.aggregator.culprits as culprits
from fedmq.aggregator.outcome import RoundResult
from fedmq.benchmarks.flower_task import SCALING, TASK, Task
from fedmq.benchmarks.wire import mqtt_publish_bytes, process_cpu, threads_cpu
from fedmq.protocol.topics import Topics
from fedmq.simulation.run import Simulation, SimulationOptions

ROLES = ("agents", "obfuscators", "agents-mqtt", "broker", "aggregator")
_SERVED = re.compile(r"compute (\d+) ms, encrypt ([\d.]+) ms")


def role(name: str, agent_ids: frozenset[str]) -> str:
    if name in agent_ids:
        return "agents"
    if name == "fedmq-obfuscators":
        return "obfuscators"
    if name.startswith("paho-mqtt-client-fedmq-agent-"):
        return "agents-mqtt"
    if name == "fedmq-broker":
        return "broker"
    return "aggregator"  # the main thread runs aggregator.run(); its paho thread


def processes_cpu() -> dict[str, float]:
    """CPU seconds by role when agents and broker run in processes of their own (/proc
    stat: 10 ms ticks). This process is the aggregator (and the simulation's table)."""
    out = {"agents": 0.0, "broker": 0.0, "aggregator": process_cpu(os.getpid())}
    for child in multiprocessing.active_children():
        if child.pid is None:
            continue
        if child.name == "fedmq-broker":
            out["broker"] += process_cpu(child.pid)
        elif child.name.startswith("fedmq-shard-"):
            out["agents"] += process_cpu(child.pid)
    return out


@dataclass
class FedmqRound:
    round_id: int
    seconds: float
    clients: int
    wire_bytes: int  # MQTT PUBLISH + PUBACK bytes into and out of the broker
    payload_bytes: int
    cpu: dict[str, float]  # role -> CPU seconds since the previous round closed
    decrypt_seconds: float
    compute_ms: list[float] = field(default_factory=list)  # per agent: train + eval sums
    encrypt_ms: list[float] = field(default_factory=list)  # per agent: encode, encrypt, sign


@dataclass
class FedmqResult:
    rounds: list[FedmqRound]
    final_params: np.ndarray
    accuracy: float
    total_seconds: float
    workers: int = 0  # fedmq.simulation.run's: 0, every role a thread of one process


class _Timed(Simulation):
    def __init__(self, options: SimulationOptions) -> None:
        super().__init__(options, progress=lambda _line: None)
        self.timed: list[FedmqRound] = []
        self.decrypt_seconds = 0.0
        self.served: list[tuple[float, float]] = []
        self._cpu = self._snapshot()

    def _snapshot(self) -> dict[str, float]:
        if self.options.workers:
            return processes_cpu()
        ids = frozenset(d.device_id for d in self.devices)
        return threads_cpu(lambda name: role(name, ids))

    def _on_round(self, result: RoundResult) -> None:
        now = self._snapshot()
        cpu = {r: now.get(r, 0.0) - self._cpu.get(r, 0.0) for r in ROLES}
        self._cpu = now
        super()._on_round(result)
        if result.phase != "training":
            return
        n = len(result.reported)
        per_update = result.update_bytes // max(n, 1)
        fleet = self.options.agents
        topics = Topics(fleet="sim")  # as fedmq.simulation.run names its fleet
        wire = (2 * mqtt_publish_bytes([per_update] * n, topics.update(self.devices[0].device_id))
                + (1 + fleet) * mqtt_publish_bytes([result.model_bytes], topics.round))
        served, self.served = self.served, []
        self.timed.append(FedmqRound(
            result.round_id, result.seconds, n, wire,
            result.update_bytes + result.model_bytes * (1 + fleet), cpu,
            self.decrypt_seconds, [c for c, _ in served], [e for _, e in served]))
        self.decrypt_seconds = 0.0


class _Served(logging.Handler):
    """Collects each agent's "compute N ms, encrypt M ms" line of a round."""

    def __init__(self, sink: Callable[[float, float], None]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        if (m := _SERVED.search(record.getMessage())) is not None:
            self.sink(float(m.group(1)), float(m.group(2)))


@contextmanager
def _timed_decrypt(sim: _Timed) -> Iterator[None]:
    """Times the aggregator's decryptions (the real function still does the work)."""
    real = culprits.decrypt_ints

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            sim.decrypt_seconds += time.perf_counter() - t0

    culprits.decrypt_ints = timed
    try:
        yield
    finally:
        culprits.decrypt_ints = real


def run_fedmq(task: Task, *, key_bits: int, out_dir: str | None = None,
              workers: int = 0) -> FedmqResult:
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-flower-") as tmp:
        options = SimulationOptions(
            agents=task.clients, rounds=task.rounds, iid=task.iid, task=TASK,
            samples_per_device=task.samples_per_device, key_bits=key_bits,
            epochs=task.epochs, batch_size=task.batch_size, learning_rate=task.learning_rate,
            l2=task.l2, seed=task.seed, out_dir=out_dir or tmp, plot=False,
            scaling=SCALING, quorum_fraction=1.0, round_timeout=120.0, workers=workers)
        sim = _Timed(options)
        agent_log = logging.getLogger("fedmq.edge_agent.agent")
        handler = _Served(lambda c, e: sim.served.append((c, e)))
        old_level = agent_log.level
        agent_log.addHandler(handler)
        agent_log.setLevel(logging.INFO)
        agent_log.propagate = False  # their lines are summarised, not printed
        t0 = time.perf_counter()
        try:
            with _timed_decrypt(sim):
                report = sim.run()
        finally:
            agent_log.removeHandler(handler)
            agent_log.setLevel(old_level)
            agent_log.propagate = True
        return FedmqResult(sim.timed, report.final_params, report.federated_score,
                           time.perf_counter() - t0, workers)
