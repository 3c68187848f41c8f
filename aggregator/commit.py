"""Group commit: the open round's accepted updates made durable in batches, one fsync each.

An update that passed every check waits in a batch; the batch is written in one
sqlite3 transaction (WAL, ``synchronous=FULL``: the commit returns once the log
is on the disk) when it holds ``limits.commit_updates`` updates, when its oldest
has waited ``limits.commit_seconds``, or before the round closes. Only then do
its updates count (running product, accepted set, progress, metrics). A crash
mid-write leaves a batch sqlite never committed: on restart it is simply absent,
and it was never counted, so nothing counted is lost and nothing is counted twice
(one row per member, its primary key).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path

from fedmq.protocol.errors import ConfigError

FILE = "accepted.sqlite3"
_SCHEMA = "CREATE TABLE IF NOT EXISTS accepted (seq INTEGER PRIMARY KEY, " \
          "member TEXT NOT NULL UNIQUE, payload BLOB NOT NULL)"


class UpdateLog:
    """The accepted signed payloads of the open round, in the order they were committed.

    The writer keeps one connection (the round loop's thread); readers (``load``, also
    from other threads or processes) open their own.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _writer(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")  # a commit is on the disk when it returns
                # A round of 10,000 d = 100 updates is ~26 MB: folded into the database at
                # most once a round, not every 4 MB (0.5 -> 0.35 s of commits at 10,000).
                db.execute("PRAGMA wal_autocheckpoint=16384")
                db.execute(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def append(self, batch: Iterable[tuple[str, bytes]]) -> None:
        """Commit ``batch`` (member, payload) in one transaction: all of it or none.

        Raises OSError (disk full, read-only, a member already stored): nothing of the
        batch is stored then.
        """
        try:
            db = self._writer()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO accepted (member, payload) VALUES (?, ?)", batch)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OSError(f"{self.path}: {exc}") from exc

    def load(self) -> list[tuple[str, bytes]]:
        """What was committed, oldest first; a torn last batch is not there (sqlite
        discards an uncommitted transaction when it next opens the database)."""
        if not self.path.exists():
            return []
        try:
            with closing(sqlite3.connect(self.path)) as db:
                if db.execute("SELECT name FROM sqlite_master WHERE name = 'accepted'"
                              ).fetchone() is None:
                    return []
                rows = db.execute("SELECT member, payload FROM accepted ORDER BY seq").fetchall()
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot read the accepted updates in {self.path}: {exc}; "
                              "restore it or move it away (its updates are then lost)") from exc
        return [(str(m), bytes(p)) for m, p in rows]

    def clear(self) -> None:
        if not self.path.exists() and self._db is None:
            return
        try:
            self._writer().execute("DELETE FROM accepted")
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot clear {self.path}: {exc}") from exc


class Batch:
    """Updates that passed every check and wait for their batch's commit, in arrival order.

    Bounded by count (``max_updates``) and by time (``max_seconds`` since its oldest
    arrived); the caller commits it when ``due``, and always before a round closes.
    """

    def __init__(self, *, max_updates: int, max_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_updates < 1 or not max_seconds > 0:
            raise ValueError("a batch holds at least one update for a positive time")
        self.max_updates, self.max_seconds, self._clock = max_updates, max_seconds, clock
        self.items: list[tuple[str, bytes]] = []  # (member, signed payload)
        self._since = 0.0

    def __len__(self) -> int:
        return len(self.items)

    def add(self, member: str, payload: bytes) -> None:
        if not self.items:
            self._since = self._clock()
        self.items.append((member, payload))

    def due(self) -> bool:
        return bool(self.items) and (len(self.items) >= self.max_updates
                                     or self._clock() - self._since >= self.max_seconds)

    def time_left(self) -> float | None:
        """Seconds until the time bound makes the batch due; None when it is empty."""
        if not self.items:
            return None
        return max(0.0, self._since + self.max_seconds - self._clock())

    def take(self) -> list[tuple[str, bytes]]:
        items, self.items = self.items, []
        return items
