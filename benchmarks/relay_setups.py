"""The two setups of ``fedmq bench-relay``: one gateway, or two relays under a top gateway.

Both serve the same prepared fleet (``prepare``): the same data files, the same
agent signing keys (in the agents' state dirs), the same aggregator Paillier and
signing keys, the same training seed. Each setup runs in a spawned process of its
own (``run_setup``), so its peak RSS is its own and not the other setup's.

single:  agents -> broker -> aggregator (holds the private key)
relayed: agents of relay r -> broker r -> relay r (no private key, own process)
         -> top broker -> top aggregator, which decrypts only the grand total.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmq.aggregator.allowlist import enroll_many
from fedmq.aggregator.config import AggregatorConfig, RobustPolicy, RoundPolicy
from fedmq.aggregator.keys import load_aggregator_keys
from fedmq.aggregator.outcome import RoundResult
from fedmq.aggregator.service import Aggregator
from fedmq.benchmarks.relay_processes import relay_processes
from fedmq.edge_agent.config import AgentConfig
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.signing import Ed25519PublicKey
from fedmq.protocol.messages import TrainingSettings
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.relay.config import RelayConfig
from fedmq.runtime.files import load_or_create_signer
from fedmq.runtime.quiet import quieted
from fedmq.runtime.transport import MqttSettings
from fedmq.simulation import synthetic
from fedmq.simulation.broker import BrokerChoice, BrokerEnd, FleetBroker, fleet_broker
from fedmq.simulation.shards import ShardedFleet, peak_rss_bytes
from fedmq.simulation.tasks import TASKS, model_spec

log = logging.getLogger(__name__)
TOPICS = Topics(fleet="bench")


@dataclass(frozen=True)
class Plan:
    """One benchmark's fleet and settings (travels to the setup processes)."""

    run_dir: str
    relays: tuple[str, ...] = ("relay-a", "relay-b")
    per_relay: int = 500
    rounds: int = 3
    key_bits: int = 2048
    task: str = "fault"
    samples_per_device: int = 400
    broker: str = "mosquitto"  # mosquitto or embedded: every broker of both setups
    workers: int = 2
    seed: int = 0

    @property
    def agents(self) -> int:
        return len(self.relays) * self.per_relay

    @property
    def agent_ids(self) -> tuple[str, ...]:
        return tuple(f"device-{i:04d}" for i in range(self.agents))

    def subtree(self, relay: str) -> tuple[str, ...]:
        i = self.relays.index(relay)
        return self.agent_ids[i * self.per_relay:(i + 1) * self.per_relay]

    @property
    def round_timeout(self) -> float:
        # Generous: both setups must close every round with ALL devices ("all"), or
        # they would sum different fleets. A round closes as soon as all reported.
        return max(30.0, 0.1 * self.agents)

    @property
    def spread(self) -> float:
        return 0.005 * self.agents  # as fedmq simulate: connections over seconds

    def path(self, *parts: str) -> Path:
        return Path(self.run_dir).joinpath(*parts)


def prepare(plan: Plan) -> None:
    """Data files, every key and the relays' device lists, once for both setups."""
    devices = synthetic.generate_fleet(synthetic.FleetSpec(
        n_devices=plan.agents, samples_per_device=plan.samples_per_device, seed=plan.seed))
    for device_id, dev in zip(plan.agent_ids, devices, strict=True):
        synthetic.write_csv(plan.path("data", f"{device_id}.csv"), dev.columns, dev.train)
    load_aggregator_keys(aggregator_config(plan, MqttSettings(), "keys", 1))  # creates them
    # a line per generated key: a thousand of them
    with quieted("fedmq.runtime.files", logging.WARNING):
        _agent_and_relay_keys(plan)


def _agent_and_relay_keys(plan: Plan) -> None:
    for device_id in plan.agent_ids:
        load_or_create_signer(plan.path("agents", device_id, "signing.key"))
    for relay in plan.relays:
        load_or_create_signer(plan.path("relays", f"{relay}.key"))
        pairs = [(a, load_or_create_signer(plan.path("agents", a, "signing.key")).public_hex)
                 for a in plan.subtree(relay)]
        enroll_many(plan.path("relays", f"{relay}-devices.json"), pairs)


def aggregator_config(plan: Plan, mqtt: MqttSettings, setup: str, min_agents: int
                      ) -> AggregatorConfig:
    fleet = max(CodecParams().max_agents, plan.agents)
    keys = plan.path("keys")
    return AggregatorConfig(
        topics=TOPICS, spec=model_spec(plan.task, "federated"), mqtt=mqtt,
        key_file=str(keys / "paillier.key"), key_bits=plan.key_bits,
        signing_key_file=str(keys / "signing.key"),
        allow_list_file=str(plan.path(setup, "allow_list.json")),
        policy=RoundPolicy(rounds=plan.rounds, round_timeout=plan.round_timeout,
                           quorum=plan.agents, min_agents=min_agents,
                           start_timeout=120 + 2 * plan.spread),
        training=TrainingSettings(),
        codec=CodecParams(max_agents=fleet), statistics=StatsParams(max_agents=fleet),
        state_dir=str(plan.path(setup, "aggregator")), resume=False,
        # Plain FedAvg: the check is that sums compose exactly; robust rules group a
        # round's MEMBERS (a relay's partial is one), so topologies would group differently.
        robust=RobustPolicy(rule="mean"))


def enrolled(plan: Plan) -> dict[str, Ed25519PublicKey]:
    return {a: load_or_create_signer(plan.path("agents", a, "signing.key")).public_key
            for a in plan.agent_ids}


def agent_configs(plan: Plan, aggregator: Aggregator,
                  mqtt_of: Callable[[str], MqttSettings]) -> list[AgentConfig]:
    label = TASKS[plan.task][0]
    return [AgentConfig(
        agent_id=a, topics=TOPICS, data_path=str(plan.path("data", f"{a}.csv")),
        features=synthetic.FEATURES, label=label, mqtt=mqtt_of(a),
        key_fingerprint=aggregator.fingerprint,
        aggregator_signing_key=aggregator.signer.public_hex,
        state_dir=str(plan.path("agents", a)), seed=plan.seed)  # same seed: same training
        for a in plan.agent_ids]


@dataclass(frozen=True)
class RoundRecord:
    phase: str
    round_id: int
    seconds: float
    update_bytes: int  # inbound at the (top) aggregator
    reported: int
    closed_by: str
    digest: str  # SHA-256 of the round's exact outcome: new model and decrypted totals
    params: bytes  # float64 new model, for the exact comparison


def outcome_digest(result: RoundResult) -> str:
    h = hashlib.sha256(np.asarray(result.params, dtype=np.float64).tobytes())
    h.update(repr((result.total_weight, result.statistics, result.evaluation)).encode())
    return h.hexdigest()


def records(aggregator: Aggregator) -> tuple[RoundRecord, ...]:
    """Every round the aggregator ran: statistics, training, final evaluation."""
    rounds = [aggregator.statistics, *aggregator.results, aggregator.final_evaluation]
    return tuple(record(r) for r in rounds if r is not None)


def record(result: RoundResult) -> RoundRecord:
    return RoundRecord(result.phase, result.round_id, result.seconds, result.update_bytes,
                       len(result.reported), result.closed_by, outcome_digest(result),
                       np.asarray(result.params, dtype=np.float64).tobytes())


@dataclass(frozen=True)
class SetupResult:
    setup: str
    rounds: tuple[RoundRecord, ...]
    final: bytes  # float64 final global parameters
    rss: dict[str, int]  # process kind -> peak RSS bytes (summed over its processes)
    broker_complaints: int  # PUBACK timeouts and warnings of every broker
    wall_seconds: float
    relay_partials: int = 0  # partial sums the relays forwarded


def _complaints(ends: Sequence[BrokerEnd]) -> int:
    return sum(e.puback_timeouts + e.warnings for e in ends)


def run_single(plan: Plan) -> SetupResult:
    start = time.perf_counter()
    with fleet_broker(BrokerChoice.parse(plan.broker), topics=TOPICS, agent_ids=plan.agent_ids,
                      out_dir=plan.path("single"), own_process=True) as broker:
        aggregator = Aggregator(aggregator_config(plan, broker.aggregator, "single",
                                                  plan.agents), allow_list=enrolled(plan))
        final, workers = _serve(plan, aggregator, broker.agent)
    return SetupResult(
        "single", records(aggregator), final.tobytes(),
        {"aggregator": peak_rss_bytes(), "brokers": broker.end.peak_rss,
         "agent workers": sum(workers)}, _complaints([broker.end]),
        time.perf_counter() - start)


def run_relayed(plan: Plan) -> SetupResult:
    start = time.perf_counter()
    choice = BrokerChoice.parse(plan.broker)
    relays: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        top = stack.enter_context(fleet_broker(
            choice, topics=TOPICS, agent_ids=plan.relays, out_dir=plan.path("relayed", "top"),
            own_process=True))
        local: dict[str, FleetBroker] = {r: stack.enter_context(fleet_broker(
            choice, topics=TOPICS, agent_ids=plan.subtree(r), out_dir=plan.path("relayed", r),
            own_process=True)) for r in plan.relays}
        relay_keys = {r: load_or_create_signer(plan.path("relays", f"{r}.key")).public_key
                      for r in plan.relays}
        aggregator = Aggregator(aggregator_config(plan, top.aggregator, "relayed",
                                                  len(plan.relays)),
                                # The devices too: it checks each one's attestation.
                                allow_list=enrolled(plan), relays=relay_keys)
        configs = [RelayConfig(
            relay_id=r, aggregator_signing_key=aggregator.signer.public_hex,
            signing_key_file=str(plan.path("relays", f"{r}.key")),
            allow_list_file=str(plan.path("relays", f"{r}-devices.json")),
            upstream=top.agent(r), local=local[r].aggregator, upstream_topics=TOPICS,
            local_topics=TOPICS, min_devices=plan.per_relay) for r in plan.relays]
        stack.enter_context(relay_processes(configs, relays))
        owner = {a: r for r in plan.relays for a in plan.subtree(r)}
        final, workers = _serve(plan, aggregator, lambda a: local[owner[a]].agent(a))
    ends = [top.end, *(b.end for b in local.values())]
    return SetupResult(
        "relayed", records(aggregator), final.tobytes(),
        {"aggregator": peak_rss_bytes(), "brokers": sum(e.peak_rss for e in ends),
         "agent workers": sum(workers), "relays": relays.get("rss", 0)}, _complaints(ends),
        time.perf_counter() - start, relay_partials=relays.get("partials", 0))


def _serve(plan: Plan, aggregator: Aggregator, mqtt_of: Callable[[str], MqttSettings]
           ) -> tuple[np.ndarray, tuple[int, ...]]:
    fleet = ShardedFleet(agent_configs(plan, aggregator, mqtt_of), workers=plan.workers,
                         spread=plan.spread, seed=plan.seed)
    fleet.start()
    try:
        final = aggregator.run()
    finally:
        end = fleet.stop()
    return np.asarray(final, dtype=np.float64), end.worker_rss


SETUPS = {"single": run_single, "relayed": run_relayed}


def _setup_process(name: str, plan: Plan, conn: Any) -> None:
    logging.basicConfig(level=logging.WARNING,
                        format=f"%(levelname)s {name} %(name)s: %(message)s")
    try:
        conn.send(("ok", SETUPS[name](plan)))
    except Exception as exc:  # reported by the parent as this setup's failure
        log.exception("setup %s failed", name)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def run_setup(name: str, plan: Plan, timeout: float) -> SetupResult | str:
    """One setup in a spawned process: its result, or why it failed."""
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_setup_process, args=(name, plan, theirs),
                       name=f"fedmq-bench-{name}")
    proc.start()
    try:
        if not mine.poll(timeout):
            return f"{name}: no result within {timeout:.0f} s"
        status, value = mine.recv()
    except EOFError:
        return f"{name}: the setup process died (exit code {proc.exitcode})"
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    return value if status == "ok" else f"{name}: {value}"
