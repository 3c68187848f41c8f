"""The aggregator's MQTT session against attacks and faults, on a real Mosquitto.

The broker is configured by ``fedmq broker mosquitto-config`` as on a gateway
(``use_username_as_clientid``, no anonymous logins). The aggregator reaches it
through a TcpProxy so a test can drop its link like a flaky network would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from mqtt_support import Mosquitto, Probe, TcpProxy, generated_mosquitto, running_mosquitto
from support import (
    AGGREGATOR_SIGNER,
    EnrolledFleet,
    agent_config,
    local_data,
    run_in_thread,
    wait_until,
)

from fedmq.aggregator.service import Aggregator
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import fingerprint
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.messages import PubKeyMessage
from fedmq.protocol.topics import Topics

TOPICS = Topics("test")
AGENTS = ("dev-a", "dev-b", "dev-c")
FORGER = Signer.from_seed(b"forger")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    # "auditor" has the aggregator's rights: a witness, and a leaked aggregator login.
    with generated_mosquitto(tmp_path, TOPICS.fleet, AGENTS, ("aggregator", "auditor")) as broker:
        yield broker


@pytest.fixture
def proxy(mosquitto: Mosquitto) -> Iterator[TcpProxy]:
    relay = TcpProxy(mosquitto.port)
    yield relay
    relay.close()


@pytest.mark.slow
def test_unauthenticated_connect_with_the_aggregators_id_does_not_deafen_it(
        mosquitto, proxy, make_aggregator, keypair):
    """Item 7. Mosquitto 2.0.11 refuses a CONNECT without user name, but closing that
    connection drops the aggregator's entry from its client-id table (the refused
    connection kept the id it asked for). Its next session then misses the old one,
    whose subscriptions keep swallowing every update: the run used to fail with all
    agents online and sending. The aggregator must hear its agents after a reconnect.
    """
    config = make_aggregator(proxy.port, rounds=2, quorum=3, min_agents=3,
                             round_timeout=15.0, start_timeout=15.0, max_extensions=0).config
    aggregator = Aggregator(
        replace(config, mqtt=mosquitto.login("aggregator", port=proxy.port)),
        keypair=keypair, signer=AGGREGATOR_SIGNER, allow_list=EnrolledFleet())
    thread, out = run_in_thread(aggregator.run)
    agents: list[tuple[EdgeAgent, threading.Thread]] = []
    try:
        wait_until(lambda: proxy.connections == 1 and aggregator._link.connected,
                   "the aggregator's first session")
        attacker = Probe(mosquitto.port, "aggregator", clean_session=True, reconnect=False)
        assert not attacker.connect()  # refused: no user name
        assert attacker.connack is not None and attacker.connack.is_failure
        attacker.close()
        proxy.cut()  # a network glitch: the aggregator reconnects
        proxy.restore()
        wait_until(lambda: proxy.connections == 2 and aggregator._link.connected,
                   "the aggregator's reconnect", timeout=20)
        agents = _start_agents(mosquitto, keypair)
        thread.join(60)
        assert not thread.is_alive(), "the aggregator did not finish"
        assert "error" not in out, out.get("error")
    finally:
        aggregator.stop()
        for agent, t in agents:
            agent.stop()
            t.join(5)
        thread.join(5)
    assert [r.closed_by for r in aggregator.results] == ["all", "all"]
    assert all(sorted(r.reported) == sorted(AGENTS) for r in aggregator.results)


def _start_agents(broker: Mosquitto, keypair, straggle: dict[str, float] | None = None,
                  port: int | None = None) -> list[tuple[EdgeAgent, threading.Thread]]:
    pins = {"key_fingerprint": fingerprint(keypair[0]),
            "aggregator_signing_key": AGGREGATOR_SIGNER.public_hex}
    started = []
    for i, name in enumerate(AGENTS):
        agent = EdgeAgent(replace(agent_config(broker.port, name, **pins,
                                               straggle_seconds=(straggle or {}).get(name, 0.0)),
                                  mqtt=broker.login(name, port=port)), data=local_data(i, 50))
        started.append((agent, threading.Thread(target=agent.run, daemon=True)))
        started[-1][1].start()
    return started


def _aggregator(broker: Mosquitto, make_aggregator, keypair, port: int, **policy) -> Aggregator:
    config = make_aggregator(port, **policy).config
    return Aggregator(replace(config, mqtt=broker.login("aggregator", port=port)),
                      keypair=keypair, signer=AGGREGATOR_SIGNER, allow_list=EnrolledFleet())


def _stop(aggregator: Aggregator, thread: threading.Thread,
          agents: list[tuple[EdgeAgent, threading.Thread]]) -> None:
    aggregator.stop()
    for agent, t in agents:
        agent.stop()
        t.join(5)
    thread.join(5)


def test_aggregator_puts_back_a_retained_pubkey_it_did_not_publish(
        mosquitto, make_aggregator, keypair, fleet_client, caplog):
    """Item 9: a leaked aggregator login replaces the retained pubkey. The aggregator,
    reading its own topics back, republishes its key once, warns once, and does not
    loop on the echo of its own messages."""
    caplog.set_level(logging.INFO)
    watcher = fleet_client(mosquitto.port, "dev-a", mosquitto.credentials["dev-a"])
    assert watcher.subscribe(TOPICS.pubkey)
    aggregator = _aggregator(mosquitto, make_aggregator, keypair, mosquitto.port,
                             min_agents=3, start_timeout=60.0)
    thread, _ = run_in_thread(aggregator.run)
    try:
        genuine = watcher.wait(lambda: bool(watcher.got(TOPICS.pubkey))) and \
            watcher.got(TOPICS.pubkey)[0]
        forger = fleet_client(mosquitto.port, "auditor", mosquitto.credentials["auditor"])
        forged = PubKeyMessage(fleet=TOPICS.fleet, n_hex=format(keypair[0].n, "x"),
                               fingerprint=fingerprint(keypair[0]), codec=CodecParams(),
                               signing_key=FORGER.public_hex).to_bytes(FORGER)
        forger.publish(TOPICS.pubkey, forged, retain=True)
        assert watcher.wait(lambda: watcher.got(TOPICS.pubkey)[-1:] == [genuine]
                            and forged in watcher.got(TOPICS.pubkey), 10), "not put back"
        late = Probe(mosquitto.port, "late", username="dev-b",
                     password=mosquitto.credentials["dev-b"], reconnect=False)
        assert late.connect() and late.subscribe(TOPICS.pubkey)
        assert late.wait(lambda: bool(late.got(TOPICS.pubkey)))
        assert late.got(TOPICS.pubkey)[0] == genuine  # what the broker retains now
        late.close()
        # Quiet afterwards: the echo of its own republication starts nothing new.
        time.sleep(1.0)
        assert watcher.got(TOPICS.pubkey).count(genuine) == 2
    finally:
        _stop(aggregator, thread, [])
    assert caplog.text.count("that this aggregator did not publish") == 1


@pytest.mark.slow
def test_update_sent_while_the_broker_restarts_reaches_the_aggregator(
        tmp_path, mosquitto, proxy, make_aggregator, keypair, fleet_client):
    """Item 11: Mosquitto restarts inside round 1 (no persistence: sessions and
    retained messages are gone). dev-c publishes its update while the broker is
    down; paho delivers it after dev-c's reconnect, before the aggregator is back,
    so nobody is subscribed and it is lost. The aggregator's announcement after its
    reconnect must make dev-c send it again (a republished round with the same
    ``issued_at`` did not)."""
    aggregator = _aggregator(mosquitto, make_aggregator, keypair, proxy.port, rounds=1,
                             quorum=3, min_agents=3, round_timeout=20.0, max_extensions=0)
    thread, out = run_in_thread(aggregator.run)
    # The agents' link too, so that none reconnects before the witness listens.
    agents_link = TcpProxy(mosquitto.port)
    agents = _start_agents(mosquitto, keypair, straggle={"dev-c": 3.0}, port=agents_link.port)
    try:
        wait_until(lambda: len(aggregator.checkpoints.load_updates()) == 2,
                   "dev-a's and dev-b's updates", timeout=30)
        proxy.cut()  # the aggregator stays away until dev-c's update has passed
        agents_link.cut()
        assert mosquitto.process is not None and mosquitto.conf is not None
        mosquitto.process.terminate()
        mosquitto.process.wait(10)
        dev_c = agents[2][0]
        wait_until(lambda: dev_c._memory.sent is not None, "dev-c to publish into the void")
        with running_mosquitto(mosquitto.conf, mosquitto.port, tmp_path / "mosquitto-2.log"):
            witness = fleet_client(mosquitto.port, "auditor", mosquitto.credentials["auditor"])
            assert witness.subscribe(TOPICS.update("dev-c"))
            agents_link.restore()
            assert witness.wait(lambda: bool(witness.got(TOPICS.update("dev-c"))), 30)
            proxy.restore()
            thread.join(60)
            assert not thread.is_alive(), "the aggregator did not finish"
    finally:
        _stop(aggregator, thread, agents)
        agents_link.close()
    assert "error" not in out, out.get("error")
    (result,) = aggregator.results
    assert result.closed_by == "all" and sorted(result.reported) == sorted(AGENTS)
