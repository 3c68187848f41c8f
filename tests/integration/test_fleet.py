"""Whole fleets over a real embedded amqtt broker on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest
from support import (
    agent_config,
    agent_process,
    local_data,
    run_in_thread,
    signer_for,
    wait_until,
)

from fedmq.aggregator.fedavg import weighted_average
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import encrypt_ints, generate_keypair
from fedmq.protocol.layout import contract_digest, layout_for
from fedmq.protocol.messages import RoundMessage
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import MAGIC, UpdateMessage, decode_update, encode_update
from fedmq.runtime.transport import MqttLink, MqttSettings

TOPICS = Topics("test")


class Sniffer:
    """A plain MQTT client watching the fleet, as anyone on the broker could."""

    def __init__(self, port: int) -> None:
        self.rounds: dict[int, RoundMessage] = {}
        self.updates: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.link = MqttLink(MqttSettings(port=port), client_id="sniffer", on_message=self._on,
                             subscriptions=[(TOPICS.round, 1), (TOPICS.updates_filter, 1)])
        self.link.connect()

    def _on(self, topic: str, payload: bytes) -> None:
        with self.lock:
            if topic == TOPICS.round:
                msg = RoundMessage.from_bytes(payload)
                self.rounds[msg.round_id] = msg
            else:
                self.updates.append((topic, payload))

    def wait_round(self, round_id: int, state: str | None = None,
                   timeout: float = 20.0) -> RoundMessage:
        # One round id carries several announcements (the final evaluation round is then
        # re-announced "finished"), and the aggregator may return before the sniffer
        # has received the last one: wait for the state asked for, not the first seen.
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                msg = self.rounds.get(round_id)
                if msg is not None and (state is None or msg.state == state):
                    return msg
            time.sleep(0.02)
        raise AssertionError(f"round {round_id} was never announced {state or ''}".strip())


@pytest.mark.parametrize("codec", ["packed/1", "per-value/1"])
def test_three_agents_two_rounds_match_plaintext_fedavg(broker_port, make_aggregator,
                                                        start_agents, codec):
    sniffer = Sniffer(broker_port)
    agents = start_agents(broker_port, 3)
    params = CodecParams(name=codec, clip=2.0)
    aggregator = make_aggregator(broker_port, codec=params, rounds=2, quorum=3, min_agents=3)
    final = aggregator.run()

    assert [r.closed_by for r in aggregator.results] == ["all", "all"]
    finished = sniffer.wait_round(3, "finished")
    np.testing.assert_array_equal(finished.params_array, final)
    clip = aggregator.config.codec.clip
    for r in (1, 2):
        updates = [a.history[r] for a in agents]
        expected = weighted_average([np.clip(u.delta, -clip, clip) for u in updates],
                                    [u.weight for u in updates])
        published = sniffer.wait_round(r + 1).params_array - sniffer.wait_round(r).params_array
        # Encrypted FedAvg equals numpy's up to the codec's declared resolution.
        np.testing.assert_allclose(published, expected, rtol=0, atol=params.resolution)
        assert np.linalg.norm(expected) > 1e-3  # the agents really learned something
    assert aggregator.results[-1].total_weight == sum(a.data.n_samples for a in agents)

    # What the broker carries is ciphertext: binary, fixed length, nothing readable.
    # Two training rounds and the final evaluation, three agents each.
    # Each reached the aggregator; the sniffer's copies may still be on their way.
    wait_until(lambda: len(sniffer.updates) >= 9, "the sniffer to see every update", timeout=10)
    assert len(sniffer.updates) == 9
    for _topic, payload in sniffer.updates:
        assert payload.startswith(MAGIC)
        msg = decode_update(payload, aggregator.public_key)
        phase = "training" if msg.round_id <= 2 else "evaluation"
        # Training: the weighted delta and weight (1 packed ciphertext, or 4 parameters +
        # the weight one per ciphertext) and the evaluation sums (packed); evaluation: those.
        per_update = layout_for(phase, aggregator.spec, params, aggregator.config.statistics,
                                aggregator.public_key.n).plaintext_count()
        assert per_update == {("training", "packed/1"): 3, ("training", "per-value/1"): 7,
                              ("evaluation", "packed/1"): 2,
                              ("evaluation", "per-value/1"): 2}[phase, codec]
        assert len(msg.ciphertexts) == per_update
        assert all(c > aggregator.public_key.n for c in msg.ciphertexts)
        # The only plaintext is the routing header: no weight, no values, no loss
        # (the agent's public signing key: so the gateway can say "enrolled with another key";
        # its attestation: what a relay forwards so the top can check the device sent it).
        header_len = int.from_bytes(payload[5:7], "big")
        header = json.loads(payload[7:7 + header_len])
        assert set(header) == {"schema", "fleet", "run", "round", "agent", "key", "codec",
                               "values", "count", "size", "signer", "attest"}
        assert len(payload) == 7 + header_len + per_update * 128 + 64  # + Ed25519 signature


def test_malformed_and_foreign_payloads_do_not_stop_the_round(broker_port, make_aggregator,
                                                              start_agents):
    start_agents(broker_port, 2)
    aggregator = make_aggregator(broker_port, rounds=2, quorum=2, min_agents=2)
    thread, out = run_in_thread(aggregator.run)
    attacker = MqttLink(MqttSettings(port=broker_port), client_id="attacker",
                        on_message=lambda *_: None)
    attacker.connect()
    other_pub, _ = generate_keypair(512)
    foreign = encode_update(UpdateMessage(
        fleet="test", run_id="r", round_id=1, agent_id="agent-0", key_fingerprint="0" * 64,
        codec_digest=contract_digest(CodecParams(), StatsParams(), "0" * 64), n_values=5,
        ciphertexts=tuple(encrypt_ints(other_pub, [1] * 5))), other_pub, signer_for("agent-0"))
    garbage = [b"", b"hello", b"FMQU\x01\xff\xff", MAGIC + bytes(500), foreign]
    while thread.is_alive():
        for payload in garbage:
            attacker.publish(TOPICS.update("agent-0"), payload, wait=False)
            attacker.publish(TOPICS.update("mallory"), payload, wait=False)
        time.sleep(0.02)
    attacker.close()
    thread.join()
    assert "error" not in out, out.get("error")
    assert [len(r.reported) for r in aggregator.results] == [2, 2]
    assert sum(r.rejected for r in aggregator.results) > 0


def test_agent_killed_mid_round_does_not_stall_the_fleet(tmp_path, broker_port,
                                                         make_aggregator, start_agents):
    sniffer = Sniffer(broker_port)
    start_agents(broker_port, 2)
    proc = agent_process(tmp_path, broker_port, "agent-9", 9, straggle=60, n_samples=80)
    try:
        aggregator = make_aggregator(broker_port, rounds=2, quorum=2, min_agents=3,
                                     round_timeout=3.0)
        thread, out = run_in_thread(aggregator.run)
        sniffer.wait_round(1)
        time.sleep(0.5)  # the process agent is now training (slowly) inside round 1
        assert proc.poll() is None, (tmp_path / "agent-9.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        thread.join(40)
        assert not thread.is_alive(), "the fleet stalled"
        assert "error" not in out, out.get("error")
    finally:
        if proc.poll() is None:
            proc.kill()
    first, second = aggregator.results
    assert first.expected == 3 and len(first.reported) == 2 and first.closed_by == "deadline"
    assert first.seconds >= 3.0
    # The broker published the killed agent's Last Will; round 2 no longer waits for it.
    assert second.expected == 2 and second.closed_by == "all"
    assert "agent-9" not in first.reported
    assert aggregator.online.get("agent-9") is False


def test_late_update_for_closed_round_is_dropped(broker_port, make_aggregator):
    """A round-1 update replayed during round 2 is logged and dropped, not summed."""
    sniffer = Sniffer(broker_port)
    agents = [EdgeAgent(agent_config(broker_port, "agent-0"), data=local_data(0, 50)),
              EdgeAgent(agent_config(broker_port, "agent-1", straggle_seconds=1.5),
                        data=local_data(1, 60))]
    threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
    for t in threads:
        t.start()
    try:
        aggregator = make_aggregator(broker_port, rounds=2, quorum=2, min_agents=2)
        thread, out = run_in_thread(aggregator.run)
        sniffer.wait_round(2)
        with sniffer.lock:
            round1 = next(p for t, p in sniffer.updates if t == TOPICS.update("agent-0"))
        replayer = MqttLink(MqttSettings(port=broker_port), client_id="replayer",
                            on_message=lambda *_: None)
        replayer.connect()
        replayer.publish(TOPICS.update("agent-0"), round1)
        replayer.close()
        thread.join(30)
        assert "error" not in out, out.get("error")
    finally:
        for a in agents:
            a.stop()
    first, second = aggregator.results
    assert first.rejected == 0 and second.rejected == 1 and len(second.reported) == 2
    assert second.total_weight == 110


def test_agent_with_other_pinned_key_never_sends(broker_port, make_aggregator, start_agents):
    sniffer = Sniffer(broker_port)
    start_agents(broker_port, 1)
    pinned = EdgeAgent(agent_config(broker_port, "pinned", key_fingerprint="ab" * 32),
                       data=local_data(5, 50))
    thread = threading.Thread(target=pinned.run, daemon=True)
    thread.start()
    try:
        aggregator = make_aggregator(broker_port, rounds=2, quorum=1, min_agents=2,
                                     round_timeout=1.0)
        aggregator.run()
    finally:
        pinned.stop()
        thread.join(5)
    assert not pinned.history and pinned.final_params is None
    assert all(t != TOPICS.update("pinned") for t, _ in sniffer.updates)
    assert [r.reported for r in aggregator.results] == [("agent-0",), ("agent-0",)]


def test_agent_joining_after_the_fleet_finished_waits_for_a_new_run(broker_port,
                                                                     make_aggregator,
                                                                     start_agents):
    start_agents(broker_port, 1)
    make_aggregator(broker_port, rounds=1).run()  # leaves "finished" retained
    late = EdgeAgent(agent_config(broker_port, "late"), data=local_data(3, 40))
    thread = threading.Thread(target=late.run, daemon=True)
    thread.start()
    time.sleep(1.0)
    assert thread.is_alive() and late.final_params is None
    late.stop()
    thread.join(5)


def test_an_update_lost_on_the_way_is_sent_again_when_the_round_is_extended(
        broker_port, make_aggregator, start_agents):
    """A full broker queue (Mosquitto drops beyond max_queued_*) or any drop loses an
    honest update; the agent will not send again unless the round is announced
    again. Extending the deadline re-announces it, so the round closes with it
    instead of failing after its extensions (black-box review of issue 8)."""
    start_agents(broker_port, 2)
    aggregator = make_aggregator(broker_port, rounds=1, quorum=2, min_agents=2,
                                 round_timeout=2.0, max_extensions=2)
    admit, lost = aggregator._admit, []

    def lose_first_update_of_agent_1(topic: str, payload: bytes) -> None:
        if topic.endswith("/update/agent-1") and not lost:
            lost.append(payload)
            return
        admit(topic, payload)

    aggregator._admit = lose_first_update_of_agent_1
    thread, out = run_in_thread(aggregator.run)
    thread.join(30)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    assert lost, "nothing was lost: the test did not test anything"
    (result,) = aggregator.results
    assert sorted(result.reported) == ["agent-0", "agent-1"]
    assert result.closed_by == "all"
