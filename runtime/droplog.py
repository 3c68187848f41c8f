"""Counting dropped messages without letting a flood flood the log.

A sender that floods us gets its messages dropped; logging every drop would
turn the flood into a disk and CPU problem of its own. ``DropLog`` counts drops
per key (an agent id or topic) and writes at most one line per key per
``interval`` seconds, carrying the count since the last line. Thread-safe:
paho's network thread and the role's thread both report drops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: How many distinct keys are tracked; beyond it new keys share one bucket, so a
#: sender inventing topic names cannot grow this table without bound.
MAX_KEYS = 4096
OVERFLOW_KEY = "(other senders)"


class DropLog:
    def __init__(self, logger: logging.Logger, *, interval: float = 5.0,
                 level: int = logging.WARNING, about: str = "from {}",
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._log = logger
        self._interval = interval
        self._level = level
        self._about = about  # how a line names the key: a sender ("from {}") or a reason
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}  # drops not yet logged
        self._last: dict[str, float] = {}  # when the key was last logged
        self.total = 0

    def drop(self, key: str, why: str) -> None:
        """Count one drop of ``key``'s message; log ``why`` with the count when due."""
        now = self._clock()
        with self._lock:
            self.total += 1
            if key not in self._last and len(self._last) >= MAX_KEYS:
                self._prune(now)
                if len(self._last) >= MAX_KEYS:
                    key = OVERFLOW_KEY
            count = self._pending.get(key, 0) + 1
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._pending[key] = count
                return
            self._pending[key] = 0
            self._last[key] = now
        # Outside the lock: a slow log handler must not block the other thread.
        if count == 1:
            self._log.log(self._level, "dropped a message %s: %s", self._about.format(key), why)
        else:
            self._log.log(self._level, "dropped %d messages %s in %.0f s, latest: %s",
                          count, self._about.format(key), self._interval, why)

    def _prune(self, now: float) -> None:
        """Forget keys quiet for a whole interval with nothing pending (lock held)."""
        for key in [k for k, t in self._last.items()
                    if now - t >= self._interval and not self._pending.get(k)]:
            del self._last[key]
            self._pending.pop(key, None)
