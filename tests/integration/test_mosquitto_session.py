"""The aggregator's MQTT session against attacks and faults, on a real Mosquitto.

The broker is configured by ``fedmq broker mosquitto-config`` as on a gateway
(``use_username_as_clientid``, no anonymous logins). The aggregator reaches it
through a TcpProxy so a test can drop its link like a flaky network would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from mqtt_support import Mosquitto, Probe, TcpProxy, generated_mosquitto
from support import (
    AGGREGATOR_SIGNER,
    EnrolledFleet,
    agent_config,
    local_data,
    run_in_thread,
    wait_until,
)

from aggregator.service import Aggregator
from edge_agent.agent import EdgeAgent
from protocol.paillier import fingerprint
from protocol.topics import Topics

TOPICS = Topics("test")
AGENTS = ("dev-a", "dev-b", "dev-c")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with generated_mosquitto(tmp_path, TOPICS.fleet, AGENTS, ("aggregator",)) as broker:
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
        pins = {"key_fingerprint": fingerprint(keypair[0]),
                "aggregator_signing_key": AGGREGATOR_SIGNER.public_hex}
        for i, name in enumerate(AGENTS):
            agent = EdgeAgent(replace(agent_config(mosquitto.port, name, **pins),
                                      mqtt=mosquitto.login(name)), data=local_data(i, 50))
            agents.append((agent, threading.Thread(target=agent.run, daemon=True)))
            agents[-1][1].start()
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
