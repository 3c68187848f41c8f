"""Admission: cheap checks on paho's network thread before a message is queued at all.

Decoding an update costs a JSON parse and a gcd per ciphertext; queueing one
costs its size in memory. A flood of large payloads that merely look like
updates therefore has to be stopped before either, with checks that read no
more than a payload's length and its first seven bytes:

- an update's size follows from the codec: ``count`` ciphertexts of exactly
  ``size`` bytes plus the fixed prefix, the header (whose length the prefix
  states, at most ``wire.MAX_HEADER``) and the signature. While a round is open
  anything else is dropped; while none is open (a resumed session's queued
  messages, the start) nothing larger than the largest possible update passes;
- a status message is small: anything above ``limits.status_bytes`` is dropped;
- each agent id (from the topic) may send ``limits.updates_per_round``
  updates while one round is open (room for re-sends and QoS 1 redeliveries),
  and its status messages pass a token bucket, so one sender cannot monopolise
  the round loop. Updates are budgeted per round, not per second: a fleet with
  a small model closes several rounds a second, and a per-second limit dropped
  honest updates of such a run (black-box run: the run failed at round 23).

Thread-safe: the round loop opens and closes rounds while paho admits.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedmq.aggregator.config import Limits
from fedmq.protocol import partial as pw
from fedmq.protocol.crypto.signing import SIGNATURE_BYTES
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import MAGIC, MAX_HEADER, VERSION
from fedmq.runtime.droplog import DropLog

log = logging.getLogger("fedmq.aggregator.service")

# The update prefix of protocol.wire: magic, version, header length.
_PREFIX = struct.Struct(">4sBH")
MAX_BUCKETS = 65536  # agent ids tracked at once (bounded memory whatever the topics)


def update_size(body_bytes: int, header_len: int) -> int:
    """Exact wire size of an update with ``header_len`` header bytes and this ciphertext body."""
    return _PREFIX.size + header_len + body_bytes + SIGNATURE_BYTES


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """One token bucket per key; at most ``MAX_BUCKETS`` keys (full ones are forgotten)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS and not self._prune(now):
                return False  # a sender inventing ids: refuse new ones until some refill
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _prune(self, now: float) -> bool:
        refill = self.burst / self.rate
        for key in [k for k, b in self._buckets.items() if now - b.at >= refill]:
            del self._buckets[key]
        return len(self._buckets) < MAX_BUCKETS


class Admission:
    """Decides per message whether it is queued; counts what it drops per round."""

    def __init__(self, topics: Topics, *, update_body: int, limits: Limits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if update_body < 1:
            raise ValueError("an update carries at least one ciphertext byte")
        self.topics = topics
        self.update_body = update_body  # the largest body of any phase's update
        self.max_update = update_size(update_body, MAX_HEADER)
        # A relay's partial sum (protocol.partial) comes on the relay's update topic.
        self.max_partial = pw.partial_size(update_body, pw.MAX_HEADER)
        self._open_body = update_body  # the body an update of the open round has
        self.limits = limits
        self.drops = DropLog(log)
        self._rates = RateLimiter(limits.status_rate, limits.status_burst, clock)
        self._lock = threading.Lock()
        self._open: int | None = None
        self._dropped_updates = 0
        self._sent: dict[str, int] = {}  # agent -> updates admitted since the round opened

    def open_round(self, round_id: int, update_body: int | None = None) -> None:
        """From now on an update must have exactly the size the open round takes
        (``update_body`` ciphertext bytes: a statistics, training or evaluation update)."""
        with self._lock:
            self._open_body = update_body or self.update_body
            if self._open != round_id:
                self._open, self._dropped_updates = round_id, 0
                self._sent.clear()

    def close_round(self) -> int:
        """No round open any more; returns how many updates were dropped while it was."""
        with self._lock:
            dropped, self._open, self._dropped_updates = self._dropped_updates, None, 0
            self._sent.clear()
            return dropped

    def take_dropped(self) -> int:
        """Updates dropped for the open round since the last call (its ``rejected`` count)."""
        with self._lock:
            dropped, self._dropped_updates = self._dropped_updates, 0
            return dropped

    def filter(self, put: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
        """``put`` behind admission: the MQTT message handler."""
        def admit_then_put(topic: str, payload: bytes) -> None:
            if self.admit(topic, payload):
                put(topic, payload)
        return admit_then_put

    def admit(self, topic: str, payload: bytes) -> bool:
        if (agent := self.topics.agent_of(topic, "update")) is not None:
            is_update, why = True, self._update_problem(payload)
        elif (agent := self.topics.agent_of(topic, "status")) is not None:
            is_update, why = False, None if len(payload) <= self.limits.status_bytes else (
                f"status of {len(payload)} bytes, the cap is {self.limits.status_bytes}")
        else:
            return True  # our own retained echoes and the like: small, and logged later
        with self._lock:
            if why is None:
                why = self._count_update(agent) if is_update else self._count_status(agent)
            if why is None:
                return True
            if is_update and self._open is not None:
                self._dropped_updates += 1
        self.drops.drop(agent, why)
        return False

    def _count_update(self, agent: str) -> str | None:
        sent = self._sent.get(agent, 0)
        if sent >= self.limits.updates_per_round:
            return f"over {self.limits.updates_per_round} updates in one round from one agent"
        if sent == 0 and len(self._sent) >= MAX_BUCKETS:
            return "too many agents sent updates this round"
        self._sent[agent] = sent + 1
        return None

    def _count_status(self, agent: str) -> str | None:
        if self._rates.allow(agent):
            return None
        return f"over {self._rates.rate:g} status messages/s (burst {self._rates.burst})"

    def _update_problem(self, payload: bytes) -> str | None:
        size = len(payload)
        if pw.is_partial(payload):
            return self._partial_problem(payload)
        if size > self.max_update:
            return f"update of {size} bytes, no update for this key and model exceeds " \
                   f"{self.max_update}"
        with self._lock:
            open_round = self._open
        if open_round is None:
            return None
        if size < _PREFIX.size:
            return f"update of {size} bytes is shorter than its prefix"
        magic, version, header_len = _PREFIX.unpack_from(payload)
        if magic != MAGIC or version != VERSION or header_len > MAX_HEADER:
            return "not a fedmq update of this version (prefix)"
        with self._lock:
            expected = update_size(self._open_body, header_len)
        if size != expected:
            return f"update of {size} bytes, round {open_round} takes {expected} " \
                   f"with this {header_len}-byte header"
        return None

    def _partial_problem(self, payload: bytes) -> str | None:
        size = len(payload)
        if size > self.max_partial:
            return f"partial sum of {size} bytes exceeds {self.max_partial}"
        with self._lock:
            open_round, body = self._open, self._open_body
        if open_round is None:
            return None
        if size < pw.PREFIX.size:
            return f"partial sum of {size} bytes is shorter than its prefix"
        _, version, header_len = pw.PREFIX.unpack_from(payload)
        if version != pw.VERSION or header_len > pw.MAX_HEADER:
            return "not a fedmq partial sum of this version (prefix)"
        if size != (expected := pw.partial_size(body, header_len)):
            return f"partial sum of {size} bytes, round {open_round} takes {expected} " \
                   f"with this {header_len}-byte header"
        return None
