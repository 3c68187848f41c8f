"""What one client may cost the embedded broker: pure bookkeeping, no amqtt, no I/O.

The broker (``broker.amqtt_broker``) asks these classes whether to let a
connection wait for its CONNECT, whether a source may have its password
hashed, and under what session key a logged-in client lives.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from fedmq.protocol.errors import ConfigError

# A fleet client subscribes to at most 3 filters; these leave room for tools
# while bounding what one SUBSCRIBE or one session can make the broker store.
MAX_FILTERS_PER_SUBSCRIBE = 16
MAX_FILTERS_PER_SESSION = 64
# CONNECT, SUBSCRIBE, UNSUBSCRIBE and the acknowledgements of a fleet are a few
# hundred bytes; 64 KiB still admits the longest single MQTT string.
MAX_CONTROL_PACKET_BYTES = 65536
# Connections that have not completed CONNECT: when more wait, the oldest goes.
MAX_PENDING_CONNECTIONS = 256
MAX_PENDING_PER_SOURCE = 64
# Failed password checks: after this many from one address within the window
# the address is refused without hashing until its oldest failure ages out.
MAX_LOGIN_FAILURES = 5
LOGIN_FAILURE_WINDOW = 60.0
# Password hashes checked at once (each is ~100 ms of Argon2 on a worker thread).
HASH_WORKERS = 2
# Password checks queued or running at once (one per source address), beyond: refused.
MAX_HASH_WAITING = 64
# Messages kept for one offline persistent session (Mosquitto's default).
MAX_QUEUED_MESSAGES = 1000


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection caps of the embedded broker (see the constants above)."""

    max_payload_bytes: int
    connect_timeout: float = 10.0
    max_control_packet_bytes: int = MAX_CONTROL_PACKET_BYTES
    max_filters_per_subscribe: int = MAX_FILTERS_PER_SUBSCRIBE
    max_filters_per_session: int = MAX_FILTERS_PER_SESSION
    max_pending: int = MAX_PENDING_CONNECTIONS
    max_pending_per_source: int = MAX_PENDING_PER_SOURCE
    max_queued_messages: int = MAX_QUEUED_MESSAGES
    # With a password file, sessions are keyed by user name and client id.
    bind_client_id: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.connect_timeout, bool) or not isinstance(
                self.connect_timeout, (int, float)) or not 0 < self.connect_timeout <= 3600:
            raise ConfigError("broker.connect_timeout must be a number of seconds in (0, 3600]")
        for name in ("max_payload_bytes", "max_control_packet_bytes",
                     "max_filters_per_subscribe", "max_filters_per_session", "max_pending",
                     "max_pending_per_source", "max_queued_messages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"broker limit {name} must be a positive integer")


def session_key(username: str | None, client_id: str) -> str:
    """The broker's session key for a client, when client ids are bound to logins.

    Sessions of one user live in that user's namespace, so no other login (and
    no anonymous client) can resume, replace or delete them by choosing the
    same client id; as with Mosquitto's ``use_username_as_clientid`` a user
    reaches only its own sessions, yet one login may hold several connections
    (an aggregator and its monitoring tools). The length prefix keeps the key
    unambiguous whatever the names contain; anonymous keys start with '-',
    user keys with a digit.
    """
    if username is None:
        return f"-:{client_id}"
    return f"{len(username)}:{username}:{client_id}"


class FailedLogins:
    """Failed password checks per source address within a sliding window."""

    def __init__(self, *, max_failures: int = MAX_LOGIN_FAILURES,
                 window: float = LOGIN_FAILURE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or window <= 0:
            raise ValueError("max_failures must be >= 1 and window > 0")
        self._max, self._window, self._clock = max_failures, window, clock
        self._failures: dict[Hashable, deque[float]] = {}

    def _recent(self, source: Hashable) -> deque[float]:
        times = self._failures.get(source)
        if times is None:
            return deque()
        cutoff = self._clock() - self._window
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[source]
        return times

    def blocked(self, source: Hashable) -> bool:
        """True while ``source`` has used up its failures in the window."""
        return len(self._recent(source)) >= self._max

    def failed(self, source: Hashable) -> None:
        times = self._recent(source)
        self._failures[source] = times
        times.append(self._clock())
        if len(self._failures) > 100_000:  # a spray from many addresses: forget the stalest
            self._failures.pop(next(iter(self._failures)))


class PendingConnections:
    """Connections waiting for their CONNECT, oldest first; admitting one over a cap
    evicts the oldest of its source (per-source cap) or the oldest of all.

    A legitimate client sends CONNECT within a round trip of opening its socket,
    so only connections that sat idle are ever evicted; an idle flood therefore
    cannot keep a real client out (Mosquitto relies on the kernel backlog and
    its own timeout instead).
    """

    def __init__(self, *, max_pending: int = MAX_PENDING_CONNECTIONS,
                 max_per_source: int = MAX_PENDING_PER_SOURCE) -> None:
        self._max, self._max_per_source = max_pending, max_per_source
        self._waiting: OrderedDict[object, Hashable] = OrderedDict()
        self._per_source: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, token: object, source: Hashable) -> list[object]:
        """Register ``token`` from ``source``; return the tokens to close now."""
        evicted = []
        if self._per_source.get(source, 0) >= self._max_per_source:
            oldest = next(t for t, s in self._waiting.items() if s == source)
            self.release(oldest)
            evicted.append(oldest)
        elif len(self._waiting) >= self._max:
            oldest = next(iter(self._waiting))
            self.release(oldest)
            evicted.append(oldest)
        self._waiting[token] = source
        self._per_source[source] = self._per_source.get(source, 0) + 1
        return evicted

    def release(self, token: object) -> None:
        source = self._waiting.pop(token, None)
        if source is None:
            return
        left = self._per_source[source] - 1
        if left:
            self._per_source[source] = left
        else:
            del self._per_source[source]
