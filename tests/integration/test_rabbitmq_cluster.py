"""A fleet split across a two-node RabbitMQ cluster: every device trains every round.

RabbitMQ 3.10 keeps retained MQTT messages per node (and hands them only to exact-topic
subscriptions): a device on node B never gets the aggregator's retained ``pubkey`` or
``round`` published on node A, only live copies. Devices ask with their status what they
lack (protocol.holdings) and the aggregator sends it again. Skips without RabbitMQ, unless
FEDMQ_REQUIRE_RABBITMQ=1 (set by .ci/run).
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mqtt_support import FleetClient
from rabbitmq_support import RabbitCluster, rabbitmq_cluster
from support import (
    AGGREGATOR_SIGNER,
    EnrolledFleet,
    agent_config,
    local_data,
    run_in_thread,
    signer_for,
    wait_until,
)

from fedmq.aggregator.config import Limits
from fedmq.aggregator.service import Aggregator
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import fingerprint
from fedmq.protocol.holdings import Holdings
from fedmq.protocol.messages import PubKeyMessage, RoundMessage, StatusMessage
from fedmq.protocol.topics import Topics
from fedmq.relay.config import RelayConfig
from fedmq.relay.service import Relay
from fedmq.runtime.transport import MqttSettings

TOPICS = Topics("test")
ON_A = ("dev-a1", "dev-a2", "dev-a3")
ON_B = ("dev-b1", "dev-b2", "dev-b3")
ROUNDS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    with rabbitmq_cluster(tmp_path_factory.mktemp("rabbitmq"),
                          ("aggregator", "relay-x", *ON_A, *ON_B)) as running:
        yield running


def aggregator_on_a(cluster: RabbitCluster, make_aggregator: Any, keypair: Any,
                    tmp_path: Path, resend_seconds: float, *, relays: Any = None,
                    **policy: Any) -> Aggregator:
    config = make_aggregator(cluster.nodes[0].mqtt_port, codec=CodecParams(clip=2.0),
                             **policy).config
    return Aggregator(replace(config, mqtt=cluster.login("aggregator", 0),
                              limits=Limits(resend_seconds=resend_seconds),
                              state_dir=str(tmp_path / "aggregator")),
                      keypair=keypair, signer=AGGREGATOR_SIGNER, allow_list=EnrolledFleet(),
                      relays=relays)


def agent_on(cluster: RabbitCluster, name: str, keypair: Any, tmp_path: Path,
             seed: int) -> EdgeAgent:
    node = 0 if name in ON_A else 1
    config = agent_config(cluster.nodes[node].mqtt_port, name,
                          key_fingerprint=fingerprint(keypair[0]),
                          aggregator_signing_key=AGGREGATOR_SIGNER.public_hex,
                          state_dir=str(tmp_path / name))
    return EdgeAgent(replace(config, mqtt=cluster.login(name, node)),
                     data=local_data(seed, 40 + 5 * seed))


def test_devices_on_both_nodes_train_every_round(cluster: RabbitCluster, make_aggregator: Any,
                                                 keypair: Any, tmp_path: Path) -> None:
    """The aggregator publishes its key on node A before any device connects; devices on
    node B never see that retained copy, yet all six contribute to every round (before
    the fix: 3 of 6, every round closed at its deadline without dev-b1..3)."""
    aggregator = aggregator_on_a(cluster, make_aggregator, keypair, tmp_path, 0.5,
                                 rounds=ROUNDS, quorum=3, min_agents=6, round_timeout=8.0,
                                 max_extensions=0)
    thread, out = run_in_thread(aggregator.run)
    agents: list[EdgeAgent] = []
    threads: list[threading.Thread] = []
    try:
        wait_until(lambda: aggregator._announcer.latest(TOPICS.pubkey), "the key announced")
        agents = [agent_on(cluster, name, keypair, tmp_path, i)
                  for i, name in enumerate((*ON_A, *ON_B))]
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        for t in threads:
            t.start()
        thread.join(90)
        assert not thread.is_alive(), "the aggregator did not finish"
        assert "error" not in out, out.get("error")
    finally:
        aggregator.stop()
        for a in agents:
            a.stop()
        for t in (*threads, thread):
            t.join(5)
    with (aggregator.store.run_dir / "rounds.csv").open() as fh:
        logged = {int(r["round"]): int(r["reported"]) for r in csv.DictReader(fh)}
    assert logged == {1: 6, 2: 6, 3: 6}  # two training rounds and the final evaluation
    assert all(set(r.reported) == {*ON_A, *ON_B} for r in aggregator.results)
    assert all(a.final_params is not None for a in agents)


def forget_retained(cluster: RabbitCluster) -> None:
    """Delete an earlier test's retained key and round on node A: a new aggregator that
    gets them after its own first announcement rightly warns about a copy not its own."""
    client = FleetClient(cluster.nodes[0].mqtt_port, username="aggregator",
                         password=cluster.passwords["aggregator"], client_id="forget")
    assert client.connect()
    try:
        for topic in (TOPICS.pubkey, TOPICS.round):
            client.publish(topic, b"", retain=True)
    finally:
        client.close()


def ask(client: FleetClient, name: str, holds: Holdings) -> None:
    client.publish(TOPICS.status(name), StatusMessage(agent_id=name, state="online",
                                                      holds=holds).to_bytes(), retain=True)


def test_an_ask_on_node_b_gets_the_open_round_once_per_interval(
        cluster: RabbitCluster, make_aggregator: Any, keypair: Any, tmp_path: Path) -> None:
    """A device on node B gets no retained copy, asks, and gets the signed key and the open
    round; a flood of asks gets at most one re-send per ``resend_seconds``; an ask naming
    what the aggregator published last gets nothing."""
    forget_retained(cluster)
    aggregator = aggregator_on_a(cluster, make_aggregator, keypair, tmp_path, 1.0, rounds=1,
                                 quorum=2, min_agents=2, round_timeout=60.0, max_extensions=0)
    thread, out = run_in_thread(aggregator.run)
    agent = agent_on(cluster, "dev-a1", keypair, tmp_path, 1)
    agent_thread = threading.Thread(target=agent.run, daemon=True)
    agent_thread.start()
    # dev-a2 says it is online and never answers: round 1 stays open.
    silent = FleetClient(cluster.nodes[0].mqtt_port, username="dev-a2",
                         password=cluster.passwords["dev-a2"], client_id="silent")
    device = FleetClient(cluster.nodes[1].mqtt_port, username="dev-b1",
                         password=cluster.passwords["dev-b1"], client_id="on-b")
    try:
        assert silent.connect() and device.connect()
        wait_until(lambda: aggregator._announcer.latest(TOPICS.pubkey), "the key announced")
        def say_online() -> bool:  # until the aggregator's wildcard subscription hears it
            silent.publish(TOPICS.status("dev-a2"),
                           StatusMessage(agent_id="dev-a2", state="online").to_bytes())
            time.sleep(0.3)
            return aggregator.online.get("dev-a2", False)
        wait_until(say_online, "dev-a2 seen online")
        latest_round = wait_until(lambda: aggregator._announcer.latest(TOPICS.round),
                                  "round 1 announced")
        key = aggregator._announcer.latest(TOPICS.pubkey)
        assert key is not None
        assert device.subscribe(TOPICS.pubkey) and device.subscribe(TOPICS.round)
        time.sleep(1.0)
        assert device.received == [], "node B handed out a retained copy after all"

        ask(device, "dev-b1", Holdings())
        assert device.wait(lambda: len(device.got(TOPICS.round)) == 1)
        assert device.got(TOPICS.pubkey) == [key]
        assert device.got(TOPICS.round) == [latest_round]
        PubKeyMessage.from_bytes(key)
        msg = RoundMessage.from_bytes(latest_round, verify_with=AGGREGATOR_SIGNER.public_key)
        assert (msg.round_id, msg.state) == (1, "training")

        start = time.monotonic()
        for i in range(60):  # a flood of asks for the round only, from 3 ids, over ~2.5 s
            ask(device, ON_B[i % 3], Holdings.of(key, None))
            time.sleep(0.04)
        wait_until(lambda: aggregator._herald.resends.sent >= 2, "a re-send after the pause")
        time.sleep(1.5)  # the last ask's answer, if one was due
        elapsed = time.monotonic() - start
        copies = len(device.got(TOPICS.round)) - 1
        assert 1 <= copies <= elapsed / 1.0 + 1, (copies, elapsed)
        assert len(device.got(TOPICS.pubkey)) == 1  # they held the key: only the round

        before = len(device.got(TOPICS.round))
        ask(device, "dev-b1", Holdings.of(key, latest_round))  # holds both: nothing to send
        ask(device, "dev-b2", Holdings.of(key, b"an older round"))  # must be answered
        assert device.wait(lambda: len(device.got(TOPICS.round)) == before + 1)
        time.sleep(1.5)
        assert len(device.got(TOPICS.round)) == before + 1
        assert thread.is_alive() and "error" not in out, out.get("error")
    finally:
        aggregator.stop()
        agent.stop()
        silent.close()
        device.close()
        thread.join(10)
        agent_thread.join(5)


def test_a_relay_on_node_b_asks_upstream_and_its_devices_train(
        cluster: RabbitCluster, make_aggregator: Any, keypair: Any, tmp_path: Path) -> None:
    """A relay whose upstream connection lands on node B gets no retained key or round;
    it asks with its status, and its two devices (on its own broker) contribute."""
    forget_retained(cluster)
    relay_key = signer_for("relay-x")
    aggregator = aggregator_on_a(cluster, make_aggregator, keypair, tmp_path, 0.5,
                                 relays={"relay-x": relay_key.public_key}, rounds=1,
                                 quorum=2, min_agents=1, round_timeout=15.0,
                                 max_extensions=0)
    local_port = free_port()
    thread, out = run_in_thread(aggregator.run)
    devices = ("dev-r1", "dev-r2")
    agents: list[EdgeAgent] = []
    threads: list[threading.Thread] = []
    with EmbeddedBroker(BrokerSettings(port=local_port)):
        relay = Relay(RelayConfig(
            relay_id="relay-x", aggregator_signing_key=AGGREGATOR_SIGNER.public_hex,
            signing_key_file=str(tmp_path / "relay-x.key"),
            allow_list_file=str(tmp_path / "unused.json"),
            upstream=cluster.login("relay-x", 1), local=MqttSettings(port=local_port),
            upstream_topics=TOPICS, local_topics=TOPICS, min_devices=2, margin_seconds=1.0),
            signer=relay_key, allow_list=EnrolledFleet())
        relay_thread = threading.Thread(target=relay.run, daemon=True)
        try:
            wait_until(lambda: aggregator._announcer.latest(TOPICS.pubkey), "the key announced")
            relay_thread.start()
            for i, name in enumerate(devices):
                config = agent_config(local_port, name, key_fingerprint=fingerprint(keypair[0]),
                                      aggregator_signing_key=AGGREGATOR_SIGNER.public_hex,
                                      state_dir=str(tmp_path / name))
                agents.append(EdgeAgent(config, data=local_data(i, 50)))
            threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
            for t in threads:
                t.start()
            thread.join(60)
            assert not thread.is_alive(), "the aggregator did not finish"
            assert "error" not in out, out.get("error")
        finally:
            aggregator.stop()
            relay.stop()
            for a in agents:
                a.stop()
            for t in (*threads, thread, relay_thread):
                if t.ident is not None:
                    t.join(5)
    assert [sorted(r.reported) for r in aggregator.results] == [sorted(devices)]
    assert [p.summed for p in relay.forwarded][:1] == [2]
