"""The signature worker: same verdicts as inline verification, and a burst through Inbound
with it accepts, rejects and sums exactly as one message at a time does."""

from __future__ import annotations

import logging
import os
import signal

import pytest

from fedmq.aggregator import inbound as inbound_module
from fedmq.aggregator.checkpoint import Checkpoints
from fedmq.aggregator.inbound import Inbound
from fedmq.aggregator.rounds import Rejected
from fedmq.aggregator.verifier import RECORD, Verifier, record, verify_records
from fedmq.benchmarks.inbound import open_round
from fedmq.benchmarks.inbound_fleet import build_fleet
from fedmq.protocol.crypto.signing import public_key_from_hex, public_key_hex, raw_key
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.notices import OTHER_KEY
from fedmq.protocol.wire import decode_update


@pytest.fixture(scope="module")
def fleet(keypair):
    return build_fleet(bits=512, d=3, updates=12, seed=7, key=keypair)


@pytest.fixture(scope="module")
def other(keypair):
    """The same agents' updates signed by other Ed25519 keys (a wiped device's new key)."""
    return build_fleet(bits=512, d=3, updates=12, seed=8, key=keypair)


@pytest.fixture
def verifier():
    v = Verifier()
    v.start()  # ready: a backlog never waits for a starting worker (it verifies inline)
    yield v
    v.close()


def forged(payload: bytes) -> bytes:
    """The payload with one bit of its signature flipped."""
    return payload[:-1] + bytes([payload[-1] ^ 1])


def records_of(fleet, payloads):
    out = []
    for agent, payload in payloads:
        u = decode_update(payload, fleet.public_key)
        out.append(record(raw_key(fleet.allow_list[agent]), u.signed_hash, u.signature))
    return out


def inline(fleet, agent, payload) -> int:
    try:
        decode_update(payload, fleet.public_key).verify(fleet.allow_list[agent])
    except ProtocolError:
        return 0
    return 1


def test_the_worker_verifies_genuine_records_and_rejects_forged_and_other_key_ones(
        fleet, other, verifier):
    (a, pa), (b, pb), (c, _) = fleet.payloads[:3]
    cases = [(a, pa), (b, forged(pb)), (c, dict(other.payloads)[c])]
    records = records_of(fleet, cases)
    assert verifier.submit(records)
    verdicts = verifier.collect()
    assert verifier.starts == 1
    assert verdicts == bytes(inline(fleet, agent, p) for agent, p in cases) == b"\x01\x00\x00"
    assert verify_records(b"".join(records)) == verdicts  # the same code, in this process
    assert verify_records(bytes(RECORD)) == b"\x00"  # not a key at all: not verified
    with pytest.raises(ValueError):
        record(b"k" * 32, b"h" * 32, b"s" * 63)


def burst(fleet, other):
    """Genuine updates, and in between: a forged one followed by its agent's genuine one,
    one signed by another key, a redelivery, one by another key from an agent already
    held, a genuine one on another agent's topic, a bad status."""
    payloads = dict(fleet.payloads)
    agents = [a for a, _ in fleet.payloads]
    items = [(fleet.topic(a), payloads[a]) for a in agents[:4]]
    items.append((fleet.topic(agents[4]), forged(payloads[agents[4]])))
    items.append((fleet.topic(agents[4]), payloads[agents[4]]))
    items.append((fleet.topic(agents[5]), dict(other.payloads)[agents[5]]))
    items.append((fleet.topic(agents[0]), payloads[agents[0]]))  # redelivery
    items.append((fleet.topic(agents[1]), dict(other.payloads)[agents[1]]))
    items.append((fleet.topic(agents[7]), payloads[agents[8]]))  # on another agent's topic
    items.append((f"{fleet.topics.base}/status/{agents[6]}", b"not json"))
    items.extend((fleet.topic(a), payloads[a]) for a in agents[6:])
    return items


def run(fleet, tmp_path, items, *, worker, verifier=None):
    state = open_round(fleet)
    inbound = Inbound(fleet.topics, fleet.public_key, Checkpoints(tmp_path), verifier=verifier)
    try:
        if worker:
            assert inbound.handle_many(state, items) == []
        else:
            for topic, payload in items:
                inbound.handle(state, topic, payload)
        inbound.flush(state)
    finally:
        if verifier is None:
            inbound.close()
    return state


def outcome(state):
    return (state.accepted, state.rejected_by, state.ciphertext_sum, dict(state.hashes))


def rejections(caplog):
    return [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()
            or "ignoring" in r.getMessage()]


def test_a_burst_with_the_worker_accepts_rejects_and_sums_as_inline(
        fleet, other, tmp_path, caplog, monkeypatch, verifier):
    monkeypatch.setattr(inbound_module, "CHUNK", 4)  # several chunks in flight
    items = burst(fleet, other)
    with caplog.at_level(logging.INFO, "fedmq.aggregator.service"):
        want = run(fleet, tmp_path / "inline", items, worker=False)
        logged = rejections(caplog)
        caplog.clear()
        got = run(fleet, tmp_path / "worker", items, worker=True, verifier=verifier)
    assert verifier.starts == 1  # the burst did go through the worker
    assert outcome(got) == outcome(want)
    assert rejections(caplog) == logged
    agents = [a for a, _ in fleet.payloads]
    # The forged update held no place: its agent's genuine one right after counts.
    assert agents[4] in got.accepted and agents[5] not in got.accepted
    assert got.rejected_by == {"forged": 1, OTHER_KEY: 2, "wrong-topic": 1}
    assert sorted(got.accepted) == sorted(a for a in agents if a != agents[5])


def test_killing_the_worker_mid_burst_loses_nothing_and_accepts_nothing_unverified(
        fleet, other, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(inbound_module, "CHUNK", 4)
    killed: list[int] = []

    class Dying(Verifier):
        def submit(self, records: list[bytes]) -> bool:
            sent = super().submit(records)
            if self.starts == 1 and not killed and self.pid is not None:
                # After the first chunk is in: the worker dies holding it.
                os.kill(self.pid, signal.SIGKILL)
                killed.append(self.pid)
            return sent

    items = burst(fleet, other)
    want = run(fleet, tmp_path / "inline", items, worker=False)
    dying = Dying()
    dying.start()
    try:
        with caplog.at_level(logging.WARNING, "fedmq.aggregator.service"):
            got = run(fleet, tmp_path / "killed", items, worker=True, verifier=dying)
        assert killed and outcome(got) == outcome(want)
        lost = [r for r in caplog.records if "signature worker lost" in r.getMessage()]
        assert len(lost) == 1
        # The next burst starts a new worker, which verifies again.
        again = run(fleet, tmp_path / "again", items, worker=True, verifier=dying)
        assert dying.starts == 2 and outcome(again) == outcome(want)
    finally:
        dying.close()


def test_a_verdict_spares_the_inline_check_only_for_the_enrolled_key(fleet):
    state = open_round(fleet)
    (a, pa), (b, _) = fleet.payloads[:2]
    bad = decode_update(forged(pa), fleet.public_key)
    # A verdict for some other key (b's) is no verdict for a's: verified inline, rejected.
    with pytest.raises(Rejected, match="forged"):
        state.hold(bad, a, verified_by=fleet.allow_list[b])
    # Nor is an equal key that is not the allow-list's own object.
    with pytest.raises(Rejected, match="forged"):
        state.hold(bad, a, verified_by=public_key_from_hex(public_key_hex(fleet.allow_list[a])))
    state.hold(decode_update(pa, fleet.public_key), a, verified_by=fleet.allow_list[a])
    assert state.held == 1


def test_a_stopped_burst_returns_what_it_did_not_handle(fleet, other, tmp_path, monkeypatch,
                                                        verifier):
    monkeypatch.setattr(inbound_module, "CHUNK", 4)
    items = burst(fleet, other)
    want = run(fleet, tmp_path / "inline", items, worker=False)
    state = open_round(fleet)
    inbound = Inbound(fleet.topics, fleet.public_key, Checkpoints(tmp_path / "w"),
                      verifier=verifier)
    seen = iter(range(len(items)))
    left = inbound.handle_many(state, items, stop=lambda: next(seen) == 5)
    assert left == items[6:]
    assert inbound.handle_many(state, left) == []  # the worker is still in step
    inbound.flush(state)
    assert outcome(state) == outcome(want)


def test_no_worker_is_left_after_close(fleet, other, tmp_path):
    inbound = Inbound(fleet.topics, fleet.public_key, Checkpoints(tmp_path))
    state = open_round(fleet)
    inbound.handle(state, *burst(fleet, other)[0])  # one message: inline, no worker
    assert inbound.verifier.pid is None
    inbound.handle_many(state, burst(fleet, other)[1:])  # starts one, verifies inline meanwhile
    pid = inbound.verifier.pid
    assert pid is not None
    os.kill(pid, 0)  # it runs
    inbound.close()
    assert inbound.verifier.pid is None
    with pytest.raises(ProcessLookupError):  # gone, and reaped
        os.kill(pid, 0)
