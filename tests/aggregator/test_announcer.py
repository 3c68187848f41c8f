"""The aggregator's record of its retained announcements (aggregator.announcer)."""

from __future__ import annotations

from aggregator.announcer import Announcer

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
