"""A curious aggregator against real trustee processes on real MQTT: no small group is decrypted.

The harness deals a 512-bit 2-of-3 threshold Paillier key (simulation.trustees), starts
each trustee as its own ``python -m fedmq trustee`` process against an embedded amqtt
broker on 127.0.0.1, publishes the aggregator's signed pubkey announcement (retained)
and lets eight enrolled devices d1..d8 publish real signed, encrypted updates.

The attacker is the aggregator gone curious: it holds the aggregator's files (the
trustees.json with the threshold public key and the trustees' reply keys, its own
signing key, its own allow-list) and its MQTT powers (it reads every update and may
publish any DecryptRequest, any members, any supply, any run or round), but none of the
trustees' shares. It collects the signed replies, checks each partial decryption's proof
against the product it recomputes itself, and combines any two valid ones: that is a
successful decryption. Every case below asserts that none succeeds, except the controls:

1. control: the sum of all eight devices is decrypted, every proof verifies.
2. one member (a quorum of 1): refused, "fewer than min_group".
3. two sets that differ by one device in a round ({d1..d5} then {d1..d4} or {d1..d6}).
4. the three-set attack pairwise rules miss: {d1..d5}, {d1,d2}, then {d3,d4} (isolates d5).
5. the statistics round again in a new run over one device less ("across all runs").
6. a device the trustees do not know (the attacker's own enrolment), also supplied with
   the request; a "victim" update forged with a wrong key, also supplied.
7. a partial decryption tampered in flight: its proof fails and names the trustee; the
   honest aggregator (aggregator.trustees.TrusteePanel) still decrypts from the others.
8. a trustee killed (SIGKILL) and restarted keeps its ledger: it refuses {d1..d4} after
   {d1..d5}, and after its missing updates are supplied still serves an allowed set.
9. a trustee that was down while {d1..d5} was decrypted answers {d1..d4}, but alone:
   with 2 of 3, any two quorums share a trustee that refuses.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from mqtt_support import Probe
from support import run_in_thread, signer_for, wait_until

from fedmq.aggregator.allowlist import enroll, load_allow_list
from fedmq.aggregator.rounds import RoundState
from fedmq.aggregator.trustees import TrusteePanel, TrusteeSet
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import add_ciphertexts, encrypt_ints, fingerprint
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.crypto.threshold import (
    PartialDecryption,
    ProofError,
    ThresholdPublic,
    combine,
    verify_partial,
)
from fedmq.protocol.decryption import DecryptReply, DecryptRequest
from fedmq.protocol.decryption_log import LogEntry, chain_of
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.messages import PubKeyMessage
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import UpdateMessage, decode_update, encode_update
from fedmq.runtime.files import load_signer
from fedmq.runtime.transport import MqttSettings
from fedmq.simulation.trustees import SimulatedTrustees, deal_trustees, running, write_configs

TOPICS = Topics("trustfleet")
RUN = "run-a"
DEVICES = tuple(f"d{i}" for i in range(1, 9))
AGGREGATOR = Signer.from_seed(b"curious-aggregator")  # the key the trustees pin
REPLY_TIMEOUT = 10.0
RESEND = 1.0  # seconds between copies of a request some trustee has not answered
N_VALUES = 3
SINGLED_OUT = "would single out"
FEWER = "fewer than min_group = 2"


def values(device: str, run_id: str, round_id: int) -> list[int]:
    """Device ``dK``'s small plaintexts in a round (distinct per device, round and run)."""
    k = int(device[1:])
    return [k, 10 * k + round_id, 1000 * k + (7 if run_id == "run-b" else 0)]


def expected_sum(devices: Iterable[str], run_id: str, round_id: int) -> list[int]:
    return [sum(col) for col in zip(*(values(d, run_id, round_id) for d in devices),
                                    strict=True)]


@dataclass
class Outcome:
    """What the trustees answered one request, and what the attacker made of it."""

    request: DecryptRequest
    replies: dict[str, DecryptReply]  # each trustee's latest answer
    product: list[int]  # the attacker's own product of the named ciphertexts
    partials: dict[str, PartialDecryption]  # ok partials whose proof verified
    plaintext: list[int] | None  # the combined sum: a successful decryption

    def statuses(self) -> dict[str, str]:
        return {t: r.status for t, r in sorted(self.replies.items())}


class _Replies(dict[str, DecryptReply]):
    """Each trustee's latest reply to one request (``request_``: that request)."""

    request_: DecryptRequest


@dataclass
class Harness:
    port: int
    sim: SimulatedTrustees
    trustees: TrusteeSet  # the aggregator's trustees.json, as it loads it
    contract: str  # the codec digest of the signed pubkey announcement
    attacker: Probe  # the aggregator's MQTT powers: reads updates and replies, asks
    devices: Probe  # the honest devices' link
    aggregator_dir: Path
    # The certified decryption log of each round, as the attacker has it: like the honest
    # aggregator it must name it in every request (protocol.decryption_log).
    logs: dict[str, list[LogEntry]] = field(default_factory=dict)

    @property
    def public(self) -> ThresholdPublic:
        return self.trustees.public

    def decode(self, payload: bytes) -> UpdateMessage:
        """An update as the aggregator reads it off the wire (its signature unchecked)."""
        return decode_update(payload, self.public.public_key)

    def signed_hash(self, payload: bytes) -> str:
        """What the aggregator names a member's update by in a request."""
        return self.decode(payload).signed_hash.hex()

    # -- the devices ---------------------------------------------------------------------

    def update(self, device: str, run_id: str, round_id: int, *, plain: Sequence[int],
               signer: Signer) -> bytes:
        pub = self.public.public_key
        msg = UpdateMessage(fleet=TOPICS.fleet, run_id=run_id, round_id=round_id,
                            agent_id=device, key_fingerprint=fingerprint(pub),
                            codec_digest=self.contract, n_values=N_VALUES,
                            ciphertexts=tuple(encrypt_ints(pub, plain)))
        return encode_update(msg, pub, signer)

    def publish_round(self, run_id: str, round_id: int,
                      devices: Sequence[str] = DEVICES) -> dict[str, bytes]:
        """Each device publishes its signed update; returns once the attacker read them all
        and every trustee holds them all (each answers a one-member request with a
        refusal, not ``missing``: nothing is recorded in its ledger)."""
        payloads = {d: self.update(d, run_id, round_id, plain=values(d, run_id, round_id),
                                   signer=signer_for(d)) for d in devices}
        for d, payload in payloads.items():
            self.devices.publish(TOPICS.update(d), payload)
        assert self.attacker.wait(lambda: all((TOPICS.update(d), p) in self.attacker.received
                                              for d, p in payloads.items()), REPLY_TIMEOUT)
        self.held(run_id, round_id, payloads)
        return payloads

    def held(self, run_id: str, round_id: int, payloads: Mapping[str, bytes]) -> None:
        """Wait until every trustee holds every one of ``payloads`` (see publish_round)."""
        # Each with its payload supplied: a trustee that (re)started after the devices
        # published gets it this way, as from an aggregator.
        pending = {d: DecryptRequest(fleet=TOPICS.fleet, run_id=run_id, round_id=round_id,
                                     members={d: self.signed_hash(p)}, supply=(p,))
                   for d, p in payloads.items()}
        end = time.monotonic() + REPLY_TIMEOUT
        while pending:
            since = len(self.attacker.received)
            for req in pending.values():
                self.attacker.publish(TOPICS.trustee_request, req.to_bytes())

            def answered(since: int = since) -> bool:
                got = self.replies(since)
                return all(got.get((t, r.request_id), "missing") != "missing"
                           for r in pending.values() for t in self.trustees.trustees)

            self.attacker.wait(answered, RESEND)
            got = self.replies(since)
            for d, req in list(pending.items()):
                if all(got.get((t, req.request_id), "missing") != "missing"
                       for t in self.trustees.trustees):
                    for t in self.trustees.trustees:
                        assert got[(t, req.request_id)] == "refused", (t, d)
                    del pending[d]
            assert not pending or time.monotonic() < end, \
                f"the trustees never held the updates of {sorted(pending)}"

    def replies(self, since: int) -> dict[tuple[str, str], str]:
        """(trustee, request id) -> the latest status among replies from ``since`` on."""
        out = {}
        for trustee, _topic, _payload, reply in self.read(since):
            out[(trustee, reply.request_id)] = reply.status
        return out

    def read(self, since: int = 0) -> list[tuple[str, str, bytes, DecryptReply]]:
        """The validly signed trustee replies the attacker received from index ``since`` on."""
        out = []
        for topic, payload in self.attacker.received[since:]:  # a slice copies atomically
            trustee = TOPICS.agent_of(topic, "trustee/reply")
            info = self.trustees.trustees.get(trustee or "")
            if trustee is None or info is None:
                continue
            try:
                reply = DecryptReply.from_bytes(payload, info.signing_key)
            except ProtocolError:
                continue
            out.append((trustee, topic, payload, reply))
        return out

    # -- the attacker --------------------------------------------------------------------

    def product(self, payloads: Iterable[bytes]) -> list[int]:
        pub = self.public.public_key
        vectors = [list(self.decode(p).ciphertexts) for p in payloads]
        return [int(c) for c in functools.reduce(
            lambda a, b: add_ciphertexts(pub, a, b), vectors[1:], vectors[0])]

    def ask(self, run_id: str, round_id: int, named: Mapping[str, bytes], *,
            supply: Sequence[bytes] = (), answering: Sequence[str] | None = None,
            log: Sequence[LogEntry] | None = None) -> Outcome:
        """Ask, as the honest aggregator does, in two phases: votes that make the sum of
        ``named`` (member -> the signed payload whose hash it names) the next entry of the
        round's log, then the partial decryptions of that certified entry; each phase until
        every trustee in ``answering`` (default: all) replied. The ok partials are checked
        against the attacker's own product and combined if it can.

        ``log``: the round's log the request names (default: the attacker's whole log;
        a shorter one is how it would hide earlier decryptions). The returned outcome is
        the vote phase's when the entry got fewer than T votes."""
        chain = chain_of(run_id, round_id)
        own = self.logs.setdefault(chain, [])
        shown = list(own if log is None else log)
        members = {m: self.signed_hash(p) for m, p in named.items()}
        vote: _Replies = self._phase(DecryptRequest(
            fleet=TOPICS.fleet, run_id=run_id, round_id=round_id, members=members,
            supply=tuple(supply), log=tuple(shown), phase="vote"), answering)
        votes = {t: r.vote for t, r in vote.items() if r.status == "vote"}
        product = self.product(named.values())
        if len(votes) < self.public.threshold:
            return Outcome(vote.request_, vote, product, {}, None)
        entry = LogEntry(tuple(sorted(named)), members, votes)  # devices: every member one
        if len(shown) == len(own):
            own.append(entry)
        req = DecryptRequest(fleet=TOPICS.fleet, run_id=run_id, round_id=round_id,
                             members=members, log=(*shown, entry), phase="decrypt")
        latest = self._phase(req, answering)
        partials = {}
        for trustee, reply in latest.items():
            if reply.partial is None:
                continue
            try:
                verify_partial(self.public, product, reply.partial, context=req.context())
            except ProtocolError:
                continue
            partials[trustee] = reply.partial
        plaintext = None
        if len(partials) >= self.public.threshold:
            plaintext = combine(self.public, product, list(partials.values()))
        return Outcome(req, latest, product, partials, plaintext)

    def _phase(self, req: DecryptRequest, answering: Sequence[str] | None) -> _Replies:
        """Publish ``req`` until each trustee in ``answering`` replied; their replies."""
        wanted = set(self.trustees.trustees if answering is None else answering)
        since = len(self.attacker.received)
        end = time.monotonic() + REPLY_TIMEOUT
        while True:
            self.attacker.publish(TOPICS.trustee_request, req.to_bytes())

            def complete() -> bool:
                return wanted <= {t for t, _, _, r in self.read(since)
                                  if r.request_id == req.request_id}

            done = self.attacker.wait(complete, RESEND)
            latest = _Replies({t: r for t, _, _, r in self.read(since)
                               if r.request_id == req.request_id})
            latest.request_ = req
            if done:
                return latest
            assert time.monotonic() < end, \
                f"no reply from {sorted(wanted - set(latest))} within {REPLY_TIMEOUT:g} s"

    def assert_not_decrypted(self, out: Outcome) -> None:
        """No trustee answered ok, and the attacker cannot combine anything."""
        assert out.plaintext is None
        assert "ok" not in out.statuses().values(), out.statuses()
        with pytest.raises(ProtocolError, match="are needed"):
            combine(self.public, out.product, list(out.partials.values()))

    def assert_not_decrypted_alone(self, out: Outcome) -> None:
        """Fewer than T partials: the attacker cannot combine anything."""
        assert out.plaintext is None and len(out.partials) < self.public.threshold
        with pytest.raises(ProtocolError, match="are needed"):
            combine(self.public, out.product, list(out.partials.values()))

    def assert_refused(self, out: Outcome, reason: str) -> None:
        """Every trustee refused, naming the rule; nothing decrypted."""
        assert out.statuses() == dict.fromkeys(sorted(self.trustees.trustees), "refused")
        for trustee, reply in out.replies.items():
            assert reason in reply.reason, (trustee, reply.reason)
        self.assert_not_decrypted(out)

    def assert_decrypted(self, out: Outcome, devices: Iterable[str], run_id: str,
                         round_id: int) -> None:
        assert out.statuses() == dict.fromkeys(sorted(self.trustees.trustees), "ok")
        assert set(out.partials) == set(self.trustees.trustees)  # every proof verified
        assert out.plaintext == expected_sum(devices, run_id, round_id)

    # -- the trustee processes -----------------------------------------------------------

    def kill(self, trustee: str) -> None:
        """SIGKILL: no clean shutdown, whatever was only in memory is gone."""
        proc = self.sim.processes[trustee]
        proc.kill()
        proc.wait(10)

    def restart(self, trustee: str) -> None:
        """The same ``fedmq trustee --config`` (same share, allow-list and state dir)."""
        bundle = self.sim.bundles[trustee]
        with (bundle / "trustee.log").open("ab") as log:
            self.sim.processes[trustee] = subprocess.Popen(
                [sys.executable, "-m", "fedmq", "trustee", "--config",
                 str(bundle / "trustee.toml")], stdout=log, stderr=subprocess.STDOUT)


def first(devices: int) -> tuple[str, ...]:
    return DEVICES[:devices]


def pick(payloads: Mapping[str, bytes], devices: Iterable[str]) -> dict[str, bytes]:
    return {d: payloads[d] for d in devices}


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    out = tmp_path_factory.mktemp("trustees")
    port = free_port()
    with contextlib.ExitStack() as stack:
        stack.enter_context(EmbeddedBroker(BrokerSettings(host="127.0.0.1", port=port)))
        sim, shares = deal_trustees(out, trustees=3, threshold=2, bits=512)
        del shares  # only the trustees' bundles hold them; the attacker never does
        write_configs(sim, topics=TOPICS, aggregator_key=AGGREGATOR.public_hex,
                      enrolled={d: signer_for(d).public_key for d in DEVICES},
                      mqtt={t: MqttSettings(host="127.0.0.1", port=port, connect_timeout=5)
                            for t in sim.ids})
        aggregator_dir = out / "aggregator"
        for d in DEVICES:  # the aggregator's own allow-list
            enroll(aggregator_dir / "allow_list.json", d, signer_for(d).public_hex)
        trustees = TrusteeSet.load(sim.path)
        pub = trustees.public.public_key
        announcement = PubKeyMessage(fleet=TOPICS.fleet, n_hex=format(pub.n, "x"),
                                     fingerprint=fingerprint(pub), codec=CodecParams(),
                                     signing_key=AGGREGATOR.public_hex)
        attacker = Probe(port, "curious-aggregator")
        devices = Probe(port, "devices")
        for probe in (attacker, devices):
            assert probe.connect()
            stack.callback(probe.close)
        assert attacker.subscribe(TOPICS.trustee_replies_filter)
        assert attacker.subscribe(TOPICS.updates_filter)
        devices.publish(TOPICS.pubkey, announcement.to_bytes(AGGREGATOR), retain=True)
        stack.enter_context(running(sim))
        h = Harness(port, sim, trustees, announcement.contract_digest, attacker, devices,
                    aggregator_dir)
        # Up and subscribed: every trustee answers a request for an update nobody sent.
        nobody = h.update("nobody", RUN, 999, plain=[0, 0, 0], signer=Signer.generate())
        ready = h.ask(RUN, 999, {"nobody": nobody})
        assert set(ready.statuses().values()) == {"missing"}
        yield h


def test_control_the_sum_of_all_devices_is_decrypted_and_every_proof_verifies(
        harness: Harness) -> None:
    h = harness
    payloads = h.publish_round(RUN, 1)
    out = h.ask(RUN, 1, payloads)
    h.assert_decrypted(out, DEVICES, RUN, 1)
    # Each partial's proof, checked against the attacker's own product, and any two combine.
    for trustee, reply in out.replies.items():
        assert reply.partial is not None
        assert reply.partial.index == h.trustees.trustees[trustee].index
        verify_partial(h.public, out.product, reply.partial, context=out.request.context())
    partials = list(out.partials.values())
    for i in range(len(partials)):
        pair = [partials[i], partials[(i + 1) % len(partials)]]
        assert combine(h.public, out.product, pair) == expected_sum(DEVICES, RUN, 1)
    # A partial is bound to its request: for another request id its proof fails.
    other = DecryptRequest(fleet=TOPICS.fleet, run_id=RUN, round_id=1,
                           members=out.request.members)
    with pytest.raises(ProofError):
        verify_partial(h.public, out.product, partials[0], context=other.context())


def test_a_single_members_ciphertext_is_refused(harness: Harness) -> None:
    """An aggregator configured with quorum 1 asks for one device's update: refused."""
    h = harness
    payloads = h.publish_round(RUN, 2)
    for device in ("d1", "d8"):
        h.assert_refused(h.ask(RUN, 2, pick(payloads, [device])), FEWER)
    # Even after the round's total was decrypted, one member alone stays refused.
    h.assert_decrypted(h.ask(RUN, 2, payloads), DEVICES, RUN, 2)
    h.assert_refused(h.ask(RUN, 2, pick(payloads, ["d3"])), FEWER)


def test_two_sets_differing_by_one_device_are_refused(harness: Harness) -> None:
    h = harness
    payloads = h.publish_round(RUN, 3)
    h.assert_decrypted(h.ask(RUN, 3, pick(payloads, first(5))), first(5), RUN, 3)
    h.assert_refused(h.ask(RUN, 3, pick(payloads, first(4))), SINGLED_OUT)  # d5 alone
    h.assert_refused(h.ask(RUN, 3, pick(payloads, first(6))), SINGLED_OUT)  # d6 alone
    # The same set again adds nothing and is served (a re-sent request).
    h.assert_decrypted(h.ask(RUN, 3, pick(payloads, first(5))), first(5), RUN, 3)


def test_the_three_set_attack_is_refused(harness: Harness) -> None:
    """{d1..d5} - {d1,d2} - {d3,d4} = d5: pairwise nested or disjoint, still refused."""
    h = harness
    payloads = h.publish_round(RUN, 4)
    h.assert_decrypted(h.ask(RUN, 4, pick(payloads, first(5))), first(5), RUN, 4)
    h.assert_decrypted(h.ask(RUN, 4, pick(payloads, ["d1", "d2"])), ["d1", "d2"], RUN, 4)
    out = h.ask(RUN, 4, pick(payloads, ["d3", "d4"]))
    h.assert_refused(out, SINGLED_OUT)
    assert all("1 part(s) of 1" in r.reason for r in out.replies.values())
    # The parts that are at least min_group stay available: {d6, d7, d8} is disjoint.
    h.assert_decrypted(h.ask(RUN, 4, pick(payloads, ["d6", "d7", "d8"])),
                       ["d6", "d7", "d8"], RUN, 4)


def test_the_statistics_round_is_compared_across_runs(harness: Harness) -> None:
    h = harness
    run_a = h.publish_round("run-a", 0)
    h.assert_decrypted(h.ask("run-a", 0, pick(run_a, first(6))), first(6), "run-a", 0)
    run_b = h.publish_round("run-b", 0)
    out = h.ask("run-b", 0, pick(run_b, first(5)))
    h.assert_refused(out, SINGLED_OUT)
    assert all("across all runs" in r.reason for r in out.replies.values())
    # The same device set in the new run: allowed (its statistics add nothing new).
    h.assert_decrypted(h.ask("run-b", 0, pick(run_b, first(6))), first(6), "run-b", 0)


def test_a_device_the_trustees_do_not_know_cannot_be_used(harness: Harness) -> None:
    h = harness
    payloads = h.publish_round(RUN, 5)
    # The attacker enrolls its own device in ITS allow-list and publishes a signed update
    # with a known plaintext (0): sum({victim, fake}) would be the victim's update.
    fake_key = Signer.generate()
    enroll(h.aggregator_dir / "allow_list.json", "mallory", fake_key.public_hex)
    assert "mallory" in load_allow_list(h.aggregator_dir / "allow_list.json")
    fake = h.update("mallory", RUN, 5, plain=[0, 0, 0], signer=fake_key)
    h.devices.publish(TOPICS.update("mallory"), fake)
    assert h.attacker.wait_for(TOPICS.update("mallory"), fake)
    named = {"d1": payloads["d1"], "mallory": fake}
    out = h.ask(RUN, 5, named)
    assert out.statuses() == dict.fromkeys(sorted(h.trustees.trustees), "missing")
    assert all(r.missing == ("mallory",) for r in out.replies.values())
    h.assert_not_decrypted(out)
    # ... and supplied with the request: not on the trustees' allow-list, still missing.
    out = h.ask(RUN, 5, named, supply=[fake])
    assert out.statuses() == dict.fromkeys(sorted(h.trustees.trustees), "missing")
    assert all(r.missing == ("mallory",) for r in out.replies.values())
    h.assert_not_decrypted(out)
    # A "d2" update the victim d2 never sent (known plaintext 0, signed with a wrong key),
    # published on d2's topic and then supplied: sum({d1, forged d2}) would be d1 alone.
    forged = h.update("d2", RUN, 5, plain=[0, 0, 0], signer=fake_key)
    h.devices.publish(TOPICS.update("d2"), forged)
    assert h.attacker.wait_for(TOPICS.update("d2"), forged)
    for supply in ((), (forged,)):
        out = h.ask(RUN, 5, {"d1": payloads["d1"], "d2": forged}, supply=supply)
        assert out.statuses() == dict.fromkeys(sorted(h.trustees.trustees), "missing")
        assert all(r.missing == ("d2",) for r in out.replies.values())
        h.assert_not_decrypted(out)
    # The genuine pair is still a legitimate group of two (control).
    h.assert_decrypted(h.ask(RUN, 5, pick(payloads, ["d1", "d2"])), ["d1", "d2"], RUN, 5)


@dataclass(frozen=True)
class RoundView:
    """What TrusteePanel.decrypt reads of an aggregator.rounds.RoundState."""

    fleet: str
    run_id: str
    round_id: int
    hashes: Mapping[str, bytes]
    payloads: Mapping[str, bytes]

    @property
    def members(self) -> dict[str, tuple[str, ...]]:
        return {d: (d,) for d in self.hashes}  # every member a device, none a relay


def test_a_tampered_partial_fails_its_proof_naming_the_trustee(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """The honest aggregator's panel gets, in this order: trustee-3's reply with a byte
    changed in flight (signature fails: ignored), trustee-1's partial with one value
    altered and re-signed with trustee-1's own key (a lying trustee: its proof fails and
    the ERROR names it), then the genuine replies of trustee-2 and trustee-3."""
    h = harness
    payloads = h.publish_round(RUN, 6)
    state = RoundView(TOPICS.fleet, RUN, 6,
                      {d: h.decode(p).signed_hash for d, p in payloads.items()},
                      payloads)
    sent: list[bytes] = []

    def publish(topic: str, payload: bytes) -> None:
        sent.append(payload)
        h.attacker.publish(topic, payload)

    panel = TrusteePanel(h.trustees, TOPICS, publish, timeout=REPLY_TIMEOUT, attempts=0)
    product = h.product(payloads.values())
    caplog.set_level(logging.WARNING, logger="fedmq.aggregator.service")
    thread, result = run_in_thread(lambda: panel.decrypt(
        cast(RoundState, state), frozenset(DEVICES), product))
    def replies_to(req: DecryptRequest) -> dict[str, tuple[str, bytes, DecryptReply]]:
        return wait_until(lambda: (got := {t: (topic, p, r) for t, topic, p, r in h.read()
                                           if r.request_id == req.request_id})
                          and len(got) == 3 and got, "three replies", REPLY_TIMEOUT)

    def sent_in(phase: str) -> DecryptRequest:
        return wait_until(lambda: next((r for r in map(DecryptRequest.from_bytes, sent)
                                        if r.phase == phase), None), f"the {phase}", 5)

    # First the entry's votes, handed over as they came: the panel certifies it ...
    votes = replies_to(sent_in("vote"))
    assert {r.status for _, _, r in votes.values()} == {"vote"}
    for topic, payload, _ in votes.values():
        assert panel.deliver(topic, payload)
    # ... and only then asks for the partial decryptions of the certified entry.
    req = sent_in("decrypt")
    genuine = replies_to(req)
    assert {r.status for _, _, r in genuine.values()} == {"ok"}

    liar, liar_info = "trustee-1", h.trustees.trustees["trustee-1"]
    honest = genuine[liar][2].partial
    assert honest is not None
    nsq = h.public.n ** 2
    altered = list(honest.values)
    altered[1] = altered[1] * (h.public.n + 1) % nsq  # shifts that plaintext by a constant
    lie = PartialDecryption(honest.index, tuple(altered), honest.proofs)
    with pytest.raises(ProofError) as caught:
        verify_partial(h.public, product, lie, context=req.context())
    assert caught.value.index == liar_info.index
    assert "ciphertext 1" in str(caught.value)
    liar_key = load_signer(h.sim.bundles[liar] / "signing.key")
    lying_reply = DecryptReply(fleet=TOPICS.fleet, request_id=req.request_id, trustee=liar,
                               status="ok", partial=lie).to_bytes(liar_key)

    topic3, payload3, _ = genuine["trustee-3"]
    doc = json.loads(payload3)
    first_value = doc["partial"]["values"][0]
    doc["partial"]["values"][0] = first_value[:-1] + ("1" if first_value[-1] != "1" else "2")
    garbled = json.dumps(doc).encode()

    for topic, payload in ((topic3, garbled), (TOPICS.trustee_reply(liar), lying_reply),
                           genuine["trustee-2"][:2], (topic3, payload3)):
        assert panel.deliver(topic, payload)
    thread.join(REPLY_TIMEOUT)
    assert not thread.is_alive()
    assert result.get("result") == expected_sum(DEVICES, RUN, 6), result
    assert set(panel.bad) == {liar}
    assert f"trustee {liar_info.index}" in panel.bad[liar]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(liar in m and "fails its proof" in m for m in errors), errors
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ignoring a reply of trustee trustee-3" in m for m in warnings), warnings


def test_a_restarted_trustee_keeps_refusing_and_still_serves(harness: Harness) -> None:
    h = harness
    victim = "trustee-2"
    payloads = h.publish_round(RUN, 7)
    h.assert_decrypted(h.ask(RUN, 7, pick(payloads, first(5))), first(5), RUN, 7)
    h.kill(victim)
    ledger = h.sim.bundles[victim] / "state" / "ledger.jsonl"
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert any(v["chain"] == f"{RUN}/7" and v["kind"] == "entry" and v["position"] == 0
               and v["entry"]["devices"] == list(first(5)) for v in lines), lines
    h.restart(victim)

    # It lost the updates it held in memory: it asks for them first ...
    out = h.ask(RUN, 7, pick(payloads, first(4)))
    assert out.replies[victim].status == "missing"
    assert set(out.replies[victim].missing) == set(first(4))
    h.assert_not_decrypted(out)
    # ... and once they are supplied, its ledger on disk refuses them like the others.
    out = h.ask(RUN, 7, pick(payloads, first(4)), supply=list(pick(payloads, first(4))
                                                              .values()))
    h.assert_refused(out, SINGLED_OUT)

    # An allowed set: missing at the restarted trustee, then served from the supply.
    three = ["d6", "d7", "d8"]
    out = h.ask(RUN, 7, pick(payloads, three))
    assert out.replies[victim].status == "missing"
    assert set(out.replies[victim].missing) == set(three)
    out = h.ask(RUN, 7, pick(payloads, three), supply=list(pick(payloads, three).values()))
    h.assert_decrypted(out, three, RUN, 7)
    others = [p for t, p in out.partials.items() if t != victim]
    assert combine(h.public, out.product, [out.partials[victim], others[0]]) == \
        expected_sum(three, RUN, 7)
    assert h.sim.processes[victim].poll() is None


def test_a_trustee_that_missed_a_decryption_cannot_be_used_alone(harness: Harness) -> None:
    """trustee-3 is down while {d1..d5} is decrypted by the other two. Back up, it learns
    that entry from the round's log and refuses {d1..d4} like them; a request that hides
    the entry gets trustee-3's vote alone: the two that voted for it answer with the log
    instead, and a vote releases no partial decryption."""
    h = harness
    absent = "trustee-3"
    payloads = h.publish_round(RUN, 8)
    h.kill(absent)
    present = [t for t in h.trustees.trustees if t != absent]
    out = h.ask(RUN, 8, pick(payloads, first(5)), answering=present)
    assert out.plaintext == expected_sum(first(5), RUN, 8)
    assert absent not in out.replies
    h.restart(absent)
    supply = list(pick(payloads, first(4)).values())
    hidden = h.ask(RUN, 8, pick(payloads, first(4)), supply=supply, log=[])
    # trustee-3 votes for it (its vote alone releases nothing), the two that voted for
    # {d1..d5} answer with their log: no entry, no partial decryption.
    assert hidden.statuses() == {"trustee-1": "log", "trustee-2": "log", absent: "vote"}
    h.assert_not_decrypted_alone(hidden)
    h.assert_refused(h.ask(RUN, 8, pick(payloads, first(4)), supply=supply), SINGLED_OUT)


def test_routing_requests_to_different_trustee_pairs_does_not_isolate_a_device(
        harness: Harness) -> None:
    """The gateway runs the broker, so it chooses which trustees see which request:
    {d1..d5} by trustees 1 and 2, {d1, d2} by 2 and 3, {d3, d4} by 1 and 3 (each trustee
    would see two harmless sets; the three isolate d5). The round's certified log makes
    every set decrypted before known to whoever extends it."""
    h = harness
    payloads = h.publish_round(RUN, 9)
    everything = list(payloads.values())
    h.kill("trustee-3")
    out = h.ask(RUN, 9, pick(payloads, first(5)), answering=["trustee-1", "trustee-2"])
    assert out.plaintext is not None
    h.restart("trustee-3")
    h.kill("trustee-1")
    out = h.ask(RUN, 9, pick(payloads, ["d1", "d2"]), supply=everything,
                answering=["trustee-2", "trustee-3"])
    assert out.plaintext is not None  # entry 1, voted by trustees 2 and 3
    h.restart("trustee-1")
    h.kill("trustee-2")
    two = ["trustee-1", "trustee-3"]
    x1, x2 = h.logs[f"{RUN}/9"]
    # Hiding {d1, d2}: trustee-3 voted for it and answers with the log instead.
    hide = h.ask(RUN, 9, pick(payloads, ["d3", "d4"]), supply=everything, answering=two,
                 log=[x1])
    assert hide.replies["trustee-3"].status == "log"
    h.assert_not_decrypted_alone(hide)
    # Hiding both: each knows {d1..d5} (trustee-1 voted for it, trustee-3 saw it certified).
    hide = h.ask(RUN, 9, pick(payloads, ["d3", "d4"]), answering=two, log=[])
    assert {r.status for r in hide.replies.values()} == {"log"}
    h.assert_not_decrypted_alone(hide)
    # The whole log: both see that {d3, d4} would single out d5.
    out = h.ask(RUN, 9, pick(payloads, ["d3", "d4"]), answering=two, log=[x1, x2])
    assert {r.status for r in out.replies.values()} == {"refused"}
    assert all(SINGLED_OUT in r.reason for r in out.replies.values())
    assert out.plaintext is None
    h.restart("trustee-2")


def test_a_vote_that_never_counts_releases_nothing(harness: Harness) -> None:
    """A second review's attack on a first version that released the partial with the
    vote: {d1, d2} voted by trustee-1 alone at entry 0, {d1..d5} certified there by the
    other two; {d1, d2} then decrypted at entry 1 and {d3, d4} at entry 2 would give d5.
    Now a vote releases nothing and {d1, d2} is decrypted only as a log entry, so {d3, d4}
    is refused."""
    h = harness
    payloads = h.publish_round(RUN, 10)
    everything = list(payloads.values())
    h.kill("trustee-2")
    h.kill("trustee-3")
    alone = h.ask(RUN, 10, pick(payloads, ["d1", "d2"]), answering=["trustee-1"])
    assert alone.statuses() == {"trustee-1": "vote"} and alone.replies["trustee-1"].partial \
        is None
    assert alone.plaintext is None and h.logs[f"{RUN}/10"] == []
    h.restart("trustee-2")
    h.restart("trustee-3")
    h.kill("trustee-1")
    out = h.ask(RUN, 10, pick(payloads, first(5)), supply=everything,
                answering=["trustee-2", "trustee-3"])
    assert out.plaintext == expected_sum(first(5), RUN, 10)
    h.restart("trustee-1")
    out = h.ask(RUN, 10, pick(payloads, ["d1", "d2"]), supply=everything)
    assert out.plaintext == expected_sum(["d1", "d2"], RUN, 10)  # entry 1, in the log
    h.assert_refused(h.ask(RUN, 10, pick(payloads, ["d3", "d4"])), SINGLED_OUT)
