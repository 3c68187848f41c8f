"""Attacks during a real round: each one is rejected and the round's result does not move.

Every test runs a fleet on the embedded amqtt broker with logins and the topic ACL
on (as tests/broker/test_acl.py::test_a_fleet_round_runs_under_the_acl): the
aggregator and two in-process edge agents (dev-a, dev-b) logged in as their users,
and dev-c, a scripted honest device. dev-c publishes its correctly encrypted and
signed update only after the aggregator dealt with the attack (logged its
rejection, or, for what the broker stops, after a positive control), so a round
cannot close before the attack is handled and every attack lands in the round it
targets. Each test then asserts

(a) the attack was rejected: the aggregator's ``rejected`` count for that round and
    the logged reason; for what the broker stops, that a client with the
    aggregator's read rights never received it and the aggregator rejected nothing;
(b) the round result is unchanged: the published model moved by exactly the
    plaintext FedAvg of ONLY the honest updates (the agents' clipped
    ``history[r].delta`` with their weights, dev-c's clipped delta), within the
    codec's resolution, with every honest update counted.

Attacks tried: 17 cases. 16 are rejected with the round unchanged, 1 is a known
limitation.

Forged updates:
   1. ``forged-signature``: enrolled id dev-b (attacker holds dev-b's broker password),
      signed with a wrong Ed25519 key.
   2. ``other-paillier-key``: dev-b's genuine signature, encrypted under another
      Paillier key whose fingerprint the header names.
   3. ``topic-mismatch``: an update naming dev-b and signed with dev-b's key, sent on
      mallory's own topic.
   4. ``unenrolled``: broker user unenrolled-eve, not in the allow-list, with a valid
      self-made key.
Replays of a genuine round-1 update of dev-a, captured by a sniffer with the
aggregator's read rights and sent in round 2 with dev-a's broker password:
   5. ``replay``: byte for byte.
   6. ``rerandomised-replay``: each ciphertext multiplied by an encryption of 0 (same
      plaintext, new bytes), original signature kept.
Stopped by the broker:
   7. authenticated agent mallory publishes a valid dev-b update (signed with dev-b's
      key) on dev-b's update topic: dropped by the ACL;
   8. ... and an "offline" status on dev-b's status topic: dropped by the ACL;
   9. a payload over ``max_payload_bytes``: the connection is dropped, nothing delivered.
Malformed ciphertexts in an otherwise well-formed update correctly signed by enrolled
dev-b (a compromised or buggy device):
  10. zero; 11. exactly n^2; 12. all bytes 0xff (>= n^2); 13. a prime factor of n;
  14. n itself; 15. one byte short (dropped on arrival: not the size the round takes).
Known limitation (see the test's docstring):
  16. compromised dev-c: ciphertexts of another key sent as if under the aggregator's,
      with dev-c's genuine signature. Undetectable before decryption: the sum fails its
      bounds. With only 3 updates no split into two groups of >= 2 devices exists, so the
      round is dropped and the model kept (not poisoned, but the honest updates of that
      round are lost). From 4 updates on the culprit search (aggregator/culprits.py)
      excludes only the culprit's group of 2-3: see
      test_a_compromised_device_in_a_larger_fleet_loses_only_its_group.
Broker bug found by case 17, fixed in broker/amqtt_ext.py:
  17. an authenticated agent must not receive other agents' retained status messages
      just by connecting (amqtt 0.12 hands a new client every retained message that
      matches any client's subscription, without the receive ACL).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mqtt_support import FleetClient, Probe, signed_round
from numpy.typing import NDArray
from pwdlib.hashers.argon2 import Argon2Hasher
from support import (
    AGGREGATOR_SIGNER,
    SPEC,
    EnrolledFleet,
    agent_config,
    local_data,
    run_in_thread,
    signer_for,
    training_plaintexts,
    training_sections,
    wait_until,
)

from fedmq.aggregator.fedavg import weighted_average
from fedmq.aggregator.outcome import RoundResult
from fedmq.aggregator.service import Aggregator
from fedmq.broker.config import MIN_PAYLOAD_CAP, BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.protocol.crypto.codec import CodecParams, quantize_update
from fedmq.protocol.crypto.paillier import (
    PaillierPrivateKey,
    PaillierPublicKey,
    ciphertext_size,
    ciphertexts_to_bytes,
    decrypt_ints,
    encrypt_ints,
    fingerprint,
    generate_keypair,
)
from fedmq.protocol.crypto.signing import SIGNATURE_BYTES, UPDATE_DOMAIN, Signer
from fedmq.protocol.layout import contract_digest, layout_for
from fedmq.protocol.messages import RoundMessage, StatusMessage
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import UpdateMessage, decode_update, encode_update
from fedmq.runtime.transport import MqttSettings

FloatArray = NDArray[np.float64]

TOPICS = Topics("test")
USERS = ("aggregator", "dev-a", "dev-b", "dev-c", "mallory", "unenrolled-eve")
HONEST_AGENTS = ("dev-a", "dev-b")  # in-process EdgeAgents
GATE = "dev-c"  # the scripted honest device that holds each round open
GATE_WEIGHT = 30
GATE_DELTA = np.array([0.4, -0.3, 3.0, 0.05])  # 3.0 is beyond the clip: clipped too
CODEC = CodecParams(clip=2.0)
ROUNDS = 2


def password(user: str) -> str:
    return f"{user}-password"


@pytest.fixture(scope="module")
def password_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The broker's ``user:hash`` file, Argon2 as ``fedmq broker add-user`` writes it.

    With test-sized cost parameters (like the small Paillier keys): the broker
    verifies each login in ~1 ms instead of ~130 ms, and a test logs in six times.
    """
    hasher = Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1)
    path = tmp_path_factory.mktemp("attacks") / "passwords.txt"
    path.write_text("".join(f"{user}:{hasher.hash(password(user))}\n" for user in USERS))
    return path


@pytest.fixture
def acl_broker(password_file: Path) -> Iterator[int]:
    settings = BrokerSettings(port=free_port(), password_file=str(password_file),
                              allow_anonymous=False, acl=True, fleet="test",
                              max_payload_bytes=MIN_PAYLOAD_CAP)
    with EmbeddedBroker(settings):
        yield settings.port


@functools.cache
def other_key() -> PaillierPublicKey:
    """A second 512-bit Paillier key, the aggregator's size: not the fleet's."""
    return generate_keypair(512)[0]


def make_update(rnd: RoundMessage, agent_id: str, signer: Signer, key: PaillierPublicKey, *,
                delta: FloatArray | None = None, weight: int = CODEC.max_weight,
                ciphertexts: Sequence[int] | None = None,
                announced: PaillierPublicKey | None = None) -> bytes:
    """An update for ``rnd`` made the way an agent makes one, encrypted under ``key``.

    The default delta (+clip everywhere, the largest weight) is the strongest legal
    push, so an accepted forgery would move the model visibly. ``ciphertexts``
    replaces the first ciphertexts of the encryption (malformed input: the training
    section's); ``announced`` is the key the header names (default ``key``).
    """
    announced = announced or key
    fp = fingerprint(announced)
    values, _ = quantize_update(np.full(SPEC.n_params, CODEC.clip) if delta is None else delta,
                                weight, CODEC)
    plaintexts, n_values = training_plaintexts(values, key.n, CODEC)
    genuine = encrypt_ints(key, plaintexts)
    ciphertexts = genuine if ciphertexts is None else [
        *ciphertexts, *genuine[len(ciphertexts):]]
    return encode_update(UpdateMessage(
        fleet=rnd.fleet, run_id=rnd.run_id, round_id=rnd.round_id, agent_id=agent_id,
        key_fingerprint=fp,
        codec_digest=contract_digest(CODEC, StatsParams(), fp), n_values=n_values,
        ciphertexts=tuple(ciphertexts)), announced, signer)


def evaluation_update(rnd: RoundMessage, key: PaillierPublicKey) -> bytes:
    """The gate's update for the final evaluation round: one row, class 0 predicted 0."""
    layout = layout_for("evaluation", SPEC, CODEC, StatsParams(), key.n)
    fp = fingerprint(key)
    return encode_update(UpdateMessage(
        fleet=rnd.fleet, run_id=rnd.run_id, round_id=rnd.round_id, agent_id=GATE,
        key_fingerprint=fp, codec_digest=contract_digest(CODEC, StatsParams(), fp),
        n_values=layout.n_values,
        ciphertexts=tuple(encrypt_ints(key, layout.encode([training_sections([1], SPEC)[1]])))),
        key, signer_for(GATE))


def rerandomise(payload: bytes, key: PaillierPublicKey) -> bytes:
    """The same update with each ciphertext times Enc(0): new bytes, same plaintexts."""
    old = decode_update(payload, key).ciphertexts
    fresh = [c * z % key.nsquare for c, z in zip(old, encrypt_ints(key, [0] * len(old)),
                                                 strict=True)]
    start = len(payload) - SIGNATURE_BYTES - ciphertext_size(key) * len(old)
    return payload[:start] + ciphertexts_to_bytes(key, fresh) + payload[-SIGNATURE_BYTES:]


def truncate(payload: bytes, signer: Signer) -> bytes:
    """Drop the last ciphertext byte and sign again, as ``encode_update`` signs."""
    body = payload[:-SIGNATURE_BYTES][:-1]
    return body + signer.sign(UPDATE_DOMAIN, hashlib.sha256(body).digest())


def rejections(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The aggregator's logged rejections so far (records come from its thread too, and
    from paho's thread for payloads admission drops before they are queued)."""
    return [m for r in list(caplog.records) if r.name == "fedmq.aggregator.service"
            and r.levelno >= logging.WARNING
            and (m := r.getMessage()).startswith(("rejected", "dropped"))]


def await_rejections(caplog: pytest.LogCaptureFixture, count: int) -> None:
    wait_until(lambda: len(rejections(caplog)) >= count,
               f"the aggregator to reject {count} update(s)")


@dataclass
class Fleet:
    """What an attack works with: the aggregator's public values and broker logins."""

    aggregator: Aggregator
    private_key: PaillierPrivateKey  # for checks only; no attack uses it to encrypt
    auditor: FleetClient  # the aggregator's user: receives what the aggregator may
    login: Callable[[str, str], FleetClient]  # (user, client id) -> connected client

    @property
    def key(self) -> PaillierPublicKey:
        return self.aggregator.public_key

    def captured(self, agent_id: str, round_id: int) -> bytes:
        """``agent_id``'s genuine update for ``round_id`` as the sniffer saw it."""
        def find() -> bytes | None:
            for payload in self.auditor.got(TOPICS.update(agent_id)):
                if decode_update(payload, self.key).round_id == round_id:
                    return bytes(payload)
            return None
        found: bytes = wait_until(find, f"{agent_id}'s round-{round_id} update")
        return found


Attack = Callable[[Fleet, RoundMessage], list[str]]  # returns the expected rejection reasons


@dataclass
class Outcome:
    results: list[RoundResult]
    rounds: dict[int, RoundMessage]  # as published, 1..ROUNDS + the final announcement
    honest: dict[int, list[tuple[FloatArray, int]]]  # clipped delta and weight per round
    expected: list[str]  # rejection reasons the attack announced
    rejections: list[str]
    errors: list[str]
    auditor: FleetClient


@pytest.fixture
def attacked_fleet(acl_broker: int, fleet_client: Callable[..., FleetClient],
                   make_aggregator: Callable[..., Aggregator],
                   keypair: tuple[PaillierPublicKey, PaillierPrivateKey],
                   caplog: pytest.LogCaptureFixture) -> Callable[..., Outcome]:
    """``run(attack, attack_round=1, gate_update=None)``: a 2-round fleet under attack."""
    port = acl_broker
    public, private = keypair

    def mqtt(user: str) -> MqttSettings:
        return MqttSettings(port=port, username=user, password=password(user),
                            connect_timeout=5)

    def login(user: str, client_id: str) -> FleetClient:
        return fleet_client(port, user, password(user), client_id=client_id)

    def run(attack: Attack, *, attack_round: int = 1,
            gate_update: Callable[[Fleet, RoundMessage], bytes] | None = None) -> Outcome:
        # The witnesses subscribe to every filter the roles use before the roles
        # connect: amqtt 0.12 walks its subscription table while a client connects
        # and drops that client if another one adds a new filter meanwhile.
        auditor = login("aggregator", "auditor")
        assert auditor.subscribe(TOPICS.updates_filter) and auditor.subscribe(TOPICS.status_filter)
        gate = fleet_client(port, GATE, password(GATE), client_id=GATE, will=(
            TOPICS.status(GATE), StatusMessage(agent_id=GATE, state="offline").to_bytes()))
        assert gate.subscribe(TOPICS.round) and gate.subscribe(TOPICS.pubkey)
        gate.publish(TOPICS.status(GATE), StatusMessage(agent_id=GATE, state="online").to_bytes(),
                     retain=True)
        pins = {"key_fingerprint": fingerprint(public),
                "aggregator_signing_key": AGGREGATOR_SIGNER.public_hex}
        agents = [EdgeAgent(replace(agent_config(port, name, **pins), mqtt=mqtt(name)),
                            data=local_data(i, 40 + 15 * i))
                  for i, name in enumerate(HONEST_AGENTS)]
        threads = [threading.Thread(target=a.run, daemon=True) for a in agents]
        for t in threads:
            t.start()
        config = make_aggregator(port, codec=CODEC, rounds=ROUNDS, quorum=3, min_agents=3).config
        aggregator = Aggregator(replace(config, mqtt=mqtt("aggregator")), keypair=keypair,
                                signer=AGGREGATOR_SIGNER, allow_list=EnrolledFleet())
        thread, out = run_in_thread(aggregator.run)
        fleet = Fleet(aggregator, private, auditor, login)
        expected: list[str] = []
        try:
            for r in range(1, ROUNDS + 1):
                rnd = signed_round(gate, TOPICS, r, timeout=20.0)
                assert rnd.key_fingerprint == fingerprint(public)
                payload = make_update(rnd, GATE, signer_for(GATE), public,
                                      delta=GATE_DELTA * r, weight=GATE_WEIGHT)
                if r == attack_round:
                    expected = attack(fleet, rnd)
                    await_rejections(caplog, len(expected))
                    if gate_update is not None:
                        payload = gate_update(fleet, rnd)
                gate.publish(TOPICS.update(GATE), payload)  # now the round may close
            rounds = {r: signed_round(gate, TOPICS, r, timeout=20.0) for r in range(1, ROUNDS + 2)}
            # The final model's evaluation: the gate reports too, so the round closes now.
            assert rounds[ROUNDS + 1].state == "evaluation"
            gate.publish(TOPICS.update(GATE), evaluation_update(rounds[ROUNDS + 1], public))
            thread.join(20)
            assert not thread.is_alive(), "the aggregator did not finish"
            assert "error" not in out, out.get("error")
        finally:
            aggregator.stop()
            for a in agents:
                a.stop()
            for t in (*threads, thread):
                t.join(5)
        clip = CODEC.clip
        honest = {r: [*((np.clip(a.history[r].delta, -clip, clip), a.history[r].weight)
                        for a in agents),
                      (np.clip(GATE_DELTA * r, -clip, clip), GATE_WEIGHT)]
                  for r in range(1, ROUNDS + 1)}
        errors = [rec.getMessage() for rec in list(caplog.records)
                  if rec.name == "fedmq.aggregator.service" and rec.levelno >= logging.ERROR]
        return Outcome(results=list(aggregator.results), rounds=rounds, honest=honest,
                       expected=expected, rejections=rejections(caplog), errors=errors,
                       auditor=auditor)

    return run


def assert_fedavg_of_honest(out: Outcome, round_id: int) -> None:
    """(b): the published step of ``round_id`` is FedAvg of the honest updates alone."""
    result = out.results[round_id - 1]
    assert result.closed_by == "all"
    assert sorted(result.reported) == sorted((*HONEST_AGENTS, GATE))  # every honest one
    deltas, weights = zip(*out.honest[round_id], strict=True)
    expected = weighted_average(deltas, weights)
    before, after = out.rounds[round_id].params_array, out.rounds[round_id + 1].params_array
    np.testing.assert_array_equal(after, result.params)
    np.testing.assert_allclose(after - before, expected, rtol=0, atol=CODEC.resolution)
    assert np.linalg.norm(expected) > 1e-3
    assert result.total_weight == sum(weights)


def assert_rejected_and_unchanged(out: Outcome, attack_round: int) -> None:
    # (a) each expected reason is logged exactly once, nothing else, all in the attacked round
    assert out.expected, "an attack the aggregator sees must name its rejection reasons"
    unmatched = list(out.rejections)
    for reason in out.expected:
        hit = next((m for m in unmatched if reason in m), None)
        assert hit is not None, f"no rejection for {reason!r} in {out.rejections}"
        unmatched.remove(hit)
    assert not unmatched, f"unexpected rejections: {unmatched}"
    assert [r.rejected for r in out.results] == [
        len(out.expected) if r == attack_round else 0 for r in range(1, ROUNDS + 1)]
    assert out.errors == []
    # (b) the model moved only by the honest updates, in every round
    for r in range(1, ROUNDS + 1):
        assert_fedavg_of_honest(out, r)


# --- attacks the aggregator sees and rejects -------------------------------------------

def forged_signature(fleet: Fleet, rnd: RoundMessage) -> list[str]:
    thief = fleet.login("dev-b", "stolen-password")  # dev-b's broker login, not its key
    thief.publish(TOPICS.update("dev-b"), make_update(rnd, "dev-b", Signer.generate(),
                                                      fleet.key))
    # Signed, but not with dev-b's enrolled key: the gateway log names it as such.
    return ["'dev-b' is not enrolled with this key"]


def other_paillier_key(fleet: Fleet, rnd: RoundMessage) -> list[str]:
    device = fleet.login("dev-b", "misconfigured-dev-b")
    device.publish(TOPICS.update("dev-b"), make_update(rnd, "dev-b", signer_for("dev-b"),
                                                       other_key()))
    return ["update was encrypted for another public key"]


def topic_mismatch(fleet: Fleet, rnd: RoundMessage) -> list[str]:
    mallory = fleet.login("mallory", "mallory")  # holds dev-b's signing key, not its login
    mallory.publish(TOPICS.update("mallory"), make_update(rnd, "dev-b", signer_for("dev-b"),
                                                          fleet.key))
    return ["update names agent 'dev-b' but came on 'mallory''s topic"]


def unenrolled(fleet: Fleet, rnd: RoundMessage) -> list[str]:
    eve = fleet.login("unenrolled-eve", "eve")  # a broker login, but not in the allow-list
    eve.publish(TOPICS.update("unenrolled-eve"), make_update(rnd, "unenrolled-eve",
                                                             Signer.generate(), fleet.key))
    return ["agent 'unenrolled-eve' is not enrolled"]


def replay(fleet: Fleet, rnd: RoundMessage) -> list[str]:
    old = fleet.captured("dev-a", rnd.round_id - 1)
    fleet.login("dev-a", "replayer").publish(TOPICS.update("dev-a"), old)
    return [f"late or replayed update for closed round {rnd.round_id - 1}"]


def rerandomised_replay(fleet: Fleet, rnd: RoundMessage) -> list[str]:
    old = fleet.captured("dev-a", rnd.round_id - 1)
    fresh = rerandomise(old, fleet.key)
    old_c, new_c = (decode_update(p, fleet.key).ciphertexts for p in (old, fresh))
    assert all(a != b for a, b in zip(old_c, new_c, strict=True))
    assert decrypt_ints(fleet.private_key, new_c) == decrypt_ints(fleet.private_key, old_c)
    fleet.login("dev-a", "replayer").publish(TOPICS.update("dev-a"), fresh)
    return ["bad signature from 'dev-a'"]


def malformed(corrupt: Callable[[Fleet, RoundMessage], bytes], reason: str) -> Attack:
    """Publish ``corrupt``'s payload as enrolled dev-b (a compromised or buggy device)."""
    def attack(fleet: Fleet, rnd: RoundMessage) -> list[str]:
        fleet.login("dev-b", "buggy-dev-b").publish(TOPICS.update("dev-b"), corrupt(fleet, rnd))
        return [reason]
    return attack


def ciphertext(value: Callable[[PaillierPublicKey, PaillierPrivateKey], int]
               ) -> Callable[[Fleet, RoundMessage], bytes]:
    """A well-formed update signed by dev-b whose one ciphertext is ``value``."""
    def corrupt(fleet: Fleet, rnd: RoundMessage) -> bytes:
        return make_update(rnd, "dev-b", signer_for("dev-b"), fleet.key,
                           ciphertexts=[value(fleet.key, fleet.private_key)])
    return corrupt


def one_byte_short(fleet: Fleet, rnd: RoundMessage) -> bytes:
    return truncate(make_update(rnd, "dev-b", signer_for("dev-b"), fleet.key),
                    signer_for("dev-b"))


OUTSIDE = "ciphertext outside (0, n^2)"
FACTOR = "ciphertext shares a factor with n"
CASES: dict[str, tuple[int, Attack]] = {
    "forged-signature": (1, forged_signature),
    "other-paillier-key": (1, other_paillier_key),
    "topic-mismatch": (1, topic_mismatch),
    "unenrolled": (1, unenrolled),
    "replay": (2, replay),
    "rerandomised-replay": (2, rerandomised_replay),
    "ciphertext-zero": (1, malformed(ciphertext(lambda pub, _: 0), OUTSIDE)),
    "ciphertext-n-squared": (1, malformed(ciphertext(lambda pub, _: pub.nsquare), OUTSIDE)),
    "ciphertext-all-ones": (1, malformed(ciphertext(
        lambda pub, _: (1 << 8 * ciphertext_size(pub)) - 1), OUTSIDE)),
    "ciphertext-factor-p": (1, malformed(ciphertext(lambda _, priv: priv.p), FACTOR)),
    "ciphertext-n": (1, malformed(ciphertext(lambda pub, _: pub.n), FACTOR)),
    # Dropped before decoding: one byte short is not the size the open round takes.
    "ciphertext-truncated": (1, malformed(one_byte_short, "round 1 takes")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_attack_is_rejected_and_the_round_result_is_unchanged(attacked_fleet, case):
    attack_round, attack = CASES[case]
    out = attacked_fleet(attack, attack_round=attack_round)
    assert_rejected_and_unchanged(out, attack_round)


# --- attacks the broker stops --------------------------------------------------------------

def test_agent_cannot_publish_on_another_agents_topics(attacked_fleet):
    """mallory even holds dev-b's signing key: only the broker's ACL stands in the way.

    Had the forged update reached the aggregator, it would have replaced dev-b's
    genuine one (or been rejected as a second update); the forged "offline" status
    would have dropped dev-b from round 2.
    """
    forged: dict[str, bytes] = {}

    def attack(fleet: Fleet, rnd: RoundMessage) -> list[str]:
        mallory = fleet.login("mallory", "mallory")
        forged["update"] = make_update(rnd, "dev-b", signer_for("dev-b"), fleet.key)
        forged["status"] = StatusMessage(agent_id="dev-b", state="offline").to_bytes()
        mallory.publish(TOPICS.update("dev-b"), forged["update"])
        mallory.publish(TOPICS.status("dev-b"), forged["status"], retain=True)
        # Positive control on mallory's own topic, sent last on the same connection:
        # once the aggregator's user has it, the broker has decided on both forgeries.
        control = StatusMessage(agent_id="mallory", state="offline").to_bytes()
        mallory.publish(TOPICS.status("mallory"), control)
        assert fleet.auditor.wait(lambda: control in fleet.auditor.got(TOPICS.status("mallory")))
        assert forged["update"] not in fleet.auditor.got(TOPICS.update("dev-b"))
        return []

    out = attacked_fleet(attack)
    assert forged["update"] not in out.auditor.got(TOPICS.update("dev-b"))
    assert forged["status"] not in out.auditor.got(TOPICS.status("dev-b"))
    assert out.rejections == [] and [r.rejected for r in out.results] == [0, 0]
    assert [r.expected for r in out.results] == [3, 3]  # dev-b was never taken offline
    for r in range(1, ROUNDS + 1):
        assert_fedavg_of_honest(out, r)


def test_oversize_payload_drops_the_connection_and_is_never_delivered(attacked_fleet):
    sent: dict[str, Any] = {}

    def attack(fleet: Fleet, rnd: RoundMessage) -> list[str]:
        mallory = fleet.login("mallory", "mallory")
        # A genuine-looking update of mallory's own, padded past the broker's cap.
        big = make_update(rnd, "mallory", signer_for("mallory"), fleet.key)
        big += bytes(MIN_PAYLOAD_CAP + 1 - len(big))
        sent["client"] = mallory
        mallory.publish(TOPICS.update("mallory"), big, qos=0)
        assert mallory.disconnected.wait(5), "the broker kept a client over the payload cap"
        return []

    out = attacked_fleet(attack)
    assert sent["client"].disconnected.is_set()
    assert out.auditor.got(TOPICS.update("mallory")) == []
    assert out.rejections == [] and [r.rejected for r in out.results] == [0, 0]
    for r in range(1, ROUNDS + 1):
        assert_fedavg_of_honest(out, r)


# --- a known limitation --------------------------------------------------------------------

def test_compromised_enrolled_device_can_get_its_round_dropped_but_not_poison_it(
        attacked_fleet):
    """Known limitation: a valid-looking ciphertext with a garbage plaintext.

    dev-c, enrolled and holding its genuine key, sends ciphertexts of another
    Paillier key as if they were under the aggregator's (header, fingerprint,
    codec digest and signature all genuine; each ciphertext in Z*_{n^2}). Nothing
    can tell it from a real update before decryption, so it is accepted; the
    decrypted SUM then fails the codec's bounds and the aggregator drops the
    round and keeps the model. The model is not poisoned, but the round's
    honest updates are lost; the next round is unaffected. (The same holds for
    any out-of-bounds plaintext an enrolled device encrypts under the right key.)
    """
    def garbage(fleet: Fleet, rnd: RoundMessage) -> bytes:
        c = encrypt_ints(other_key(), [1])[0] % fleet.key.nsquare
        assert math.gcd(c, fleet.key.n) == 1  # passes every check a ciphertext gets
        return make_update(rnd, GATE, signer_for(GATE), fleet.key, ciphertexts=[c])

    out = attacked_fleet(lambda _fleet, _rnd: [], gate_update=garbage)
    first = out.results[0]
    assert first.closed_by == "rejected-sum" and first.rejected == 0
    assert sorted(first.reported) == sorted((*HONEST_AGENTS, GATE))
    assert first.model_version == 0 and out.rounds[2].model_version == 0
    np.testing.assert_array_equal(out.rounds[2].params_array, out.rounds[1].params_array)
    assert any("decrypted sum rejected" in e for e in out.errors)
    assert_fedavg_of_honest(out, 2)  # the next round is whole again


def test_a_compromised_device_in_a_larger_fleet_loses_only_its_group(
        broker_port, start_agents, make_aggregator):
    """Issue 8 item 12: with 6 honest agents and a compromised one (7 >= 4), the culprit
    search excludes mallory's group of 2-3 and the round closes with the rest.

    Before the culprit search every round here closed as ``rejected-sum`` and the model
    never moved. mallory is enrolled and signs genuinely; its ciphertext is another
    key's, so its plaintext under the aggregator's key is garbage.
    """
    port = broker_port
    mallory = Probe(port, "mallory")
    assert mallory.connect()
    assert mallory.subscribe(TOPICS.round) and mallory.subscribe(TOPICS.pubkey)
    mallory.publish(TOPICS.status("mallory"),
                    StatusMessage(agent_id="mallory", state="online").to_bytes(), retain=True)
    agents = start_agents(port, 6)
    aggregator = make_aggregator(port, codec=CODEC, rounds=2, quorum=4, min_agents=7,
                                 round_timeout=30.0, final_evaluation=False)
    thread, out = run_in_thread(aggregator.run)
    try:
        for r in (1, 2):
            rnd = signed_round(mallory, TOPICS, r, timeout=30.0)
            c = encrypt_ints(other_key(), [1])[0] % aggregator.public_key.nsquare
            mallory.publish(TOPICS.update("mallory"), make_update(
                rnd, "mallory", signer_for("mallory"), aggregator.public_key, ciphertexts=[c]))
        thread.join(60)
        assert not thread.is_alive() and "error" not in out, out.get("error")
        rounds = {r: signed_round(mallory, TOPICS, r) for r in (1, 2, 3)}
    finally:
        aggregator.stop()
        mallory.close()
    by_id = {a.config.agent_id: a for a in agents}
    for result in aggregator.results:
        r = result.round_id
        assert result.closed_by == "all" and result.model_version == r
        assert "mallory" in result.excluded and 1 <= len(result.excluded) <= 3
        kept = sorted(set(result.reported) - set(result.excluded))
        assert len(kept) >= 4 and "mallory" not in kept
        clip = CODEC.clip
        deltas = [np.clip(by_id[a].history[r].delta, -clip, clip) for a in kept]
        weights = [by_id[a].history[r].weight for a in kept]
        assert result.total_weight == sum(weights)
        step = rounds[r + 1].params_array - rounds[r].params_array
        np.testing.assert_allclose(step, weighted_average(deltas, weights), rtol=0,
                                   atol=CODEC.resolution)
    with aggregator.store.log_path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all("mallory" in row["excluded"].split() for row in rows)


# --- a broker bug, fixed in broker/amqtt_ext.py -----------------------------------------------

def test_agent_cannot_read_other_agents_retained_topics_by_connecting(acl_broker,
                                                                      fleet_client):
    """17. An agent may read pubkey, round and metrics only; connecting must not change that."""
    port = acl_broker
    auditor = fleet_client(port, "aggregator", password("aggregator"), client_id="auditor")
    assert auditor.subscribe(TOPICS.status_filter)
    status = StatusMessage(agent_id="dev-a", state="online").to_bytes()
    fleet_client(port, "dev-a", password("dev-a")).publish(TOPICS.status("dev-a"), status,
                                                           retain=True)
    assert auditor.wait(lambda: status in auditor.got(TOPICS.status("dev-a")))
    mallory = fleet_client(port, "mallory", password("mallory"))
    assert not mallory.subscribe(TOPICS.status_filter)  # the ACL refuses the subscription
    assert mallory.subscribe(TOPICS.round)
    auditor.publish(TOPICS.round, b"positive control")
    assert mallory.wait(lambda: b"positive control" in mallory.got(TOPICS.round))
    assert mallory.got(TOPICS.status("dev-a")) == []  # ...yet connecting was enough to read it
