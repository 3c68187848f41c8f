"""Notices to agents: signed, one per agent, round and code, bounded; re-enrolled agents."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support import AGGREGATOR_SIGNER, EnrolledFleet, signer_for, small_round

from fedmq.aggregator import notices
from fedmq.aggregator.notices import Notifier, signed_by
from fedmq.aggregator.rounds import Rejected, RoundState
from fedmq.protocol.crypto.paillier import encrypt_ints, fingerprint, generate_keypair
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.notices import KEY_MISMATCH, NOT_ENROLLED, OTHER_KEY, NoticeMessage
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import UpdateMessage, encode_update

T = Topics("f")


@pytest.fixture
def state(keypair) -> RoundState:
    pub, _ = keypair
    return small_round(pub)


class Sent(list[tuple[str, bytes]]):
    def __call__(self, topic: str, payload: bytes) -> None:
        self.append((topic, payload))

    def notices(self) -> list[NoticeMessage]:
        return [NoticeMessage.from_bytes(p, verify_with=AGGREGATOR_SIGNER.public_key)
                for _, p in self]


def not_enrolled(agent: str) -> Rejected:
    return Rejected(f"agent {agent!r} is not enrolled", code=NOT_ENROLLED,
                    update_key=signer_for(agent).public_hex)


def test_a_flooding_sender_gets_one_notice_per_round_and_code(state):
    sent = Sent()
    notifier = Notifier(T, AGGREGATOR_SIGNER, sent)
    for _ in range(100):
        notifier.rejected(state, "b", not_enrolled("b"))
    notifier.rejected(state, "b", Rejected("late or replayed update"))  # no code: no notice
    notifier.rejected(state, "b", Rejected("values", code="wrong-model"))
    assert [(t, n.code) for t, n in zip([t for t, _ in sent], sent.notices(), strict=True)] == [
        (T.notice("b"), NOT_ENROLLED), (T.notice("b"), "wrong-model")]
    first = sent.notices()[0]
    assert (first.fleet, first.agent_id, first.run_id, first.round_id) == ("f", "b", "run1", 4)
    assert first.update_key == signer_for("b").public_hex
    notifier.rejected(replace(state, round_id=5), "b", not_enrolled("b"))  # next round: again
    assert len(sent) == 3


def test_notices_per_round_are_bounded(state, monkeypatch):
    monkeypatch.setattr(notices, "MAX_NOTICES", 10)
    sent = Sent()
    notifier = Notifier(T, AGGREGATOR_SIGNER, sent)
    for i in range(50):
        notifier.rejected(state, f"id-{i}", Rejected("not enrolled", code=NOT_ENROLLED))
    assert len(sent) == 10 and len(notifier.waiting) == 10


def test_notices_are_signed_by_the_aggregator(state):
    sent = Sent()
    Notifier(T, AGGREGATOR_SIGNER, sent).rejected(state, "b", not_enrolled("b"))
    with pytest.raises(ProtocolError, match="bad signature"):
        NoticeMessage.from_bytes(sent[0][1], verify_with=Signer.generate().public_key)


def test_key_mismatch_notice_only_for_the_agents_own_update(state):
    """An update for another Paillier key is refused before its signature is checked;
    the notice goes out only if the enrolled key signed it."""
    other_pub, _ = generate_keypair(512)
    msg = UpdateMessage(fleet="f", run_id="run1", round_id=4, agent_id="a",
                        key_fingerprint=fingerprint(other_pub), codec_digest="c" * 32,
                        n_values=2, ciphertexts=tuple(encrypt_ints(other_pub, [1])))
    genuine = encode_update(msg, other_pub, signer_for("a"))
    forged = encode_update(msg, other_pub, Signer.generate())
    assert signed_by(genuine, signer_for("a").public_key)
    assert not signed_by(forged, signer_for("a").public_key) and not signed_by(b"x", signer_for(
        "a").public_key)
    sent = Sent()
    notifier = Notifier(T, AGGREGATOR_SIGNER, sent)
    notifier.key_mismatch(state, "a", forged, "update was encrypted for another public key")
    notifier.key_mismatch(state, "b", genuine, "not enrolled either")
    assert sent == []
    notifier.key_mismatch(state, "a", genuine, "update was encrypted for another public key")
    assert [n.code for n in sent.notices()] == [KEY_MISMATCH]


def test_newly_enrolled_needs_the_key_the_update_was_signed_with(state):
    now = [0.0]
    notifier = Notifier(T, AGGREGATOR_SIGNER, Sent(), clock=lambda: now[0])
    notifier.rejected(state, "b", not_enrolled("b"))
    notifier.rejected(state, "a", Rejected("'a' is not enrolled with this key", code=OTHER_KEY,
                                           update_key=signer_for("a2").public_hex))
    reads = []

    def allow_list(entries):
        def read():
            reads.append(1)
            return entries
        return read

    now[0] = 10.0
    assert notifier.newly_enrolled(state, allow_list({"a": signer_for("a").public_key})) == []
    now[0] = 10.5  # re-read at most every RECHECK_SECONDS
    assert notifier.newly_enrolled(state, allow_list({})) == [] and len(reads) == 1
    now[0] = 20.0
    wrong = {"b": Signer.generate().public_key, "a": signer_for("a").public_key}
    assert notifier.newly_enrolled(state, allow_list(wrong)) == []
    now[0] = 30.0
    fresh = {"b": signer_for("b").public_key, "a": signer_for("a2").public_key}
    assert notifier.newly_enrolled(state, allow_list(fresh)) == ["a", "b"]
    assert state.allow_list is fresh and notifier.waiting == {}
    now[0] = 40.0
    assert notifier.newly_enrolled(state, allow_list(fresh)) == [] and len(reads) == 3


def test_a_new_round_forgets_the_waiting_agents(state):
    notifier = Notifier(T, AGGREGATOR_SIGNER, Sent())
    notifier.rejected(state, "b", not_enrolled("b"))
    assert notifier.newly_enrolled(replace(state, round_id=5), EnrolledFleet) == []
    assert notifier.waiting == {}
