"""Two relays on two embedded brokers, each with its devices, the top aggregator on a third.

Real MQTT on 127.0.0.1, real Paillier (512 bits), real agents on threads. The
reference is the same fleet (same ids, data and seeds) behind one gateway.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from support import AGGREGATOR_SIGNER, EnrolledFleet, signer_for, wait_until

from fedmq.aggregator.service import Aggregator
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.topics import Topics
from fedmq.relay.config import RelayConfig
from fedmq.relay.service import Relay
from fedmq.runtime.transport import MqttSettings

SUBTREES = {"relay-a": (0, 3), "relay-b": (3, 2)}  # relay -> (first seed, devices)
DEVICES = 5
RELAYS = {r: signer_for(r).public_key for r in SUBTREES}


@pytest.fixture
def brokers() -> Iterator[dict[str, int]]:
    with ExitStack() as stack:
        ports = {}
        for name in ("top", *SUBTREES):
            ports[name] = free_port()
            stack.enter_context(EmbeddedBroker(BrokerSettings(port=ports[name])))
        yield ports


def start_relay(relay_id: str, ports: dict[str, int], tmp_path: Any,
                started: list[tuple[Relay, threading.Thread]]) -> Relay:
    config = RelayConfig(
        relay_id=relay_id, aggregator_signing_key=AGGREGATOR_SIGNER.public_hex,
        signing_key_file=str(tmp_path / f"{relay_id}.key"),
        allow_list_file=str(tmp_path / "unused.json"),
        upstream=MqttSettings(port=ports["top"]), local=MqttSettings(port=ports[relay_id]),
        upstream_topics=Topics("test"), local_topics=Topics("test"),
        min_devices=SUBTREES[relay_id][1], margin_seconds=1.0)
    relay = Relay(config, signer=signer_for(relay_id), allow_list=EnrolledFleet())
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    started.append((relay, thread))
    return relay


@pytest.fixture
def relays() -> Iterator[list[tuple[Relay, threading.Thread]]]:
    started: list[tuple[Relay, threading.Thread]] = []
    yield started
    for relay, thread in started:
        relay.stop()
        thread.join(5)


def top_aggregator(made: Aggregator, port: int, tmp_path: Any, **policy: Any) -> Aggregator:
    """``made`` (conftest's make_aggregator) on the top broker, relays enrolled."""
    cfg = made.config
    return Aggregator(replace(cfg, mqtt=MqttSettings(port=port), state_dir=str(tmp_path / "top"),
                              policy=replace(cfg.policy, **policy)),
                      keypair=(made.public_key, made._private_key), signer=AGGREGATOR_SIGNER,
                      allow_list=EnrolledFleet(), relays=RELAYS, on_round=made._on_round)


def _fleet_behind_relays(brokers, start_agents, relays, tmp_path) -> dict[str, Relay]:
    out = {}
    for relay_id, (first, n) in SUBTREES.items():
        out[relay_id] = start_relay(relay_id, brokers, tmp_path, relays)
        start_agents(brokers[relay_id], n, first_seed=first)
    return out


@pytest.mark.slow
def test_two_relays_give_the_single_gateway_result(brokers, broker_port, make_aggregator,
                                                   start_agents, relays, tmp_path):
    codec = CodecParams(clip=2.0, max_agents=16)
    # The reference: the same five devices behind one gateway.
    for first, n in SUBTREES.values():  # the same calls: the same data per device
        start_agents(broker_port, n, first_seed=first)
    single = make_aggregator(broker_port, codec, rounds=2, quorum=DEVICES, min_agents=DEVICES)
    expected = single.run()

    _fleet_behind_relays(brokers, start_agents, relays, tmp_path)
    top = top_aggregator(single, brokers["top"], tmp_path, min_agents=2)
    final = top.run()

    # The grand total is the same integer sum, decrypted once: the same model, bit for bit
    # (the "within the codec resolution" holds a fortiori).
    np.testing.assert_array_equal(final, expected)
    assert np.linalg.norm(final) > 1e-3
    devices = tuple(f"agent-{i}" for i in range(DEVICES))
    for result, reference in zip(top.results, single.results, strict=True):
        assert tuple(sorted(result.reported)) == devices  # devices, never relay ids
        assert result.closed_by == "all"
        assert result.total_weight == reference.total_weight
    with open(top.store.log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["reported"] for row in rows] == [str(DEVICES)] * len(rows)  # evaluation too


@pytest.mark.slow
def test_a_stopped_relay_costs_only_its_subtree(brokers, make_aggregator, start_agents,
                                                relays, tmp_path):
    behind = _fleet_behind_relays(brokers, start_agents, relays, tmp_path)

    def on_round(result: Any) -> None:
        if result.phase == "training" and result.round_id == 1:
            behind["relay-b"].kill()  # its Last Will says offline upstream

    made = make_aggregator(brokers["top"], CodecParams(max_agents=16), rounds=2, quorum=2,
                           min_agents=2, round_timeout=6.0, on_round=on_round)
    top = top_aggregator(made, brokers["top"], tmp_path)
    top.run()
    first, second = top.results
    assert sorted(first.reported) == [f"agent-{i}" for i in range(DEVICES)]
    assert sorted(second.reported) == ["agent-0", "agent-1", "agent-2"]  # relay-a's subtree
    assert second.model_version == 2
    wait_until(lambda: behind["relay-a"].forwarded, "relay-a's partial sums")
