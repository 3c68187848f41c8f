"""A whole federated run on a real Mosquitto, configured by ``fedmq broker mosquitto-config``.

The broker's mosquitto.conf, password file (PBKDF2 hashes) and ``%u`` pattern ACL
are written by the CLI command an operator runs; the aggregator and in-process
edge agents log in with the passwords it generated, exactly as they would on a
gateway. Skips without Mosquitto, unless FEDMQ_REQUIRE_MOSQUITTO=1 (set by
.ci/run) turns the skip into a failure, as in tests/broker/test_mosquitto.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from mqtt_support import FleetClient, Mosquitto, generated_mosquitto, signed_round
from support import (
    AGGREGATOR_SIGNER,
    SPEC,
    EnrolledFleet,
    agent_config,
    local_data,
    run_in_thread,
    signer_for,
    wait_until,
)

from fedmq.aggregator.fedavg import weighted_average
from fedmq.aggregator.service import Aggregator
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.crypto.codec import CodecParams, make_codec, quantize_update
from fedmq.protocol.crypto.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    encrypt_ints,
    fingerprint,
)
from fedmq.protocol.layout import contract_digest
from fedmq.protocol.messages import RoundMessage, StatusMessage
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import MAGIC, UpdateMessage, decode_update, encode_update

TOPICS = Topics("test")
AGENTS = ("dev-a", "dev-b", "dev-c")
CODEC = CodecParams(clip=2.0)
ROUNDS = 2


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """``fedmq broker mosquitto-config`` for the fleet, then ``mosquitto -c`` on a free port.

    Users: the aggregator, an ``auditor`` with the aggregator's rights (a witness:
    Mosquitto sets each client id to its user name, so a second client of the
    same user would take the aggregator's session over), the agents and mallory,
    an authenticated agent that takes no part in training.
    """
    with generated_mosquitto(tmp_path, TOPICS.fleet, (*AGENTS, "mallory"),
                             ("aggregator", "auditor")) as broker:
        yield broker


@dataclass
class Run:
    aggregator: Aggregator
    agents: list[EdgeAgent]
    rounds: dict[int, RoundMessage]  # as published, 1..ROUNDS + the final announcement


def run_fleet(broker: Mosquitto, make_aggregator: Callable[..., Aggregator],
              keypair: tuple[PaillierPublicKey, PaillierPrivateKey], watcher: FleetClient,
              *, during_round_1: Callable[[RoundMessage], None] | None = None,
              straggle: float = 0.0) -> Run:
    """Agents and aggregator logged in with their generated passwords, ``ROUNDS`` rounds.

    ``watcher`` (an agent's user, subscribed to the round topic) sees the
    announcements; ``during_round_1`` runs once round 1 is announced.
    """
    public = keypair[0]
    pins = {"key_fingerprint": fingerprint(public),
            "aggregator_signing_key": AGGREGATOR_SIGNER.public_hex}
    agents = [EdgeAgent(replace(agent_config(broker.port, name, **pins,
                                             straggle_seconds=straggle if i == 2 else 0.0),
                                mqtt=broker.login(name)), data=local_data(i, 40 + 15 * i))
              for i, name in enumerate(AGENTS)]
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for t in threads:
        t.start()
    config = make_aggregator(broker.port, codec=CODEC, rounds=ROUNDS, quorum=len(AGENTS),
                             min_agents=len(AGENTS)).config
    aggregator = Aggregator(replace(config, mqtt=broker.login("aggregator")), keypair=keypair,
                            signer=AGGREGATOR_SIGNER, allow_list=EnrolledFleet())
    thread, out = run_in_thread(aggregator.run)
    try:
        if during_round_1 is not None:
            during_round_1(signed_round(watcher, TOPICS, 1))
        thread.join(30)
        assert not thread.is_alive(), "the aggregator did not finish"
        assert "error" not in out, out.get("error")
        rounds = {r: signed_round(watcher, TOPICS, r) for r in range(1, ROUNDS + 1)}
        rounds[ROUNDS + 1] = signed_round(watcher, TOPICS, ROUNDS + 1, state="finished")
        # The watcher may see "finished" before the agents handled it: stopping them now
        # would race their last message.
        wait_until(lambda: all(a.final_params is not None for a in agents),
                   "every agent to take the final model", timeout=15)
    finally:
        aggregator.stop()
        for a in agents:
            a.stop()
        for t in (*threads, thread):
            t.join(5)
    return Run(aggregator, agents, rounds)


def assert_plaintext_fedavg(run: Run) -> None:
    """Each published step equals numpy FedAvg of the agents' clipped updates."""
    results, clip = run.aggregator.results, CODEC.clip
    assert [r.closed_by for r in results] == ["all"] * ROUNDS
    for r in range(1, ROUNDS + 1):
        updates = [a.history[r] for a in run.agents]
        expected = weighted_average([np.clip(u.delta, -clip, clip) for u in updates],
                                    [u.weight for u in updates])
        before, after = run.rounds[r].params_array, run.rounds[r + 1].params_array
        np.testing.assert_array_equal(after, results[r - 1].params)
        np.testing.assert_allclose(after - before, expected, rtol=0, atol=CODEC.resolution)
        assert np.linalg.norm(expected) > 1e-3  # the agents really learned something
        assert sorted(results[r - 1].reported) == sorted(AGENTS)
        assert results[r - 1].total_weight == sum(u.weight for u in updates)
    finished = run.rounds[ROUNDS + 1]
    assert finished.state == "finished"
    for agent in run.agents:
        assert agent.final_params is not None
        np.testing.assert_array_equal(agent.final_params, finished.params_array)


def test_two_rounds_over_mosquitto_match_plaintext_fedavg(mosquitto, fleet_client,
                                                          make_aggregator, keypair):
    auditor = fleet_client(mosquitto.port, "auditor", mosquitto.credentials["auditor"])
    assert auditor.subscribe(TOPICS.updates_filter) and auditor.subscribe(TOPICS.status_filter)
    watcher = fleet_client(mosquitto.port, "mallory", mosquitto.credentials["mallory"])
    assert watcher.subscribe(TOPICS.round)

    run = run_fleet(mosquitto, make_aggregator, keypair, watcher)

    assert_plaintext_fedavg(run)
    assert [r.rejected for r in run.aggregator.results] == [0] * ROUNDS
    # Every update crossed Mosquitto on its agent's own topic, signed by that agent.
    public = keypair[0]
    for agent in AGENTS:  # each training round, and the final evaluation (ROUNDS + 1)
        assert auditor.wait(lambda a=agent: len(auditor.got(TOPICS.update(a))) == ROUNDS + 1)
        payloads = auditor.got(TOPICS.update(agent))
        for r, payload in enumerate(payloads, 1):
            assert payload.startswith(MAGIC)
            msg = decode_update(payload, public)
            assert (msg.agent_id, msg.round_id) == (agent, r)
            msg.verify(signer_for(agent).public_key)
        def states(a: str = agent) -> list[str]:
            return [StatusMessage.from_bytes(p).state for p in auditor.got(TOPICS.status(a))]
        assert auditor.wait(lambda: states()[-1:] == ["offline"])  # said goodbye when done
        assert states()[0] == "online"


def test_agent_publishing_on_another_agents_topic_is_dropped_by_mosquitto(
        mosquitto, fleet_client, make_aggregator, keypair):
    """mallory, an authenticated agent that even holds dev-b's signing key, tries to
    stand in for dev-b during round 1. Only Mosquitto's ``%u`` ACL stands in the way:
    delivered, the forged update would replace dev-b's genuine one (or be rejected as
    a second update), and the forged "offline" status would drop dev-b from round 2.
    """
    public = keypair[0]
    auditor = fleet_client(mosquitto.port, "auditor", mosquitto.credentials["auditor"])
    assert auditor.subscribe(TOPICS.updates_filter) and auditor.subscribe(TOPICS.status_filter)
    mallory = fleet_client(mosquitto.port, "mallory", mosquitto.credentials["mallory"])
    assert mallory.subscribe(TOPICS.round)
    forged: dict[str, bytes] = {}

    def attack(rnd: RoundMessage) -> None:
        fp = fingerprint(public)
        values, _ = quantize_update(np.full(SPEC.n_params, CODEC.clip), CODEC.max_weight, CODEC)
        forged["update"] = encode_update(UpdateMessage(
            fleet=rnd.fleet, run_id=rnd.run_id, round_id=rnd.round_id, agent_id="dev-b",
            key_fingerprint=fp,
            codec_digest=contract_digest(CODEC, StatsParams(), fp), n_values=len(values),
            ciphertexts=tuple(encrypt_ints(public, make_codec(CODEC, public.n).encode(values)))),
            public, signer_for("dev-b"))
        forged["status"] = StatusMessage(agent_id="dev-b", state="offline").to_bytes()
        mallory.publish(TOPICS.update("dev-b"), forged["update"])
        mallory.publish(TOPICS.status("dev-b"), forged["status"], retain=True)
        # Positive control on mallory's own topic, sent last on the same connection:
        # once the auditor has it, Mosquitto has decided on both forgeries.
        control = StatusMessage(agent_id="mallory", state="offline").to_bytes()
        mallory.publish(TOPICS.status("mallory"), control)
        assert auditor.wait(lambda: control in auditor.got(TOPICS.status("mallory")))

    # dev-c straggles a little so that round 1 is still open when mallory strikes
    # (what is asserted holds either way: a forgery delivered later is seen too).
    run = run_fleet(mosquitto, make_aggregator, keypair, mallory, during_round_1=attack,
                    straggle=0.3)

    assert forged["update"] not in auditor.got(TOPICS.update("dev-b"))
    assert forged["status"] not in auditor.got(TOPICS.status("dev-b"))
    results = run.aggregator.results
    assert [r.rejected for r in results] == [0] * ROUNDS  # the aggregator never saw it
    assert [r.expected for r in results] == [len(AGENTS)] * ROUNDS  # dev-b stayed in
    assert_plaintext_fedavg(run)  # the round result is unchanged
    # Nor did mallory read anything beyond its own rights.
    assert {topic for topic, _ in mallory.received} == {TOPICS.round}
