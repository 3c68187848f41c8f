"""What a device holds of the aggregator's announcements: the ``holds`` part of its status.

A clustered broker may keep retained messages on one node only (RabbitMQ 3.10 does, and
hands them only to exact-topic subscriptions), so a device on another node never gets the
retained ``pubkey`` or ``round``; live messages do cross nodes. A status carrying ``holds``
asks the announcer (aggregator or relay) to send again whatever the device lacks; a status
without it (every status of an older agent) asks nothing. Each announcement is named by a
digest of its exact signed bytes, so "holds" is compared, never interpreted. ``Asks`` says
when a device asks; ``aggregator.resend`` how often the announcer answers.
"""

from __future__ import annotations

import hashlib
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedmq.protocol.errors import ProtocolError

DIGEST_CHARS = 16  # hex characters: 64 bits, to tell announcements apart, not to secure them


def announcement_digest(payload: bytes) -> str:
    """The name of one signed announcement (its exact bytes) in a device's ``holds``."""
    return hashlib.sha256(payload).hexdigest()[:DIGEST_CHARS]


def _check(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) not in (0, DIGEST_CHARS) \
            or not set(value) <= set(string.hexdigits):
        raise ProtocolError(f"holds.{name} must be empty or {DIGEST_CHARS} hex characters, "
                            f"got {value!r}"[:200])
    return value


@dataclass(frozen=True)
class Holdings:
    """Digests of the key and round announcements a device accepted ("" for none)."""

    key: str = ""
    round: str = ""

    def __post_init__(self) -> None:
        _check(self.key, "key")
        _check(self.round, "round")

    @classmethod
    def of(cls, key: bytes | None, round_: bytes | None) -> Holdings:
        return cls(key=announcement_digest(key) if key else "",
                   round=announcement_digest(round_) if round_ else "")

    def lacks(self, key: bytes | None, round_: bytes | None) -> tuple[bool, bool]:
        """(send the key, send the round) to a device holding this, given the latest
        announcements (None: none yet). A device without the current key gets both: it
        cannot verify a round without it and has accepted none under it."""
        need_key = key is not None and self.key != announcement_digest(key)
        need_round = round_ is not None and (need_key
                                             or self.round != announcement_digest(round_))
        return need_key, need_round

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "round": self.round}

    @classmethod
    def from_dict(cls, doc: Any) -> Holdings:
        if not isinstance(doc, dict):
            raise ProtocolError("holds must be a JSON object")
        # Unknown fields are ignored: a newer device may say more than we read.
        return cls(key=_check(doc.get("key", ""), "key"),
                   round=_check(doc.get("round", ""), "round"))


# After a (re)connect the broker hands out the retained copies it holds at once; by then
# the device knows whether its node had them. A new key's round follows it closely.
ASK_AFTER = 2.0  # seconds
KEY_SETTLE = 1.0  # seconds


class Asks:
    """When a device (or a relay, upstream) says what it holds: ASK_AFTER seconds after
    every (re)connect (a broker node without the retained announcements gave it nothing),
    and KEY_SETTLE seconds
    after it accepted a key other than the one its last ask named (the aggregator started
    or restarted: on a broker that hands retained statuses to no wildcard subscriber, the
    ask is how the aggregator learns this device is there). The announcer answers only what
    is missing, so a device that has everything costs one status message per connection.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._connections = 0  # counted on paho's thread, read on the agent's
        self._seen = 0
        self._at: float | None = None
        self._asked_key: str | None = None

    def connected(self) -> None:
        self._connections += 1

    def key(self, digest: str) -> None:
        if digest != self._asked_key and self._at is None:
            self._at = self._clock() + KEY_SETTLE

    def asked(self, holds: Holdings) -> None:
        self._asked_key = holds.key

    def due(self) -> bool:
        now = self._clock()
        if self._connections != self._seen:
            self._seen, self._at = self._connections, now + ASK_AFTER
        if self._at is None or now < self._at:
            return False
        self._at = None
        return True

    def wait(self, longest: float) -> float:
        """Seconds the agent's loop may sleep before ``due`` may turn true."""
        if self._connections != self._seen:
            return 0.0
        if self._at is None:
            return longest
        return min(longest, max(0.0, self._at - self._clock()))
