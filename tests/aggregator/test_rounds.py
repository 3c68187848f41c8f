from __future__ import annotations

from dataclasses import replace

import gmpy2
import pytest
from support import EnrolledFleet, signer_for

from fedmq.aggregator.rounds import Redelivered, Rejected, RoundState
from fedmq.protocol.crypto.codec import CodecParams, make_codec
from fedmq.protocol.crypto.paillier import ciphertext_size, decrypt_ints, encrypt_ints, fingerprint
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.layout import Section, UpdateLayout, contract_digest
from fedmq.protocol.notices import KEY_MISMATCH, NOT_ENROLLED, OTHER_KEY, WRONG_MODEL
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.wire import UpdateMessage, decode_update, encode_update


def layout(params: CodecParams, modulus: int) -> UpdateLayout:
    """Updates of two values, the last a weight: a training section alone."""
    return UpdateLayout("training", (Section("training", make_codec(params, modulus), 2,
                                             params.max_weight),))


@pytest.fixture
def state(keypair):
    pub, _ = keypair
    params = CodecParams(max_agents=5)
    return RoundState(
        fleet="f", run_id="run1", round_id=4, expected=frozenset({"a", "b", "c"}),
        deadline=100.0, quorum=2, layout=layout(params, pub.n), key_fingerprint=fingerprint(pub),
        codec_digest=contract_digest(params, StatsParams(), fingerprint(pub)),
        max_agents=params.max_agents,
        public_key=pub, allow_list=EnrolledFleet(), opened_at=0.0)


def update(state, agent, values=(10, 20), signer: Signer | None = None, **kw):
    """A signed update as it arrives off the wire (encoded, then decoded)."""
    cts = encrypt_ints(state.public_key, state.layout.encode([values]))
    base = dict(fleet="f", run_id="run1", round_id=4, agent_id=agent,
                key_fingerprint=state.key_fingerprint, codec_digest=state.codec_digest,
                n_values=2, ciphertexts=tuple(cts))
    msg = UpdateMessage(**{**base, **kw})
    payload = encode_update(msg, state.public_key, signer or signer_for(agent))
    return decode_update(payload, state.public_key)


def test_accepts_and_sums(state, keypair):
    _, priv = keypair
    state.offer(update(state, "a", (10, 20)), "a")
    state.offer(update(state, "b", (-5, 40)), "b")
    (sums,) = state.layout.decode(decrypt_ints(priv, state.ciphertext_sum), 2)
    assert sums == [5, 60]
    assert state.accepted == ["a", "b"]


@pytest.mark.parametrize("change,reason", [
    ({"round_id": 3}, "late or replayed update for closed round"),
    ({"round_id": 5}, "not open"),
    ({"fleet": "g"}, "fleet"),
    ({"run_id": "run0"}, "not this run"),
    ({"codec_digest": "x" * 32}, "another key or codec"),
    ({"n_values": 3}, "carries 3 values"),
])
def test_rejects_without_touching_the_sum(state, change, reason):
    state.offer(update(state, "a"), "a")
    before = list(state.ciphertext_sum)
    with pytest.raises(Rejected, match=reason):
        state.offer(update(state, "b", **change), "b")
    assert state.ciphertext_sum == before and state.accepted == ["a"] and state.rejected == 1


def test_agent_id_must_match_topic(state):
    with pytest.raises(Rejected, match="topic"):
        state.offer(update(state, "a"), "b")


def test_unenrolled_agent_is_rejected_with_a_notice_code(state):
    with pytest.raises(Rejected, match="not enrolled") as caught:
        state.offer(update(state, "unenrolled-x"), "unenrolled-x")
    assert caught.value.code == NOT_ENROLLED
    assert caught.value.update_key == signer_for("unenrolled-x").public_hex


def test_update_signed_with_another_key_is_not_enrolled_with_this_key(state):
    """A validly signed update by a key other than the enrolled one: the device's key
    changed (or someone else's device uses its id), which the gateway log says, rather
    than calling it forged."""
    other = Signer.generate()
    with pytest.raises(Rejected, match="'a' is not enrolled with this key") as caught:
        state.offer(update(state, "a", signer=other), "a")
    assert (caught.value.code, caught.value.update_key) == (OTHER_KEY, other.public_hex)
    assert state.accepted == []


def test_an_accepted_update_costs_one_signature_verification(state, monkeypatch):
    """The header's own key is only asked about for a rejection (it names the key in
    the notice): an honest update is verified once, with its enrolled key."""
    calls = []
    original = UpdateMessage.signed_by_named_key

    def counted(self):
        calls.append(self.agent_id)
        return original(self)
    monkeypatch.setattr(UpdateMessage, "signed_by_named_key", counted)
    state.offer(update(state, "a"), "a")
    assert calls == [] and state.accepted == ["a"]
    with pytest.raises(Rejected) as caught:
        state.offer(update(state, "b", signer=Signer.generate()), "b")
    assert calls == ["b"] and caught.value.code == OTHER_KEY


def test_tampered_update_is_forged_and_gets_no_notice(state):
    good = update(state, "a")
    tampered = replace(good, signed_hash=bytes(32))  # the signature no longer matches
    with pytest.raises(Rejected, match="bad signature from 'a': forged") as caught:
        state.offer(tampered, "a")
    assert caught.value.code is None


@pytest.mark.parametrize("change,code", [
    ({"round_id": 3}, None),  # a replay: nothing the device can do
    ({"codec_digest": "x" * 32}, KEY_MISMATCH),
    ({"n_values": 3}, WRONG_MODEL),
])
def test_notice_codes_only_for_what_a_device_can_act_on(state, change, code):
    with pytest.raises(Rejected) as caught:
        state.offer(update(state, "b", **change), "b")
    assert caught.value.code == code


def test_rerandomised_replay_breaks_the_signature(state):
    """A broker multiplying each ciphertext by an encryption of 0 keeps the plaintexts
    and changes every byte: the agent's signature no longer matches."""
    pub = state.public_key
    cts = encrypt_ints(pub, state.layout.encode([(10, 20)]))
    payload = encode_update(UpdateMessage(
        fleet="f", run_id="run1", round_id=4, agent_id="a", key_fingerprint=state.key_fingerprint,
        codec_digest=state.codec_digest, n_values=2, ciphertexts=tuple(cts)), pub,
        signer_for("a"))
    zero = encrypt_ints(pub, [0])[0]
    size = ciphertext_size(pub)
    body_end = len(payload) - 64
    fresh = b"".join(int(gmpy2.f_mod(c * zero, pub.nsquare)).to_bytes(size, "big") for c in cts)
    replayed = payload[:body_end - len(fresh)] + fresh + payload[body_end:]
    with pytest.raises(Rejected, match="bad signature"):
        state.offer(decode_update(replayed, pub), "a")
    state.offer(decode_update(payload, pub), "a")  # the genuine one still counts


def test_redelivery_counts_once_and_second_update_is_rejected(state):
    first = update(state, "a")
    state.offer(first, "a")
    snapshot = list(state.ciphertext_sum)
    with pytest.raises(Redelivered):
        state.offer(first, "a")
    assert state.rejected == 0  # a QoS 1 duplicate is not an attack
    with pytest.raises(Rejected, match="second, different update"):
        state.offer(update(state, "a", (1, 1)), "a")
    assert state.ciphertext_sum == snapshot and state.accepted == ["a"] and state.rejected == 1


def test_sampled_round_accepts_only_selected_agents(state):
    state.sampled = True
    with pytest.raises(Rejected, match="not selected"):
        state.offer(update(state, "d"), "d")
    state.offer(update(state, "a"), "a")


def test_commit_failure_rejects_without_counting(state):
    def fail(_u):
        raise OSError("disk full")
    with pytest.raises(Rejected, match="persist"):
        state.offer(update(state, "a"), "a", commit=fail)
    assert state.accepted == [] and state.ciphertext_sum is None and state.rejected == 1


def test_max_agents_is_enforced(state):
    for agent in ("a", "b", "c", "d", "e"):
        state.offer(update(state, agent), agent)
    with pytest.raises(Rejected, match="max_agents"):
        state.offer(update(state, "f"), "f")


def test_close_rules(state):
    assert state.close_reason(now=50.0) is None
    state.offer(update(state, "a"), "a")
    assert state.close_reason(now=150.0) is None  # past deadline but under quorum
    state.offer(update(state, "b"), "b")
    assert state.close_reason(now=50.0) is None  # quorum, but c may still come
    assert state.close_reason(now=100.0) == "deadline"
    state.offer(update(state, "c"), "c")
    assert state.close_reason(now=50.0) == "all"
