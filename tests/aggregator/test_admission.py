"""Admission on paho's thread: exact update sizes, a status cap, a token bucket per agent."""

from __future__ import annotations

import pytest
from support import SPEC, signer_for

from fedmq.aggregator.admission import MAX_BUCKETS, Admission, RateLimiter
from fedmq.aggregator.config import Limits
from fedmq.protocol.crypto.codec import CodecParams, make_codec, quantize_update
from fedmq.protocol.crypto.paillier import ciphertext_size, encrypt_ints, fingerprint
from fedmq.protocol.layout import contract_digest
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import MAX_HEADER, UpdateMessage, encode_update

TOPICS = Topics("test")


def genuine(keypair, agent_id="dev-a") -> bytes:
    public, _ = keypair
    codec = make_codec(CodecParams(), public.n)
    values, _ = quantize_update([0.1] * SPEC.n_params, 10, CodecParams())
    fp = fingerprint(public)
    return encode_update(UpdateMessage(
        fleet="test", run_id="run1", round_id=7, agent_id=agent_id, key_fingerprint=fp,
        codec_digest=contract_digest(CodecParams(), StatsParams(), fp), n_values=len(values),
        ciphertexts=tuple(encrypt_ints(public, codec.encode(values)))), public,
        signer_for(agent_id))


def admission(keypair, clock=lambda: 0.0, **limits) -> Admission:
    public, _ = keypair
    body = make_codec(CodecParams(), public.n).plaintext_count(SPEC.n_params + 1) * \
        ciphertext_size(public)
    return Admission(TOPICS, update_body=body, limits=Limits(**limits), clock=clock)


def test_a_genuine_update_has_exactly_the_size_the_open_round_takes(keypair):
    adm = admission(keypair)
    adm.open_round(7)
    payload = genuine(keypair)
    assert adm.admit(TOPICS.update("dev-a"), payload)
    for wrong in (payload[:-1], payload + b"\0", payload + bytes(4 * 1024 * 1024)):
        assert not adm.admit(TOPICS.update("dev-a"), wrong)
    assert adm.take_dropped() == 3 and adm.take_dropped() == 0


def test_prefix_must_be_an_update_of_this_version(keypair):
    adm = admission(keypair)
    adm.open_round(1)
    payload = bytearray(genuine(keypair))
    payload[4] = 9
    assert not adm.admit(TOPICS.update("dev-a"), bytes(payload))
    assert not adm.admit(TOPICS.update("dev-a"), b"FMQ")
    assert adm.drops.total == 2


def test_without_an_open_round_nothing_larger_than_the_largest_update(keypair):
    adm = admission(keypair)
    payload = genuine(keypair)
    assert adm.admit(TOPICS.update("dev-a"), payload)  # a resumed session's queued update
    assert adm.admit(TOPICS.update("dev-b"), payload + b"\0")  # exactness needs the round
    limit = adm.max_update
    assert limit - len(payload) < MAX_HEADER  # the header is the only slack
    assert adm.admit(TOPICS.update("dev-c"), bytes(limit))
    assert not adm.admit(TOPICS.update("dev-d"), bytes(limit + 1))
    assert adm.close_round() == 0  # nothing is charged to a round that was not open


def test_status_payloads_are_capped(keypair):
    adm = admission(keypair, status_bytes=500)
    assert adm.admit(TOPICS.status("dev-a"), bytes(500))
    assert not adm.admit(TOPICS.status("dev-a"), bytes(501))
    assert adm.take_dropped() == 0  # a status is not an update of the round
    assert adm.admit("fedmq/test/round", bytes(10_000))  # our own echoes are not judged here


def test_each_agent_has_an_update_budget_per_round(keypair):
    adm = admission(keypair, updates_per_round=5)
    adm.open_round(1)
    payload = genuine(keypair)
    topic = TOPICS.update("dev-a")
    assert [adm.admit(topic, payload) for _ in range(7)] == [True] * 5 + [False] * 2
    assert adm.admit(TOPICS.update("dev-b"), payload)  # another agent is not affected
    assert adm.take_dropped() == 2
    adm.open_round(2)  # a new round, a new budget
    assert [adm.admit(topic, payload) for _ in range(6)] == [True] * 5 + [False]


def test_fast_rounds_never_run_out_of_budget(keypair):
    """Rounds of a small model close in ~0.1 s: a per-second limit dropped honest updates
    after ~20 rounds (black-box run, both brokers); a per-round budget never does."""
    now = [0.0]
    adm = admission(keypair, clock=lambda: now[0])
    payload = genuine(keypair)
    for round_id in range(1, 501):
        adm.open_round(round_id)
        assert adm.admit(TOPICS.update("dev-a"), payload), round_id
        assert adm.admit(TOPICS.update("dev-a"), payload), round_id  # a re-send
        adm.close_round()
        now[0] += 0.1


def test_each_agent_has_its_own_status_bucket(keypair):
    now = [0.0]
    adm = admission(keypair, clock=lambda: now[0], status_rate=2.0, status_burst=5)
    status = bytes(100)
    topic = TOPICS.status("dev-a")
    assert [adm.admit(topic, status) for _ in range(7)] == [True] * 5 + [False] * 2
    assert adm.admit(TOPICS.status("dev-b"), status)  # another agent is not affected
    now[0] = 1.0  # two tokens back after one second
    assert [adm.admit(topic, status) for _ in range(3)] == [True, True, False]


def test_buckets_for_invented_ids_are_bounded():
    now = [0.0]
    limiter = RateLimiter(1.0, 2, clock=lambda: now[0])
    assert all(limiter.allow(f"id-{i}") for i in range(MAX_BUCKETS))
    assert not limiter.allow("one-more")  # all buckets are busy: refuse, do not grow
    now[0] = 10.0  # everyone refilled: their buckets can be forgotten
    assert limiter.allow("one-more")
    assert len(limiter._buckets) <= MAX_BUCKETS


@pytest.mark.parametrize("bad", [{"inbox_bytes": 0}, {"status_rate": -1.0},
                                 {"drain_seconds": float("nan")}, {"updates_per_round": True},
                                 {"status_bytes": "4k"}])
def test_limits_reject_nonsense(bad):
    from fedmq.protocol.errors import ConfigError
    with pytest.raises(ConfigError, match=r"limits\."):
        Limits(**bad)
