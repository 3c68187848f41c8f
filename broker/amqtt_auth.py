"""Password checks for the embedded broker: off the event loop, rate-limited per source.

amqtt's ``FileAuthPlugin`` verifies an Argon2 hash (~100 ms) on the event loop,
so every wrong-password CONNECT stalls all traffic of the broker for that long
and a flood of them stalls it for good; it also answers at once for an unknown
user name, which tells an attacker which names exist. ``ThreadedFileAuthPlugin``:

- verifies on a few worker threads, and a dummy hash for an unknown user;
- checks one login at a time per source address (several processes on one
  host, or devices behind one NAT, are served in turn; a flood's CONNECTs from
  one address queue behind each other and, once the address is blocked, are
  refused without hashing) and lets at most ``max_waiting`` addresses wait for
  a worker (beyond, refused without hashing: the client retries with backoff);
- serves addresses that logged in successfully before ahead of the others, so
  a device behind a known address is not queued behind a spray from new ones;
- after ``max_failures`` failed checks from one address within
  ``failure_window`` seconds refuses that address without hashing;
- remembers, in memory only, a keyed HMAC of each user's last verified password,
  so a device that logged in before reconnects without an Argon2 check and is
  not delayed by a flood from other addresses. (Whoever can read the broker's
  memory could brute-force that HMAC faster than Argon2; such a reader already
  sees every message and the password of every login in flight.)

The trade-off: an address that failed too often is locked out for up to the
window even with the right password (a device behind the same NAT as an
attacker waits a minute); other addresses are never affected, and a CONNECT
without a user name costs no hash and is not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.plugins.authentication import FileAuthPlugin
from amqtt.session import Session

from fedmq.broker.limits import (
    HASH_WORKERS,
    LOGIN_FAILURE_WINDOW,
    MAX_HASH_WAITING,
    MAX_LOGIN_FAILURES,
    FailedLogins,
)
from fedmq.runtime.droplog import DropLog

log = logging.getLogger(__name__)
MAX_GOOD_SOURCES = 100_000  # remembered addresses of successful logins (bounded memory)

AUTH_PLUGIN = f"{__name__}.ThreadedFileAuthPlugin"


class _PriorityGate:
    """``n`` slots; a waiter with priority gets the next free slot before any other."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiting: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(), deque())

    @contextlib.asynccontextmanager
    async def slot(self, *, priority: bool) -> AsyncIterator[None]:
        if self._free > 0 and not any(self._waiting):
            self._free -= 1
        else:
            fut = asyncio.get_running_loop().create_future()
            self._waiting[0 if priority else 1].append(fut)
            try:
                await fut  # the releaser handed its slot to us
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._release()  # handed over just as we were cancelled
                else:
                    # A releaser may have popped it already (and skipped it, cancelled).
                    with contextlib.suppress(ValueError):
                        self._waiting[0 if priority else 1].remove(fut)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        for queue in self._waiting:
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return
        self._free += 1


class ThreadedFileAuthPlugin(FileAuthPlugin):
    """amqtt's password-file check, on worker threads and with per-address limits."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._failures = FailedLogins(max_failures=self.config.max_failures,
                                      window=self.config.failure_window)
        self._workers = _PriorityGate(self.config.hash_workers)
        self._good_sources: set[str] = set()  # addresses with a successful login
        self._in_flight: dict[str, asyncio.Lock] = {}  # sources with a check queued or running
        self._queued: dict[str, int] = {}  # logins per source waiting or being checked
        self._refusals = DropLog(log, interval=5.0)
        self._hmac_key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}  # user -> HMAC of its last verified password
        # Verified for unknown users so that they cost as much time as known ones.
        self._dummy_hash = self.pwd_hasher.hash("fedmq: no such user")

    def _tag(self, user: str, password: str) -> bytes:
        return hmac.new(self._hmac_key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    async def authenticate(self, *, session: Session) -> bool | None:
        if not session.username:
            return None  # no opinion: AnonymousAuthPlugin decides
        user, password = session.username, session.password or ""
        source = session.remote_address or "?"
        if self._failures.blocked(source):
            self._refusals.drop(source, f"login of {user!r} refused without checking: too "
                                f"many failed logins in {self.config.failure_window:g} s")
            return False
        known = self._verified.get(user)
        if known is not None and hmac.compare_digest(known, self._tag(user, password)):
            return True  # no hash: this password of this user was verified before
        if source not in self._in_flight and len(self._in_flight) >= self.config.max_waiting:
            self._refusals.drop(source, f"login of {user!r} refused without checking: "
                                f"{self.config.max_waiting} addresses are waiting already")
            return False
        stored = self._users.get(user)
        turn = self._in_flight.setdefault(source, asyncio.Lock())
        self._queued[source] = self._queued.get(source, 0) + 1
        try:
            async with turn, self._workers.slot(priority=source in self._good_sources):
                if self._failures.blocked(source):  # failures while this one waited
                    return False
                ok = await asyncio.to_thread(self._verify, password, stored or self._dummy_hash)
        finally:
            self._queued[source] -= 1
            if not self._queued[source]:
                del self._queued[source], self._in_flight[source]
        if ok and stored is not None:
            self._verified[user] = self._tag(user, password)
            if len(self._good_sources) < MAX_GOOD_SOURCES:
                self._good_sources.add(source)
            return True
        self._failures.failed(source)
        self._refusals.drop(source, f"login of {user!r} refused: "
                            + ("wrong password" if stored is not None else "unknown user"))
        return False

    def _verify(self, password: str, hashed: str) -> bool:
        try:
            return bool(self.pwd_hasher.verify(password, hashed))
        except Exception:  # a malformed hash line must refuse, not crash the CONNECT
            log.warning("password hash of a user in the password file cannot be read")
            return False

    @dataclass
    class Config:
        password_file: str | Path | None = None
        max_failures: int = MAX_LOGIN_FAILURES
        failure_window: float = LOGIN_FAILURE_WINDOW
        hash_workers: int = HASH_WORKERS
        max_waiting: int = MAX_HASH_WAITING
