"""Ed25519 verification of updates in a second process, so a burst uses the second core."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedmq.protocol.crypto.signing import UPDATE_DOMAIN

log = logging.getLogger("fedmq.aggregator.service")

KEY, HASH, SIG = 32, 32, 64
RECORD = KEY + HASH + SIG  # raw public key, the update's signed hash, its signature
CHUNK = 128  # records per round trip: IPC costs a few us per chunk, not per update
# A worker that answers no chunk for this long is stuck (stopped, swapped out): it is
# killed, and the chunk verified inline, as for a dead one.
REPLY_SECONDS = 10.0


def record(key: bytes, signed_hash: bytes, signature: bytes) -> bytes:
    """One fixed-size record; ValueError unless the three have their exact sizes."""
    if (len(key), len(signed_hash), len(signature)) != (KEY, HASH, SIG):
        raise ValueError("a record is a 32-byte key, a 32-byte hash and a 64-byte signature")
    return key + signed_hash + signature


def verify_records(data: bytes, domain: bytes = UPDATE_DOMAIN) -> bytes:
    """One byte per record: 1 if its key signed (domain, SHA-256 of its hash), else 0.

    Exactly what protocol.wire's Framing.verify checks (signing.verify hashes the
    signed hash once more), so a record verifies here iff the update does inline.
    """
    out = bytearray(len(data) // RECORD)
    for i in range(len(out)):
        at = i * RECORD
        key, signed_hash = data[at:at + KEY], data[at + KEY:at + KEY + HASH]
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(
                data[at + KEY + HASH:at + RECORD], domain + hashlib.sha256(signed_hash).digest())
        except (InvalidSignature, ValueError):
            continue
        out[i] = 1
    return bytes(out)


def _serve(conn: Connection, domain: bytes) -> None:
    """The worker: a chunk of records in, its verdicts out, until the parent hangs up
    (closed, or killed: then the worker ends too, quietly, and leaves no orphan)."""
    try:
        conn.send_bytes(b"")  # ready: imported and serving
    except OSError:
        return
    while True:
        try:
            data = conn.recv_bytes(CHUNK * RECORD)
        except (EOFError, OSError):
            return
        try:
            conn.send_bytes(verify_records(data, domain))
        except OSError:  # BrokenPipeError: the parent is gone mid-chunk
            return


class Verifier:
    """A lazily started worker process; ``submit`` a chunk, then ``collect`` its verdicts
    in the same order. Any failure of the worker yields None (verify those inline) and
    the next ``submit`` starts a new one: a verdict is never guessed."""

    def __init__(self, domain: bytes = UPDATE_DOMAIN) -> None:
        self.domain = domain
        self.starts = 0  # workers started (1 + restarts)
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False  # the worker said so (its first message)
        self._pending: deque[tuple[Connection, int]] = deque()  # submitted, not collected

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> Connection:
        # spawn, never fork: the aggregator has threads (paho's network loop), and a
        # forked child could inherit a lock one of them held.
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        process = ctx.Process(target=_serve, args=(child, self.domain),
                              name="fedmq-verifier", daemon=True)
        process.start()
        child.close()  # the worker's death then reads as EOF here
        self._process, self._conn, self._ready = process, parent, False
        self.starts += 1
        return parent

    def start(self) -> float:
        """Start the worker now and wait until it is ready; the seconds that took (a
        Python start and its imports, which a first backlog does not wait for)."""
        began = time.perf_counter()
        self._is_ready(REPLY_SECONDS)
        return time.perf_counter() - began

    def _is_ready(self, timeout: float) -> bool:
        """Start the worker if none runs; True once it said it is ready."""
        try:
            conn = self._conn or self._start()
            if not self._ready and conn.poll(timeout):
                self._ready = conn.recv_bytes(1) == b""
        except (EOFError, OSError) as exc:
            self._lost(f"it did not start ({type(exc).__name__})")
            return False
        return self._ready

    def submit(self, records: list[bytes]) -> bool:
        """Send one chunk (at most CHUNK records); False if no worker can take it now:
        none is ready yet (a new one starts, and a backlog never waits for its start:
        those chunks are verified inline), or it is lost."""
        if not records or len(records) > CHUNK:
            raise ValueError(f"a chunk holds 1 to {CHUNK} records")
        if not self._is_ready(0):
            return False
        conn = self._conn
        if conn is None:  # cannot be: _is_ready started it
            return False
        try:
            conn.send_bytes(b"".join(records))
        except (OSError, ValueError) as exc:
            self._lost(f"cannot reach it: {exc}")
            return False
        self._pending.append((conn, len(records)))
        return True

    def collect(self) -> bytes | None:
        """The verdicts of the oldest submitted chunk, or None if its worker failed."""
        conn, count = self._pending.popleft()
        if conn is not self._conn:  # its worker already failed on an earlier chunk
            return None
        try:
            if not conn.poll(REPLY_SECONDS):
                self._lost(f"no answer in {REPLY_SECONDS:.0f} s")
                return None
            verdicts = conn.recv_bytes(CHUNK)
        except (EOFError, OSError) as exc:
            self._lost(f"it died ({type(exc).__name__})")
            return None
        if len(verdicts) != count:
            self._lost(f"{len(verdicts)} verdicts for {count} records")
            return None
        return verdicts

    def _lost(self, why: str) -> None:
        log.warning("signature worker lost: %s; its chunks are verified inline, a new worker "
                    "takes the next one", why)
        self._shut()

    def _shut(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        self._ready = False
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(timeout=5)

    def close(self) -> None:
        """Stop the worker (no orphan); chunks not collected yet will yield None."""
        self._shut()
        self._pending.clear()
