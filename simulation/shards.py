"""A simulated fleet on threads of this process or sharded over worker processes.

Each agent stays what it is on a device: its own MQTT connection, signing key,
data file and obfuscator pool. A worker process runs one shard of agents on
threads; the agents of a shard connect over ``spread`` seconds (jitter), so a
thousand clients do not hit the broker within one millisecond. What agents of
one process may share is the DJN table of the aggregator's PUBLIC key
(protocol.crypto.obfuscation.DjnTable): never an obfuscator, never a signing key.
They also share threads (``SharedThreads``): ONE network thread drives all their
MQTT sockets and ONE thread fills all their obfuscator pools, so an agent costs
one thread (its own round loop), not three: 1,500 threads in a worker of 500
agents starved keep-alives on 2 cores and the broker dropped the agents.

Workers are started with "spawn" (no forked locks or threads of the parent).
Between main and worker travel only small tuples over a pipe: the main process
asks to kill agents or to stop; a worker reports each agent's clip count once
a round's update is out, and its peak memory when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import random
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Protocol

from fedmq.edge_agent.agent import EdgeAgent
from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.obfuscator_pool import SharedFiller
from fedmq.protocol.crypto.obfuscation import (
    DjnObfuscators,
    DjnTable,
    ObfuscatorSource,
    make_obfuscators,
)
from fedmq.protocol.crypto.paillier import PaillierPublicKey
from fedmq.runtime.transport import NetworkLoop

log = logging.getLogger(__name__)


def split(items: Sequence[Any], shards: int) -> list[list[Any]]:
    """``items`` in ``shards`` contiguous parts whose sizes differ by at most one."""
    shards = max(1, min(shards, len(items)))
    size, extra = divmod(len(items), shards)
    parts, start = [], 0
    for i in range(shards):
        end = start + size + (1 if i < extra else 0)
        parts.append(list(items[start:end]))
        start = end
    return parts


def connect_delays(n: int, spread: float, rng: random.Random) -> list[float]:
    """When each of ``n`` agents first connects: one per slot of spread / n, at a random
    point of its slot, so arrivals are even on average and never all at once. All in
    [0, spread)."""
    if n <= 0 or spread <= 0:
        return [0.0] * max(n, 0)
    slot = spread / n
    return [(i + rng.random()) * slot * (1 - 1e-9) for i in range(n)]


def peak_rss_bytes() -> int:
    """This process's peak resident set.

    VmHWM where Linux has it: ru_maxrss survives fork and exec, so a spawned worker
    reported the main process's peak at spawn time as its own (all three equal to
    the byte at 1,000 agents). ru_maxrss (KiB on Linux) elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SharedThreads:
    """The network loop and the obfuscator filler of one process's agents."""

    def __init__(self) -> None:
        self.network = NetworkLoop()
        self.filler = SharedFiller()

    def close(self) -> None:
        self.filler.close()
        self.network.stop()


class SharedDjn:
    """One DJN table per public key for all agents of this process (see the module doc),
    and one obfuscator computed at a time.

    Why one at a time: a round starts the computation of all agents of a worker at
    once (18 obfuscators each for the statistics round at d = 100, computed on demand
    as the pools are still empty). 500 threads running Python loops of big-integer
    products hand the GIL to each other every 5 ms, and the worker's one network
    thread waited seconds for its turn: its PUBACKs came late, amqtt gave up on 2,853
    deliveries in a 1,000-agent run. Behind a lock the waiting agents sleep, and the
    network thread shares the GIL with one computing thread. The total work is the
    same; a device computes its own anyway.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[int, DjnTable] = {}
        self._compute = threading.Lock()

    def table(self, key: PaillierPublicKey) -> DjnTable:
        with self._lock:  # agents receive the key at once: build it once
            if key.n not in self._tables:
                self._tables[key.n] = DjnTable(key)
            return self._tables[key.n]

    def source(self, kind: str) -> Callable[[PaillierPublicKey], ObfuscatorSource]:
        def make(key: PaillierPublicKey) -> ObfuscatorSource:
            if kind == "djn":
                inner: ObfuscatorSource = DjnObfuscators(key, table=self.table(key))
            else:
                inner = make_obfuscators(kind, key)
            return OneAtATime(inner, self._compute)
        return make


class OneAtATime:
    """An obfuscator source whose ``next`` holds ``lock`` (shared by a worker's agents)."""

    def __init__(self, inner: ObfuscatorSource, lock: threading.Lock) -> None:
        self.inner, self._lock = inner, lock

    def next(self) -> Any:
        with self._lock:
            return self.inner.next()


@dataclass(frozen=True)
class Clips:
    """A round's clipping over the agents that reported: values clipped, by how many
    agents, of how many values."""

    clipped: int = 0
    agents: int = 0
    values: int = 0


def _clips(counts: Sequence[tuple[int, int]]) -> Clips:
    return Clips(sum(c for c, _ in counts), sum(1 for c, _ in counts if c),
                 sum(v for _, v in counts))


class Fleet(Protocol):
    """What the simulation asks of its agents, wherever they run."""

    def start(self) -> None: ...
    def clipped(self, round_id: int, agents: Sequence[str], timeout: float = 2.0) -> Clips: ...
    def kill(self, agent_ids: Sequence[str]) -> None: ...
    def stop(self) -> FleetEnd: ...


@dataclass(frozen=True)
class FleetEnd:
    worker_rss: tuple[int, ...] = ()  # peak RSS of each worker process, bytes


def _start_staggered(agents: Sequence[EdgeAgent], spread: float, seed: int,
                     stop: threading.Event) -> list[threading.Thread]:
    delays = connect_delays(len(agents), spread, random.Random(seed))

    def serve(agent: EdgeAgent, delay: float) -> None:
        if not stop.wait(delay):
            agent.run()

    threads = [threading.Thread(target=serve, args=(a, d), name=a.config.agent_id, daemon=True)
               for a, d in zip(agents, delays, strict=True)]
    for t in threads:
        t.start()
    return threads


class ThreadFleet:
    """All agents on threads of this process (``--workers 0``; the agents stay inspectable)."""

    def __init__(self, agents: Sequence[EdgeAgent], *, spread: float = 0.0, seed: int = 0
                 ) -> None:
        self.agents = list(agents)
        self._spread, self._seed = spread, seed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = _start_staggered(self.agents, self._spread, self._seed, self._stop)

    def clipped(self, round_id: int, agents: Sequence[str], timeout: float = 2.0) -> Clips:
        return _clips([(u.clipped, u.delta.size) for a in self.agents
                       if (u := a.history.get(round_id)) is not None])

    def kill(self, agent_ids: Sequence[str]) -> None:
        for agent in self.agents:
            if agent.config.agent_id in agent_ids:
                agent.kill()

    def stop(self) -> FleetEnd:
        self._stop.set()
        for a in self.agents:
            a.stop()
        for t in self._threads:
            t.join(10)
        return FleetEnd()


@dataclass(frozen=True)
class ShardSpec:
    """What one worker runs (travels to the spawned process as its argument)."""

    index: int
    configs: tuple[AgentConfig, ...]
    spread: float
    seed: int
    log_level: int = logging.WARNING
    muted: tuple[str, ...] = field(default=("fedmq.edge_agent.agent.clipping",))


def run_shard(spec: ShardSpec, conn: Connection) -> None:
    """Worker process: serve a shard's agents until the main process says stop."""
    logging.basicConfig(level=spec.log_level,
                        format=f"%(levelname)s shard {spec.index} %(name)s: %(message)s")
    for name in spec.muted:  # the main process prints the fleet's sums instead
        logging.getLogger(name).setLevel(logging.ERROR)
    djn, shared = SharedDjn(), SharedThreads()
    agents = [EdgeAgent(cfg, obfuscators=djn.source(cfg.obfuscators), network=shared.network,
                        filler=shared.filler) for cfg in spec.configs]
    stop = threading.Event()
    threads = _start_staggered(agents, spread=spec.spread, seed=spec.seed, stop=stop)
    conn.send(("started", spec.index))
    sent: set[tuple[str, int]] = set()
    while True:
        if conn.poll(0.2):
            cmd = conn.recv()
            if cmd[0] == "stop":
                break
            if cmd[0] == "kill":
                for agent in agents:
                    if agent.config.agent_id in cmd[1]:
                        agent.kill()
        # history is written before the update is published: the main process sees
        # an agent's clip count here before (or soon after) the aggregator its update
        for agent in agents:
            for round_id, update in list(agent.history.items()):
                if (agent.config.agent_id, round_id) not in sent:
                    sent.add((agent.config.agent_id, round_id))
                    conn.send(("clipped", agent.config.agent_id, round_id, update.clipped,
                               update.delta.size))
    stop.set()
    for agent in agents:
        agent.stop()
    end = time.monotonic() + 10  # together, not 10 s per agent
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    shared.close()
    conn.send(("done", spec.index, peak_rss_bytes()))
    conn.close()


class ShardedFleet:
    """Agents sharded over ``workers`` spawned processes."""

    def __init__(self, configs: Sequence[AgentConfig], *, workers: int, spread: float = 0.0,
                 seed: int = 0, log_level: int = logging.WARNING) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._shards = [ShardSpec(i, tuple(part), spread, seed * 1000 + i, log_level)
                        for i, part in enumerate(split(list(configs), workers))]
        self._owner = {cfg.agent_id: i for i, s in enumerate(self._shards) for cfg in s.configs}
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for spec in self._shards:
            mine, theirs = ctx.Pipe()
            self._conns.append(mine)
            self._procs.append(ctx.Process(target=run_shard, args=(spec, theirs),
                                           name=f"fedmq-shard-{spec.index}", daemon=True))
        self._cond = threading.Condition()
        self._clipped: dict[tuple[str, int], tuple[int, int]] = {}
        self._rss: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read, name="fedmq-shards", daemon=True)
        self._send_lock = threading.Lock()

    @property
    def workers(self) -> int:
        return len(self._shards)

    def start(self) -> None:
        for p in self._procs:
            p.start()
        self._reader.start()

    def _read(self) -> None:
        open_conns = list(self._conns)
        while open_conns:
            for conn in wait(open_conns):
                assert isinstance(conn, Connection)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    open_conns.remove(conn)
                    continue
                with self._cond:
                    if msg[0] == "clipped":
                        self._clipped[(msg[1], msg[2])] = (msg[3], msg[4])
                    elif msg[0] == "done":
                        self._rss[msg[1]] = msg[2]
                    self._cond.notify_all()

    def clipped(self, round_id: int, agents: Sequence[str], timeout: float = 2.0) -> Clips:
        """The clip counts the ``agents`` reported for ``round_id`` (waits for stragglers
        of the pipe up to ``timeout``: they published, so they are on their way)."""
        with self._cond:
            self._cond.wait_for(lambda: all((a, round_id) in self._clipped for a in agents),
                                timeout)
            return _clips([self._clipped[(a, round_id)] for a in agents
                           if (a, round_id) in self._clipped])

    def _send(self, index: int, msg: tuple[Any, ...]) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # the worker is gone already
            self._conns[index].send(msg)

    def kill(self, agent_ids: Sequence[str]) -> None:
        for index in sorted({self._owner[a] for a in agent_ids}):
            self._send(index, ("kill", tuple(agent_ids)))

    def stop(self) -> FleetEnd:
        for i in range(len(self._conns)):
            self._send(i, ("stop",))
        end = time.monotonic() + 30
        for p in self._procs:
            p.join(max(0.1, end - time.monotonic()))
            if p.is_alive():
                log.warning("worker %s did not stop in time; terminating it", p.name)
                p.terminate()
                p.join(5)
        self._reader.join(5)
        with self._cond:
            return FleetEnd(worker_rss=tuple(self._rss.get(i, 0)
                                             for i in range(len(self._shards))))
