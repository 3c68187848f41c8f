"""Password checks for the embedded broker: off the event loop, rate-limited per source.

amqtt's ``FileAuthPlugin`` verifies an Argon2 hash (~100 ms) on the event loop,
so every wrong-password CONNECT stalls all traffic of the broker for that long
and a flood of them stalls it for good; it also answers at once for an unknown
user name, which tells an attacker which names exist. ``ThreadedFileAuthPlugin``
verifies on a worker thread (a few at a time), verifies a dummy hash for an
unknown user, and after ``max_failures`` failed checks from one address within
``failure_window`` seconds refuses that address without hashing.

The trade-off: an address that failed too often is locked out for up to the
window even with the right password (a device behind the same NAT as an
attacker waits a minute); other addresses are never affected, and a CONNECT
without a user name costs no hash and is not counted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.plugins.authentication import FileAuthPlugin
from amqtt.session import Session

from broker.limits import HASH_WORKERS, LOGIN_FAILURE_WINDOW, MAX_LOGIN_FAILURES, FailedLogins

log = logging.getLogger(__name__)

AUTH_PLUGIN = f"{__name__}.ThreadedFileAuthPlugin"


class ThreadedFileAuthPlugin(FileAuthPlugin):
    """amqtt's password-file check, on worker threads and with a per-address limit."""

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self._failures = FailedLogins(max_failures=self.config.max_failures,
                                      window=self.config.failure_window)
        self._workers = asyncio.Semaphore(self.config.hash_workers)
        # Verified for unknown users so that they cost as much time as known ones.
        self._dummy_hash = self.pwd_hasher.hash("fedmq: no such user")

    async def authenticate(self, *, session: Session) -> bool | None:
        if not session.username:
            return None  # no opinion: AnonymousAuthPlugin decides
        source = session.remote_address or "?"
        if self._failures.blocked(source):
            log.warning("refused login of %r from %s without checking: too many failed logins "
                        "from this address in the last %g s", session.username, source,
                        self.config.failure_window)
            return False
        stored = self._users.get(session.username)
        async with self._workers:
            ok = await asyncio.to_thread(self._verify, session.password or "",
                                         stored or self._dummy_hash)
        if ok and stored is not None:
            return True
        self._failures.failed(source)
        log.warning("refused login of %r from %s: %s", session.username, source,
                    "wrong password" if stored is not None else "unknown user")
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
