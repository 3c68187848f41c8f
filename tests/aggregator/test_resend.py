"""aggregator.resend: asks gathered into at most one re-send per interval, none lost."""

from __future__ import annotations

from fedmq.aggregator.resend import Resends
from fedmq.protocol.holdings import Holdings

KEY, ROUND = b"key announcement", b"round announcement"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_asks_makes_one_resend_per_interval_and_the_last_ask_is_answered() -> None:
    clock = Clock()
    resends = Resends(5.0, clock)
    assert resends.due() == (False, False, 0)  # nobody asked
    resends.ask(Holdings.of(KEY, ROUND), KEY, ROUND)  # holds everything: not an ask
    assert resends.due() == (False, False, 0)
    for _ in range(1000):
        resends.ask(Holdings.of(KEY, None), KEY, ROUND)
    assert resends.due() == (False, True, 1000)
    sent = 1
    for step in range(1, 101):  # 10 s of asks, one every 0.1 s
        clock.now = step / 10
        resends.ask(Holdings(), KEY, ROUND)
        if any(resends.due()[:2]):
            sent += 1
    assert sent == 3 and resends.sent == 3  # at 0, 5 and 10 s
    clock.now += 4.9
    resends.ask(Holdings(), KEY, ROUND)
    assert resends.due() == (False, False, 0)  # still in the pause: remembered ...
    clock.now += 0.2
    assert resends.due() == (True, True, 1)  # ... and answered when it ends


def test_nothing_to_send_before_the_first_announcement() -> None:
    resends = Resends(1.0, Clock())
    resends.ask(Holdings(), None, None)
    assert resends.due() == (False, False, 0)
