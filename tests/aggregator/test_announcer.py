"""The aggregator's record of its retained announcements (aggregator.announcer)."""

from __future__ import annotations

from fedmq.aggregator.announcer import Announcer

KEY, ROUND = "fedmq/t/pubkey", "fedmq/t/round"


def test_the_first_connection_is_no_reconnect_whatever_the_order():
    # paho runs the on-connect hook after connect() returned: the first announcement
    # may already be out. Republishing then made the key appear twice (flaky test).
    a = Announcer((KEY, ROUND))
    a.published(KEY, b"key")
    a.connected()
    assert a.due() == (False, [])
    a.connected()  # a real reconnect
    assert a.due() == (True, [])
    assert a.due() == (False, [])  # reported once


def test_a_copy_that_is_not_ours_is_stale_and_our_echo_is_not(caplog):
    a = Announcer((KEY, ROUND))
    a.connected()
    a.published(KEY, b"key-1")
    assert a.observe(KEY, b"key-1") and a.due() == (False, [])
    assert a.observe(KEY, b"forged") and a.due() == (False, [KEY])
    assert "did not publish" in caplog.text
    assert not a.observe("fedmq/t/update/x", b"u")  # not one of ours: handed on
    a.published(KEY, b"key-2")
    caplog.clear()
    assert a.observe(KEY, b"key-1") and a.due() == (False, [KEY])  # our older copy
    assert "did not publish" not in caplog.text


def test_our_echo_is_judged_when_it_comes_not_at_the_next_check():
    # The aggregator checks between its own steps: round 1's echo came back, then it
    # announced round 2, then it checked. Round 1's echo then looked like a stale copy
    # of round 2, and round 2 went out twice (every other round of bench-flower).
    a = Announcer((KEY, ROUND))
    a.connected()
    a.published(ROUND, b"round-1")
    assert a.observe(ROUND, b"round-1")
    a.published(ROUND, b"round-2")
    assert a.due() == (False, [])


def test_a_late_echo_of_our_previous_announcement_is_not_stale_but_a_replay_is(caplog):
    a = Announcer((KEY, ROUND))
    a.connected()
    a.published(ROUND, b"round-1")
    a.published(ROUND, b"round-2")
    assert a.observe(ROUND, b"round-1") and a.due() == (False, [])  # late echo
    assert a.observe(ROUND, b"round-2") and a.due() == (False, [])  # echo
    assert a.observe(ROUND, b"round-1") and a.due() == (False, [ROUND])  # replayed
    assert a.observe(ROUND, b"forged") and a.due() == (False, [ROUND])
    assert "did not publish" in caplog.text


def test_the_echoes_awaited_stay_bounded_by_the_history_of_our_own():
    a = Announcer((ROUND,))
    for i in range(100):  # published, never echoed (e.g. across a reconnect)
        a.published(ROUND, f"round-{i}".encode())
    assert a.observe(ROUND, b"round-0") and a.due() == (False, [ROUND])  # long gone
    assert len(a._echoes[ROUND]) <= 8


def test_the_echo_of_a_copy_sent_again_is_ours_even_after_the_next_round(caplog):
    # A non-retained copy of round 1 (a device asked) comes back after round 2 was
    # announced: ours, not a stale copy to put right.
    a = Announcer((KEY, ROUND))
    a.connected()
    a.published(ROUND, b"round-1")
    assert a.observe(ROUND, b"round-1")
    a.resent(ROUND, b"round-1")
    a.published(ROUND, b"round-2")
    assert a.observe(ROUND, b"round-1")
    assert a.due() == (False, []) and not caplog.records
    assert a.observe(ROUND, b"round-1")  # a third copy: nobody sent it
    assert a.due() == (False, [ROUND])
