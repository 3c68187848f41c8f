from __future__ import annotations

import pytest

from aggregator.rounds import Rejected, RoundState
from protocol.codec import CodecParams, make_codec
from protocol.paillier import decrypt_ints, encrypt_ints, fingerprint
from protocol.wire import UpdateMessage


@pytest.fixture
def state(keypair):
    pub, _ = keypair
    params = CodecParams(max_agents=5)
    return RoundState(
        fleet="f", round_id=4, expected=frozenset({"a", "b", "c"}), deadline=100.0, quorum=2,
        n_values=2, key_fingerprint=fingerprint(pub), codec_digest=params.digest(fingerprint(pub)),
        codec=make_codec(params, pub.n), public_key=pub, opened_at=0.0)


def update(state, agent, values=(10, 20), **kw):
    cts = encrypt_ints(state.public_key, state.codec.encode(values))
    base = dict(fleet="f", round_id=4, agent_id=agent, key_fingerprint=state.key_fingerprint,
                codec_digest=state.codec_digest, n_values=2, ciphertexts=tuple(cts))
    return UpdateMessage(**{**base, **kw})


def test_accepts_and_sums(state, keypair):
    _, priv = keypair
    state.offer(update(state, "a", (10, 20)), "a")
    state.offer(update(state, "b", (5, -40)), "b")
    sums = state.codec.decode(decrypt_ints(priv, state.ciphertext_sum), 2, 2)
    assert sums == [15, -20]
    assert state.accepted == ["a", "b"]


@pytest.mark.parametrize("change,reason", [
    ({"round_id": 3}, "late update for closed round"),
    ({"round_id": 5}, "not open"),
    ({"fleet": "g"}, "fleet"),
    ({"codec_digest": "x" * 32}, "another key or codec"),
    ({"key_fingerprint": "0" * 64}, "another key or codec"),
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


def test_duplicate_counts_once(state):
    first = update(state, "a")
    state.offer(first, "a")
    snapshot = list(state.ciphertext_sum)
    with pytest.raises(Rejected, match="duplicate"):
        state.offer(first, "a")
    assert state.ciphertext_sum == snapshot and state.accepted == ["a"]


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
