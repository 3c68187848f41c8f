"""The agent in every phase of a run, against a real broker and a hand-driven aggregator.

The test plays the aggregator with a raw MQTT client: it announces the key and
signed rounds, then decrypts the update the agent sent with the private key and
checks each section against the protocol functions on the agent's own rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from mqtt_support import Probe
from support import AGGREGATOR_SIGNER, SPEC, agent_config, local_data, signer_for, wait_until

from fedmq.edge_agent.agent import EdgeAgent
from fedmq.edge_agent.trainer import train_round
from fedmq.models import make_model
from fedmq.protocol.crypto.codec import CodecParams, quantize_update
from fedmq.protocol.crypto.paillier import decrypt_ints, fingerprint
from fedmq.protocol.layout import layout_for
from fedmq.protocol.messages import PubKeyMessage, RoundMessage, TrainingSettings
from fedmq.protocol.sums.evaluation import local_evaluation
from fedmq.protocol.sums.statistics import StatsParams, local_statistics
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import decode_update

TOPICS = Topics("test")
UPDATES = TOPICS.update("pi-1")
STATS = StatsParams(fraction_bits=20, max_abs=1e4, max_samples=1000, max_agents=10)
CODEC = CodecParams()
ROUNDS = 1  # the final evaluation is round ROUNDS + 1
PARAMS = np.linspace(-0.4, 0.6, SPEC.n_params)


class Gateway:
    """The aggregator's side, by hand: announce, read back, decrypt."""

    def __init__(self, port: int, keypair: Any) -> None:
        self.public, self.private = keypair
        self.announced = PubKeyMessage(
            fleet="test", n_hex=format(self.public.n, "x"), fingerprint=fingerprint(self.public),
            codec=CODEC, signing_key=AGGREGATOR_SIGNER.public_hex, statistics=STATS)
        self.probe = Probe(port, "hand-aggregator")
        assert self.probe.connect() and self.probe.subscribe(UPDATES)
        self.probe.publish(TOPICS.pubkey, self.announced.to_bytes(AGGREGATOR_SIGNER),
                           retain=True)

    def announce(self, state: str, round_id: int, **kw: Any) -> RoundMessage:
        unscaled = state == "statistics"
        fields: dict[str, Any] = {
            "fleet": "test", "round_id": round_id, "model_version": 0 if unscaled else round_id,
            "state": state, "spec": replace(SPEC, center=None, scale=None) if unscaled else SPEC,
            "params": tuple(np.zeros(SPEC.n_params) if unscaled else PARAMS),
            "deadline": time.time() + 60, "run_id": "run1",
            "settings": TrainingSettings(epochs=2, batch_size=8, learning_rate=0.1),
            "key_fingerprint": self.announced.fingerprint,
            "codec_digest": self.announced.contract_digest, **kw}
        msg = RoundMessage(**fields)
        self.probe.publish(TOPICS.round, msg.to_bytes(AGGREGATOR_SIGNER), retain=True)
        return msg

    def sent(self, count: int) -> list[bytes]:
        wait_until(lambda: len(self.probe.got(UPDATES)) >= count, f"update #{count}")
        return self.probe.got(UPDATES)

    def sections(self, payload: bytes, msg: RoundMessage) -> list[list[int]]:
        update = decode_update(payload, self.public)
        update.verify(signer_for("pi-1").public_key)  # signed by the device
        assert (update.run_id, update.round_id) == (msg.run_id, msg.round_id)
        assert update.codec_digest == self.announced.contract_digest
        layout = layout_for(msg.state, msg.spec, CODEC, STATS, self.public.n)
        assert update.n_values == layout.n_values
        return layout.decode(decrypt_ints(self.private, update.ciphertexts), 1)


@pytest.fixture
def fleet(broker_port: int, keypair: Any) -> Iterator[tuple[Gateway, EdgeAgent]]:
    gateway = Gateway(broker_port, keypair)
    agent = EdgeAgent(agent_config(broker_port, "pi-1", holdout=0.25),
                      data=local_data(5, 80))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        yield gateway, agent
    finally:
        agent.stop()
        thread.join(5)
        gateway.probe.close()


def test_each_phase_sends_its_sections_and_resends_the_same_bytes(fleet, caplog):
    caplog.set_level(logging.INFO, logger="fedmq.edge_agent.agent")
    gateway, agent = fleet
    train, held = agent.train_data, agent.eval_data
    assert (train.n_samples, held.n_samples) == (60, 20)

    # Round 0: statistics of the training rows, for a spec without center/scale.
    stats_round = gateway.announce("statistics", 0)
    (first,) = gateway.sent(1)
    assert gateway.sections(first, stats_round) == [
        local_statistics(train.X, train.y, stats_round.spec, STATS).values]
    # Announced again (an aggregator restart): the same signed bytes, nothing recomputed.
    gateway.announce("statistics", 0)
    assert gateway.sent(2)[1] == first

    # Round 1: the trained delta, and the RECEIVED model evaluated on the held-out rows.
    training = gateway.announce("training", 1)
    payload = gateway.sent(3)[2]
    trained, evaluated = gateway.sections(payload, training)
    update = train_round(training, train, max_weight=CODEC.max_weight, seed=1)
    values, clipped = quantize_update(update.delta, update.weight, CODEC)
    received = make_model(SPEC).set_params_vector(PARAMS)
    assert trained == values and trained[-1] == 60
    assert evaluated == local_evaluation(received, held.X, held.y, STATS, clipped_train=clipped)
    assert sorted(agent.history) == [1]  # only training rounds keep a plaintext update

    # The final evaluation: only the evaluation section, no training.
    final = gateway.announce("evaluation", ROUNDS + 1)
    last = gateway.sent(4)[3]
    assert gateway.sections(last, final) == [
        local_evaluation(received, held.X, held.y, STATS, clipped_train=0)]
    gateway.announce("evaluation", ROUNDS + 1)
    assert gateway.sent(5)[4] == last
    assert sorted(agent.history) == [1]

    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round ")]
    assert [line.split(":")[0] for line in lines if "announced again" not in line] == [
        "round 0 (statistics)", "round 1 (training)", "round 2 (evaluation)"]
    assert "sums of 60 training rows" in lines[0]
    assert "received model evaluated on 20 rows" in lines[2]


def test_a_device_whose_labels_the_model_has_no_class_for_skips_the_statistics_round(
        broker_port, keypair):
    gateway = Gateway(broker_port, keypair)
    data = local_data(5, 40)
    agent = EdgeAgent(agent_config(broker_port, "pi-1"), data=replace(data, y=data.y + 2))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        gateway.announce("statistics", 0)
        skipped = wait_until(lambda: agent._status._skipped, "the skip")
        assert (skipped.round_id, skipped.code) == (0, "class-outside-model")
        assert not gateway.probe.got(UPDATES)
    finally:
        agent.stop()
        thread.join(5)
        gateway.probe.close()
