"""The aggregator's progress messages: what they carry, when they go out."""

from __future__ import annotations

from dataclasses import replace

import pytest
from support import AGGREGATOR_SIGNER, small_round

from fedmq.aggregator.progress import EVERY, ProgressReporter, snapshot
from fedmq.aggregator.rounds import Rejected, RoundState
from fedmq.protocol.health import Skip
from fedmq.protocol.progress import ProgressMessage
from fedmq.protocol.topics import Topics

T = Topics("f")


@pytest.fixture
def state(keypair) -> RoundState:
    pub, _ = keypair
    return small_round(pub, expected=("a", "b", "c"), enrolled=("a", "b", "c"),
                       opened_at=50.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sent_messages(sent: list[tuple[str, bytes]]) -> list[ProgressMessage]:
    assert {topic for topic, _ in sent} <= {T.progress}
    return [ProgressMessage.from_bytes(p, verify_with=AGGREGATOR_SIGNER.public_key)
            for _, p in sent]


def test_snapshot_carries_ids_counts_and_reasons_only(state):
    state.accepted.append("a")
    state.members["a"] = ("a",)
    state.members["relay-1"] = ("d", "e")
    state.skipped["c"] = Skip(run_id="run1", round_id=4, code="data-error")
    state.reject("not-enrolled", 2)
    m = snapshot(state, rounds=10, version=3, enrolled=3, online=2)
    assert (m.run_id, m.round_id, m.phase, m.rounds, m.model_version) == ("run1", 4, "training",
                                                                         10, 3)
    assert m.expected == ("a", "b", "c") and m.reported == ("a",)
    assert m.skipped == {"c": "data-error"} and m.rejected == {"not-enrolled": 2}
    assert m.relays == {"relay-1": ("d", "e")}  # a device's own membership is no relay
    assert (m.enrolled, m.online, m.opened_at, m.deadline) == (3, 2, 50.0, 100.0)


def test_rejections_are_counted_by_kind(state):
    with pytest.raises(Rejected):
        state._offer(object(), "x", lambda _m, _t: (_ for _ in ()).throw(
            Rejected("no", kind="forged")), None, "update")
    with pytest.raises(Rejected):
        state._offer(object(), "x", lambda _m, _t: (_ for _ in ()).throw(
            Rejected("no", code="not-enrolled")), None, "update")
    assert state.rejected == 2 and state.rejected_by == {"forged": 1, "not-enrolled": 1}


def test_reports_are_throttled_and_only_on_change(state):
    sent: list[tuple[str, bytes]] = []
    clock = Clock()
    reporter = ProgressReporter(T, AGGREGATOR_SIGNER, lambda t, p: sent.append((t, p)),
                                rounds=10, clock=clock)
    assert reporter.report(state, version=3, enrolled=3, online=3, force=True)
    assert not reporter.report(state, version=3, enrolled=3, online=3)  # within a second
    clock.now += EVERY
    assert not reporter.report(state, version=3, enrolled=3, online=3)  # nothing changed
    state.accepted.append("a")
    assert reporter.report(state, version=3, enrolled=3, online=3)
    state.accepted.append("b")
    clock.now += 0.1
    assert not reporter.report(state, version=3, enrolled=3, online=3)
    assert reporter.report(state, version=3, enrolled=3, online=3, closed=True, force=True)
    messages = sent_messages(sent)
    assert [m.reported for m in messages] == [(), ("a",), ("a", "b")]
    assert [m.closed for m in messages] == [False, False, True]
    # The next round is news even with the same counts.
    assert reporter.report(replace(state, round_id=5), version=4, enrolled=3, online=3,
                           force=True)
