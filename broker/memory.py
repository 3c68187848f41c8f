"""Hands the memory glibc keeps after a connection storm back to the OS (``malloc_trim``).

Each TLS connection past its handshake costs the broker a 256 KiB read buffer
(asyncio's ``SSLProtocol.max_size``) on top of its socket and SSL objects: 500 idle and
100 half-open TLS sockets took the broker from 52 to ~220 MB. Once the broker
has closed them every Python object is freed (tracemalloc: 4.4 MB traced
before the storm, 4.6 MB after, 162 MB at the peak), yet RSS stayed at ~220 MB:
glibc keeps freed heap memory for reuse. Its mmap threshold rises to the
largest block freed (a 256 KiB buffer), so later buffers come from the heap,
and the heap is only given back from its top. ``MALLOC_ARENA_MAX`` does not
change that (218 MB with 1 arena, 217 MB with 2: one event loop allocates in
one arena); ``malloc_trim(0)``, which releases free pages anywhere in the heap,
brings it back to 61 MB. ``MemoryKeeper`` therefore checks every few seconds
how much freed memory glibc holds (``mallinfo2``) and trims when that grew by
more than ``slack_bytes``: after a storm, not on every closed connection. A check
takes ~0.3 ms of the event loop; trimming 375 MB of freed blocks took 94 ms.

Logged-in clients leave more behind: each connection that logged in,
subscribed and disconnected left ~200 Python objects in reference cycles (session,
its state machine, protocol handler, SSL transport), and with them the
connection's OpenSSL state, which tracemalloc does not see. CPython collects them
only in a full collection, which waits until the pending objects reach a quarter
of all long-lived ones: every few hundred connections. 100 such clients a round
took the broker from 60 to 80, 96 and 102 MB (glibc: 8.6, 17.4, 23.0 and 29.0 MB
in use); a ``gc.collect()`` after each round freed ~20,000 objects and brought
the heap in use back to 9.2 MB, and RSS to 64.5 MB round after round. So the broker
tells the keeper when a connection ends (``connection_ended``) and the keeper runs
a full collection at its next check, at most one per interval and within 1% of
the time, before it looks at the heap. What that collection frees had been
reused and touched by the next round's connections, so the free memory glibc
reports hardly grows (trimmed pages stay counted): the keeper also trims when
RSS grew by more than ``slack_bytes`` beyond what malloc has in use, both since
its last trim.

Without glibc (musl, macOS) there is nothing to call and the keeper does nothing
but the collection.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import time

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0  # seconds between looks at glibc's free memory
SLACK_BYTES = 8 * 1024 * 1024  # freed memory glibc may keep for reuse without a trim
# Share of the time full collections may take: in a big process (the broker inside a
# test run or a simulation) one takes far longer than the broker's own 10-20 ms.
COLLECT_BUDGET = 0.01


class _MallInfo2(ctypes.Structure):
    # glibc >= 2.33 (Debian bookworm, Raspberry Pi OS 12: 2.36); every field a size_t.
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    """This process's resident memory (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallinfo2")):
        return None
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


class MemoryKeeper:
    """Trims glibc's heap when its freed memory grew by more than ``slack_bytes``.

    Trimmed pages stay in malloc's free lists (only their contents go back to the
    OS), so ``mallinfo2`` still counts them: the keeper trims on growth since its
    last trim, not on the total, and does not trim a fragmented heap every time.
    Memory reused and freed again between two checks looks like no growth, so it
    also trims when RSS grew by more than ``slack_bytes`` beyond malloc's in-use bytes.
    """

    def __init__(self, *, slack_bytes: int = SLACK_BYTES,
                 interval: float = CHECK_INTERVAL) -> None:
        if slack_bytes < 0 or interval <= 0:
            raise ValueError("slack_bytes must be >= 0 and interval > 0")
        self.slack_bytes, self.interval = slack_bytes, interval
        self._libc = _libc()
        self._trimmed_at = 0  # free bytes held right after the last trim
        self._resident_free_at = 0  # RSS minus malloc's in-use bytes right after it
        self._ended = 0  # connections ended since the last collection
        self._next_collect = 0.0  # monotonic time from which COLLECT_BUDGET allows one
        self.trims = self.collections = 0

    def connection_ended(self) -> None:
        """A connection closed: its objects may wait in reference cycles (see above)."""
        self._ended += 1

    def _resident_free(self) -> int:
        # What RSS holds beyond live allocations: freed pages touched again count here.
        return 0 if self._libc is None else _rss_bytes() - int(self._libc.mallinfo2().uordblks)

    @property
    def available(self) -> bool:
        """False without glibc: then ``run`` only collects the garbage of closed connections."""
        return self._libc is not None

    def free_held(self) -> int:
        """Bytes glibc keeps freed in its heaps (``mallinfo2().fordblks``); 0 without glibc."""
        return 0 if self._libc is None else int(self._libc.mallinfo2().fordblks)

    def collect(self) -> None:
        """A full garbage collection if a connection ended since the last one (and the
        last one's duration, within ``COLLECT_BUDGET``, allows another now)."""
        started = time.monotonic()
        if self._ended and started >= self._next_collect:
            self._ended = 0
            found = gc.collect()
            took = time.monotonic() - started
            self._next_collect = started + took / COLLECT_BUDGET
            self.collections += 1
            log.debug("collected %d objects of closed connections in %.0f ms", found,
                      took * 1e3)

    def check(self) -> bool:
        """Collect the garbage of ended connections, then trim if the freed memory (or
        RSS beyond malloc's in-use bytes) grew by more than ``slack_bytes``; True if it did."""
        self.collect()
        if self._libc is None:
            return False
        held = self.free_held()
        # Memory reused since the last trim lowers the mark: freeing it again counts.
        self._trimmed_at = min(self._trimmed_at, held)
        resident_free = self._resident_free()
        self._resident_free_at = min(self._resident_free_at, resident_free)
        if (held - self._trimmed_at <= self.slack_bytes
                and resident_free - self._resident_free_at <= self.slack_bytes):
            return False
        self._libc.malloc_trim(0)
        self.trims += 1
        self._trimmed_at = self.free_held()
        self._resident_free_at = self._resident_free()
        log.debug("returned freed memory to the OS: malloc held %.1f MB", held / 1e6)
        return True

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        if self._libc is None:
            log.debug("no glibc malloc_trim/mallinfo2: freed memory stays with the allocator")
        while True:
            await asyncio.sleep(self.interval)
            self.check()
