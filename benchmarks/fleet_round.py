"""``fedmq bench-round``: one training round of N devices end to end, on real MQTT.

Simulating 10,000 training agents does not fit on 2 cores, so their updates are
made beforehand (benchmarks.inbound_fleet: genuine Paillier-encrypted, signed
training updates of N distinct agent keys) and sent by load-generator processes
that hold one MQTT connection per device, each logged in as that device on a
Mosquitto broker with the fleet's generated config (users, ACL, queue and memory
limits; simulation.broker). Each connection says "online" (retained status, as an
agent does); the aggregator, a process of its own, waits for all of them, opens
the round, and the generators send every device's update at once when it is
announced. Printed: the round's seconds as the aggregator measured them (open to
new model) and from the first update sent to the new model on the round topic,
updates counted, rejected or never arrived (dropped deliveries), peak RSS of every
process, and Mosquitto's warnings, its "out of memory" disconnects among them.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedmq.aggregator.config import AggregatorConfig, Limits, RobustPolicy, RoundPolicy
from fedmq.aggregator.service import Aggregator
from fedmq.benchmarks.inbound_fleet import build_fleet
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import PaillierPrivateKey, PaillierPublicKey, generate_keypair
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.messages import RoundMessage, StatusMessage
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.runtime.netloop import NetworkLoop
from fedmq.runtime.quiet import quieted
from fedmq.runtime.transport import MqttLink, MqttSettings
from fedmq.simulation.broker import BrokerChoice, FleetBroker, fleet_broker
from fedmq.simulation.shards import peak_rss_bytes

TOPICS = Topics("bench")
RUN_ID = "bench-round"
MB = 1024 * 1024


@dataclass(frozen=True)
class RoundRow:
    devices: int
    d: int
    bits: int
    senders: int
    round_seconds: float  # the aggregator's: round opened to new model
    send_to_model: float  # first update sent to the new model on the round topic
    counted: int
    rejected: dict[str, int]
    never_arrived: int  # sent, acknowledged by the broker, neither counted nor rejected
    unacked: int  # sends the broker never acknowledged
    rss_mb: dict[str, float]  # process -> peak RSS
    broker_warnings: int
    out_of_memory: int  # Mosquitto's "disconnected due to out of memory" lines

    def table(self) -> str:
        rss = ", ".join(f"{name} {mb:.0f}" for name, mb in self.rss_mb.items())
        rejected = " ".join(f"{k}:{v}" for k, v in sorted(self.rejected.items())) or "0"
        return "\n".join([
            "| devices | d | bits | round s (aggregator) | first send to model s | counted "
            "| rejected | never arrived | unacked | Mosquitto warnings | out of memory |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {self.devices} | {self.d} | {self.bits} | {self.round_seconds:.2f} | "
            f"{self.send_to_model:.2f} | {self.counted} | {rejected} | {self.never_arrived} | "
            f"{self.unacked} | {self.broker_warnings} | {self.out_of_memory} |",
            f"peak RSS MB: {rss} (sum {sum(self.rss_mb.values()):.0f})"])


def _agent(i: int) -> str:
    return f"agent-{i:05d}"  # as benchmarks.inbound_fleet names them


def _aggregator_process(config: AggregatorConfig, keypair: tuple[PaillierPublicKey,
                        PaillierPrivateKey], signer: Signer, devices: int, seed: int,
                        out: Any) -> None:
    allow = {_agent(i): Signer.from_seed(f"bench-inbound:{seed}:{_agent(i)}".encode()).public_key
             for i in range(devices)}
    try:
        with quieted("fedmq", logging.WARNING):  # not 10,000 lines "agent ... is online"
            agg = Aggregator(config, keypair=keypair, signer=signer, allow_list=allow,
                             run_id=RUN_ID)
            agg.run()
        [result] = agg.results
        out.send({"seconds": result.seconds, "counted": len(result.reported),
                  "rejected_total": result.rejected, "rss": peak_rss_bytes()})
    except Exception as exc:
        out.send({"error": f"{type(exc).__name__}: {exc}", "rss": peak_rss_bytes()})


def _sender_process(name: str, agents: Sequence[tuple[str, bytes]],
                    settings: dict[str, MqttSettings], ready: Any, go: Any, done: Any,
                    out: Any) -> None:
    network = NetworkLoop(name)
    links = {a: MqttLink(settings[a], client_id=a, on_message=lambda _t, _p: None,
                         network=network) for a, _ in agents}
    with quieted("fedmq"), ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda link: link.connect(), links.values()))
    for agent, link in links.items():  # what an agent says when it comes up
        link.publish(TOPICS.status(agent), StatusMessage(agent, "online").to_bytes(),
                     retain=True, wait=False)
    ready.put(len(links))
    go.wait()
    infos = [links[agent]._client.publish(TOPICS.update(agent), payload, qos=1)
             for agent, payload in agents]
    end = time.monotonic() + 120
    for info in infos:
        info.wait_for_publish(max(0.0, end - time.monotonic()))
    unacked = sum(not i.is_published() for i in infos)
    done.wait()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda link: link.close(), links.values()))
    out.put({"name": name, "unacked": unacked, "rss": peak_rss_bytes()})


def _config(broker: FleetBroker, devices: int, d: int, bits: int, state: Path
            ) -> AggregatorConfig:
    spec = ModelSpec(kind="logistic", features=tuple(f"x{i}" for i in range(d)), n_classes=2,
                     center=(0.0,) * d, scale=(1.0,) * d)
    return AggregatorConfig(
        topics=TOPICS, spec=spec, mqtt=broker.aggregator, key_bits=bits,
        policy=RoundPolicy(rounds=1, round_timeout=600.0, quorum=devices, min_agents=devices,
                           start_timeout=900.0, max_extensions=0, final_evaluation=False),
        codec=CodecParams(max_agents=devices), statistics=StatsParams(max_agents=devices),
        statistics_round=False, robust=RobustPolicy(rule="mean"), state_dir=str(state),
        resume=False, limits=Limits(inbox_messages=2 * devices + 1000,
                                    inbox_bytes=max(64 * MB, 4 * devices * 4096)))


def measure(*, devices: int, d: int, bits: int, senders: int, seed: int = 0,
            progress: Any = print) -> RoundRow:
    ctx = multiprocessing.get_context("fork")  # forked before any thread of ours
    keypair, signer = generate_keypair(bits), Signer.generate()
    agents = [_agent(i) for i in range(devices)]
    with tempfile.TemporaryDirectory(prefix="fedmq-round-") as tmp:
        with fleet_broker(BrokerChoice.parse("mosquitto"), topics=TOPICS, agent_ids=agents,
                          out_dir=Path(tmp), own_process=True) as broker:
            config = _config(broker, devices, d, bits, Path(tmp) / "aggregator")
            agg_end, agg_out = ctx.Pipe(duplex=False)
            aggregator = ctx.Process(target=_aggregator_process, args=(
                config, keypair, signer, devices, seed, agg_out))
            aggregator.start()
            start = time.perf_counter()
            fleet = build_fleet(bits=bits, d=d, updates=devices, seed=seed, key=keypair,
                                fleet=TOPICS.fleet, run_id=RUN_ID)
            progress(f"built {devices} signed updates in {time.perf_counter() - start:.0f} s")
            ready, reports = ctx.Queue(), ctx.Queue()
            go, done = ctx.Event(), ctx.Event()
            shares = [fleet.payloads[k::senders] for k in range(senders)]
            procs = [ctx.Process(target=_sender_process, args=(
                f"sender-{k}", share, {a: broker.agent(a) for a, _ in share}, ready, go,
                done, reports)) for k, share in enumerate(shares)]
            for p in procs:
                p.start()
            connected = sum(ready.get(timeout=900) for _ in procs)
            progress(f"{connected} device connections up; waiting for the round")
            rounds = _RoundWatch(broker.dashboard())
            rounds.wait_for("training", timeout=900)
            sent_at = time.perf_counter()
            go.set()
            rounds.wait_for("finished", "failed", timeout=900)
            to_model = time.perf_counter() - sent_at
            done.set()
            sent = [reports.get(timeout=300) for _ in procs]
            agg: dict[str, Any] = agg_end.recv() if agg_end.poll(120) else {
                "error": "no report"}
            for p in (*procs, aggregator):
                p.join(60)
            rounds.close()
            main_rss = peak_rss_bytes()
        log_text = (Path(tmp) / "mosquitto" / "mosquitto.log").read_text(errors="replace")
    if "error" in agg:
        raise RuntimeError(f"the aggregator failed: {agg['error']}")
    unacked = sum(s["unacked"] for s in sent)
    rejected = {"total": agg["rejected_total"]} if agg["rejected_total"] else {}
    rss = {"aggregator": agg["rss"] / MB, "broker": broker.end.peak_rss / MB,
           **{s["name"]: s["rss"] / MB for s in sent}, "main (builds the updates)": main_rss / MB}
    return RoundRow(
        devices=devices, d=d, bits=bits, senders=senders, round_seconds=agg["seconds"],
        send_to_model=to_model, counted=agg["counted"], rejected=rejected,
        never_arrived=devices - agg["counted"] - agg["rejected_total"] - unacked,
        unacked=unacked, rss_mb=rss, broker_warnings=broker.end.warnings,
        out_of_memory=log_text.count("disconnected due to out of memory"))


class _RoundWatch:
    """The retained round topic, as a dashboard reads it."""

    def __init__(self, settings: MqttSettings) -> None:
        self.state = ""
        self._changed = threading.Condition()
        self._link = MqttLink(settings, client_id="bench-round-watch", on_message=self._on,
                              subscriptions=[(TOPICS.round, 1)])
        self._link.connect()

    def _on(self, _topic: str, payload: bytes) -> None:
        try:
            state = RoundMessage.from_bytes(payload).state
        except Exception:
            return
        with self._changed:
            self.state = state
            self._changed.notify_all()

    def wait_for(self, *states: str, timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: self.state in states, timeout):
                raise TimeoutError(f"the round is {self.state or 'not announced'}, "
                                   f"not {' or '.join(states)}, after {timeout:.0f} s")

    def close(self) -> None:
        self._link.close()


def cmd_bench_round(args: argparse.Namespace) -> int:
    row = measure(devices=args.devices, d=args.dims, bits=args.bits, senders=args.senders,
                  seed=args.seed)
    print(row.table())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(row), indent=1) + "\n")
    return 0 if row.counted == row.devices else 1


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("bench-round", help=help_text, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--dims", type=int, default=100, help="features d")
    p.add_argument("--bits", type=int, default=2048, help="Paillier key size")
    p.add_argument("--senders", type=int, default=2,
                   help="load-generator processes holding the device connections")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the row to this JSON file")
    p.set_defaults(func=cmd_bench_round)
