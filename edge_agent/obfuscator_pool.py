"""A pool of precomputed Paillier obfuscators, filled by a background thread.

The agent spends idle time between rounds computing r^n mod n^2, so that when
a round's update is ready, encryption is one multiplication per ciphertext.
Filling pauses at every ``take()`` and resumes on ``refill()``: the filler and
the encrypting thread share the GIL, so a refill running during encryption
would add up to a switch interval (5 ms) of latency per ciphertext batch.

Each obfuscator is handed out exactly once (popped, never copied) and lives
only in memory: a restarted agent starts with an empty pool, so nothing can be
reused across restarts.

A simulation runs hundreds of agents per process: there one ``SharedFiller``
thread fills all their pools in turn (``filler=``) instead of a thread per
agent; the values stay per pool, only the thread is shared.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import gmpy2

from fedmq.protocol.crypto.obfuscation import ObfuscatorSource

log = logging.getLogger(__name__)


class SharedFiller:
    """One thread that fills many pools, one value at a time round-robin."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pools: list[ObfuscatorPool] = []
        self._dirty = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="fedmq-obfuscators", daemon=True)
        self._thread.start()

    def add(self, pool: ObfuscatorPool) -> None:
        with self._cond:
            self._pools.append(pool)
        self.poke()

    def discard(self, pool: ObfuscatorPool) -> None:
        with self._cond:
            if pool in self._pools:
                self._pools.remove(pool)

    def poke(self) -> None:
        """A pool may want values now (target raised, refill, take)."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._dirty)
                if self._closed:
                    return
                self._dirty = False
                pools = list(self._pools)
            progressed = True
            while progressed and not self._closed:
                progressed = False
                for pool in pools:
                    progressed = pool.fill_one() or progressed


class ObfuscatorPool:
    def __init__(self, source: ObfuscatorSource, *, target: int,
                 filler: SharedFiller | None = None) -> None:
        self._source = source
        self._ready: deque[gmpy2.mpz] = deque()
        self._target = max(0, target)
        self._cond = threading.Condition()
        self._closed = False
        self._paused = False
        self.produced = 0
        self.inline = 0  # computed on demand because the pool ran dry
        self._filler = filler
        self._thread: threading.Thread | None = None
        if filler is None:
            self._thread = threading.Thread(target=self._fill, name="fedmq-obfuscators",
                                            daemon=True)
            self._thread.start()
        else:
            filler.add(self)

    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def target(self) -> int:
        return self._target

    def set_target(self, target: int) -> None:
        with self._cond:
            self._target = max(0, target)
            self._cond.notify_all()
        self._poke()

    def _poke(self) -> None:
        if self._filler is not None:
            self._filler.poke()

    def take(self, k: int) -> list[gmpy2.mpz]:
        """k distinct obfuscators; the shortfall (if the pool is low) is computed now.

        Pauses the filler until ``refill()``, so the caller's encryption runs alone.
        """
        with self._cond:
            self._paused = True
            got = [self._ready.popleft() for _ in range(min(k, len(self._ready)))]
        missing = k - len(got)
        if missing:
            self.inline += missing
            got.extend(self._source.next() for _ in range(missing))
        return got

    def refill(self) -> None:
        """Resume filling (call once the update is out: the agent is idle again)."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()
        self._poke()

    def wait_full(self, timeout: float | None = None) -> bool:
        """Block until the pool reaches its target (benchmarks and tests)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or len(self._ready) >= self._target, timeout)

    def close(self) -> None:
        """Stop the filler and drop every precomputed value."""
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._cond.notify_all()
        if self._filler is not None:
            self._filler.discard(self)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _wants(self) -> bool:
        return not self._closed and not self._paused and len(self._ready) < self._target

    def fill_one(self) -> bool:
        """Add one value if the pool wants one (the shared filler's step); True if added."""
        with self._cond:
            if not self._wants():
                return False
        value = self._source.next()  # outside the lock: take() never waits for it
        with self._cond:
            if self._closed:
                return False
            self._ready.append(value)
            self.produced += 1
            self._cond.notify_all()
        return True

    def _fill(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._wants())
                if self._closed:
                    return
            value = self._source.next()  # outside the lock: take() never waits for it
            with self._cond:
                if self._closed:
                    return
                self._ready.append(value)
                self.produced += 1
                self._cond.notify_all()
