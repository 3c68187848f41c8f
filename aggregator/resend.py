"""Sending the key and round again to devices that ask for them, at most once per interval.

A device whose broker node lacks the retained announcements says what it holds in its
status (protocol.holdings). However many devices ask, and however often, the announcer
(aggregator or relay) sends each announcement again at most once per ``every`` seconds: an
ask during the pause is remembered and answered when it ends, so no ask is lost and a
flood of statuses cannot make the announcer publish in a loop. The copies are not
retained: a retained re-publish lands on the announcer's own node only, a live copy
reaches every subscriber on every node.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fedmq.protocol.holdings import Holdings


class Resends:
    """Asks gathered between two re-sends; one thread (the announcer's loop) uses it."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._key = self._round = False  # asked for since the last re-send
        self._asks = 0
        self._next = 0.0  # no re-send before this clock reading
        self.sent = 0  # re-sends made (tests, operators)

    def ask(self, holds: Holdings, key: bytes | None, round_: bytes | None) -> None:
        """A device holding ``holds`` asks; ``key``/``round_``: the latest announcements."""
        need_key, need_round = holds.lacks(key, round_)
        if need_key or need_round:
            self._key |= need_key
            self._round |= need_round
            self._asks += 1

    def due(self) -> tuple[bool, bool, int]:
        """(send the key, send the round, asks answered) now; nothing during the pause."""
        if not (self._key or self._round) or self._clock() < self._next:
            return False, False, 0
        due = self._key, self._round, self._asks
        self._key = self._round = False
        self._asks = 0
        self._next = self._clock() + self.every
        self.sent += 1
        return due
