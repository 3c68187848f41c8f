"""protocol.holdings: what a device's ask names, what it lacks, and when it asks."""

from __future__ import annotations

import pytest

from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.holdings import ASK_AFTER, KEY_SETTLE, Asks, Holdings, announcement_digest
from fedmq.protocol.messages import StatusMessage

KEY, ROUND = b'{"schema": "fedmq.pubkey/3"}', b'{"schema": "fedmq.round/1"}'


def test_a_device_lacks_exactly_what_it_does_not_hold() -> None:
    assert Holdings().lacks(KEY, ROUND) == (True, True)
    assert Holdings.of(KEY, None).lacks(KEY, ROUND) == (False, True)
    assert Holdings.of(KEY, ROUND).lacks(KEY, ROUND) == (False, False)
    assert Holdings.of(KEY, ROUND).lacks(KEY, ROUND + b" ") == (False, True)  # a newer round
    # Another key: the round too, whatever it holds (it was accepted under the old key).
    assert Holdings.of(b"old key", ROUND).lacks(KEY, ROUND) == (True, True)
    assert Holdings().lacks(None, None) == (False, False)  # nothing announced yet
    assert Holdings().lacks(KEY, None) == (True, False)


def test_holdings_travel_in_the_status_and_older_statuses_still_parse() -> None:
    holds = Holdings.of(KEY, ROUND)
    status = StatusMessage(agent_id="pi-1", state="online", holds=holds)
    assert StatusMessage.from_bytes(status.to_bytes()).holds == holds
    assert b"holds" not in StatusMessage(agent_id="pi-1", state="online").to_bytes()
    assert StatusMessage.from_bytes(StatusMessage(agent_id="pi-1", state="online")
                                    .to_bytes()).holds is None
    assert holds.key == announcement_digest(KEY) and len(holds.key) == 16
    # A newer device may say more: unknown fields are ignored.
    assert Holdings.from_dict({"key": holds.key, "round": "", "more": 1}) == Holdings(holds.key)


@pytest.mark.parametrize("doc", [[], {"key": 5}, {"key": "xyz"}, {"round": "0" * 17},
                                 {"round": "g" * 16}])
def test_bad_holdings_are_refused_with_one_line(doc: object) -> None:
    with pytest.raises(ProtocolError, match="holds"):
        Holdings.from_dict(doc)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_device_asks_once_per_connection_and_after_a_new_key() -> None:
    clock = Clock()
    asks = Asks(clock)
    assert not asks.due() and asks.wait(2.0) == 2.0  # not connected: never
    asks.connected()
    assert asks.wait(2.0) == 0.0  # the loop must notice the connection at once
    assert not asks.due()
    asks.key(announcement_digest(KEY))  # the retained key, just after connecting
    clock.now += ASK_AFTER - 0.1
    assert not asks.due() and asks.wait(5.0) == pytest.approx(0.1)
    clock.now += 0.1
    assert asks.due()
    asks.asked(Holdings.of(KEY, ROUND))
    clock.now += 60
    assert not asks.due()  # one ask per connection
    asks.key(announcement_digest(KEY))  # the same key again (a re-send): no ask
    clock.now += KEY_SETTLE
    assert not asks.due()
    asks.key(announcement_digest(b"a restarted aggregator's key"))
    assert not asks.due()
    clock.now += KEY_SETTLE
    assert asks.due() and not asks.due()
    asks.connected()  # a reconnect asks again
    assert not asks.due()
    clock.now += ASK_AFTER
    assert asks.due()
