"""The aggregator's record of its retained announcements (aggregator.announcer)."""

from __future__ import annotations

import logging
import time

import pytest

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


def test_our_own_earlier_copy_is_replaced_at_info_a_foreign_one_warns(caplog):
    """Issue 24: a restarted aggregator warned about its own earlier retained messages."""
    from support import AGGREGATOR_SIGNER

    from fedmq.protocol.crypto.signing import Signer, sign_document

    caplog.set_level(logging.INFO)
    a = Announcer((KEY, ROUND), own_key=AGGREGATOR_SIGNER.public_key)
    a.connected()
    a.published(ROUND, sign_document({"round": 2}, AGGREGATOR_SIGNER))
    earlier = sign_document({"round": 7, "run": "an earlier run"}, AGGREGATOR_SIGNER)
    foreign = sign_document({"round": 7, "run": "an earlier run"}, Signer.from_seed(b"other"))
    for payload in (earlier, foreign, b"not json", b"[" * 100_000, b'{"sig": "zz"}'):
        assert a.observe(ROUND, payload) and a.due() == (False, [ROUND])  # all put back
    said = [(r.levelno, r.getMessage()[:60]) for r in caplog.records]
    assert said[0] == (logging.INFO, f"the broker handed out an earlier message of this "
                                     f"aggregator on {ROUND}"[:60])
    assert [level for level, _ in said] == [logging.INFO] + [logging.WARNING] * 4
    assert all("did not publish" in m for m in caplog.messages[1:])


@pytest.mark.slow
def test_a_restart_with_the_broker_up_is_quiet_about_its_own_retained_messages(
        broker_port, make_aggregator, start_agents, caplog):
    """A real run finishes and leaves its retained key and round on a real broker; the
    restarted aggregator (same keys and state, a new connection) starts a new run and says
    no WARNING about either; a retained key signed by someone else still is one."""
    from mqtt_support import Probe
    from support import run_in_thread, wait_until

    from fedmq.protocol.crypto.codec import CodecParams
    from fedmq.protocol.crypto.paillier import fingerprint
    from fedmq.protocol.crypto.signing import Signer
    from fedmq.protocol.messages import PubKeyMessage

    start_agents(broker_port, 1)
    first = make_aggregator(broker_port, rounds=1)
    first.run()
    assert [r.round_id for r in first.results] == [1]
    topics = first.config.topics
    caplog.clear()
    caplog.set_level(logging.INFO)
    # Waits for a second device that never comes: up, announced, judging its topics.
    second = make_aggregator(broker_port, rounds=1, min_agents=2, start_timeout=60.0)
    thread, _ = run_in_thread(second.run)
    forger = Probe(broker_port, "forger")
    try:
        wait_until(lambda: "waiting for" in caplog.text.lower() or second.store.run_id
                   != first.store.run_id, "the restarted aggregator to start its run", 20)
        time.sleep(1.0)  # the broker's retained copies and our echoes have come back
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert warned == [], warned
        own = [r for r in caplog.records if "earlier message of this aggregator" in
               r.getMessage()]
        assert own and all(r.levelno == logging.INFO for r in own)
        assert {topics.pubkey, topics.round} >= {r.args[0] for r in own}
        assert any("starting a new run" in r.getMessage() and r.levelno == logging.INFO
                   for r in caplog.records)
        forged_by = Signer.from_seed(b"forger")
        forged = PubKeyMessage(fleet=topics.fleet, n_hex=format(second.public_key.n, "x"),
                               fingerprint=fingerprint(second.public_key), codec=CodecParams(),
                               signing_key=forged_by.public_hex).to_bytes(forged_by)
        assert forger.connect()
        forger.publish(topics.pubkey, forged, retain=True)
        wait_until(lambda: "did not publish" in caplog.text, "the forged key to be noticed")
        warned = [r for r in caplog.records if "did not publish" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert topics.pubkey in warned[0].getMessage()
    finally:
        forger.close()
        second.stop()
        thread.join(10)


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
