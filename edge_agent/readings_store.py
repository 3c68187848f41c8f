"""On-device storage of sensor readings: sqlite3 in WAL mode, synchronous=FULL, retention.

Durability promise: a reading is acknowledged to the local broker (PUBACK) only after
the transaction holding it committed. WAL with synchronous=FULL fsyncs the log at every
commit, so a power cut loses no committed transaction and never leaves a torn database
(sqlite's journal rolls an interrupted commit back on the next open). synchronous=NORMAL
would be faster but may lose the last commits on a power cut, which were acknowledged
already: not what we promise. The stream source commits in batches (all messages that
arrived meanwhile), so the fsyncs stay few at 100 readings/s.

Rows hold the features then the label as typed REAL columns, with the reading's time.
Readings of a multi-topic join that wait for their partners are kept in ``pending``
(also committed before they are acknowledged) so a restart resumes the join. A kill
between the commit and the PUBACK makes the broker resend the message (flagged DUP);
``seen`` holds the digests of the messages stored last, so a resend is stored once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fedmq.edge_agent.data import DataError

SCHEMA_VERSION = 1
SEEN_KEPT = 20_000  # digests of the newest messages stored, to recognise a broker's resend
# sqlite's page cache per connection, KiB. Its default (2 MiB) fills as the database grows,
# and an agent holds two connections (the stream's writer, a round's reader): ~2 MB of a
# device's 60 MB RSS budget over a minute at 100 readings/s. The OS page cache holds the
# file anyway; inserts and the reads of a round touch a few pages of the table's end.
CACHE_KIB = 256
READ_CHUNK = 1024  # rows converted to float64 at a time when a round reads the store


@dataclass(frozen=True)
class Pending:
    """A reading waiting in a join: its id, topic index, time and values by column."""

    id: int
    topic: int
    ts: float
    values: dict[str, float]


class ReadingsStore:
    """The readings database of one device. Not thread-safe: one writer thread owns it
    (sqlite's WAL lets other connections, e.g. a round's reader, read meanwhile)."""

    def __init__(self, path: str | Path, columns: Sequence[str], *, keep_rows: int = 100_000,
                 keep_days: float = 30.0) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self.keep_rows, self.keep_days = keep_rows, keep_days
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._schema()
        except sqlite3.DatabaseError as exc:
            raise DataError(f"readings database {self.path}: {exc}; move it aside (the "
                            "agent starts a new one)") from None
        except OSError as exc:
            raise DataError(f"readings database {self.path}: {exc.strerror}") from None

    def _schema(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        found = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if found:
            if int(found.get("schema_version", "0")) != SCHEMA_VERSION:
                raise DataError(f"readings database {self.path} has schema version "
                                f"{found.get('schema_version')}, this agent reads "
                                f"{SCHEMA_VERSION}")
            stored = tuple(json.loads(found["columns"]))
            if stored != self.columns:
                raise DataError(f"readings database {self.path} holds columns "
                                f"{', '.join(stored)}; [data] features and label name "
                                f"{', '.join(self.columns)}: move the file aside to start "
                                "a new one")
            return
        cols = ", ".join(f"c{i} REAL NOT NULL" for i in range(len(self.columns)))
        db.execute("BEGIN IMMEDIATE")
        # AUTOINCREMENT: ids are never reused, even after retention emptied the table, so the
        # newest id counts every row ever stored (a scheduled gateway's "new rows" signal).
        db.execute(f"CREATE TABLE rows (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
                   f"{cols})")
        db.execute("CREATE INDEX rows_ts ON rows (ts)")
        db.execute("CREATE TABLE pending (id INTEGER PRIMARY KEY, topic INTEGER NOT NULL, "
                   "ts REAL NOT NULL, vals TEXT NOT NULL)")
        db.execute("CREATE TABLE seen (n INTEGER PRIMARY KEY, digest INTEGER NOT NULL)")
        db.execute("CREATE INDEX seen_digest ON seen (digest)")
        db.executemany("INSERT INTO meta VALUES (?, ?)",
                       [("schema_version", str(SCHEMA_VERSION)),
                        ("columns", json.dumps(list(self.columns)))])
        db.execute("COMMIT")

    def commit(self, rows: Sequence[tuple[float, Sequence[float]]], *,
               add_pending: Iterable[Pending] = (), drop_pending: Iterable[int] = (),
               seen: Iterable[int] = ()) -> None:
        """One durable transaction: new rows ``(ts, values in column order)``, join state,
        and the digests of the messages it stored (``seen``: a resend is recognised).
        When it returns, everything in it survives a power cut."""
        db = self._db
        width = len(self.columns)
        marks = ", ".join("?" * (width + 1))
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(f"INSERT INTO rows (ts, {self._names()}) VALUES ({marks})",
                           [(ts, *values) for ts, values in rows])
            db.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)",
                           [(p.id, p.topic, p.ts, json.dumps(p.values)) for p in add_pending])
            db.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in drop_pending])
            db.executemany("INSERT INTO seen (digest) VALUES (?)", [(d,) for d in seen])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def add(self, rows: Sequence[tuple[float, Sequence[float]]]) -> None:
        """Store complete rows ``(ts, values)`` durably."""
        self.commit(rows)

    def retain(self, now: float | None = None) -> int:
        """Apply retention (the newest ``keep_rows``, none older than ``keep_days``);
        returns how many rows it deleted."""
        now = time.time() if now is None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        cur = db.execute("DELETE FROM rows WHERE ts < ?", (now - self.keep_days * 86400.0,))
        deleted = cur.rowcount
        over = self.count() - self.keep_rows
        if over > 0:
            cur = db.execute("DELETE FROM rows WHERE id IN (SELECT id FROM rows "
                             "ORDER BY ts, id LIMIT ?)", (over,))
            deleted += cur.rowcount
        # Resends come within seconds of a restart: the last SEEN_KEPT digests are plenty.
        db.execute("DELETE FROM seen WHERE n <= (SELECT MAX(n) FROM seen) - ?", (SEEN_KEPT,))
        db.execute("COMMIT")
        return int(deleted)

    def _names(self) -> str:
        return ", ".join(f"c{i}" for i in range(len(self.columns)))

    def was_seen(self, digest: int) -> bool:
        """Whether a message with this digest was stored (among the last SEEN_KEPT)."""
        return self._db.execute("SELECT 1 FROM seen WHERE digest = ? LIMIT 1",
                                (digest,)).fetchone() is not None

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM rows").fetchone()[0])

    def last_id(self) -> int:
        """The id of the newest row (0 when empty): it changes when rows are added."""
        return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM rows").fetchone()[0])

    def stored_ever(self) -> int:
        """Rows ever stored, retention notwithstanding (the AUTOINCREMENT counter)."""
        got = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'rows'").fetchone()
        return int(got[0]) if got else 0

    def pending(self) -> list[Pending]:
        return [Pending(i, t, ts, json.loads(v)) for i, t, ts, v in self._db.execute(
            "SELECT id, topic, ts, vals FROM pending ORDER BY ts, id")]

    def latest(self, n: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The ``n`` newest rows by time, oldest first: (times, values [rows x columns])."""
        return self._table("", (), limit=n)

    def window(self, seconds: float, now: float | None = None
               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The rows of the last ``seconds`` (by reading time), oldest first."""
        now = time.time() if now is None else now
        return self._table("WHERE ts >= ?", (now - seconds,), limit=None)

    def _table(self, where: str, args: tuple[float, ...], *, limit: int | None
               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The rows ``where`` selects (the newest ``limit`` of them), oldest first.

        Read into one array READ_CHUNK rows at a time: as Python tuples, 100,000 rows of
        four columns are ~20 MB of a device's 60 MB budget; as float64, 4 MB.
        """
        db = self._db
        width = len(self.columns) + 1
        db.execute("BEGIN")  # one snapshot: the count and the rows agree while rows arrive
        try:
            size = int(db.execute(f"SELECT COUNT(*) FROM rows {where}", args).fetchone()[0])
            if limit is not None:
                size = min(size, limit)
            table = np.empty((size, width), dtype=np.float64)
            # The newest first with a limit (then stored from the end), else in time order.
            order = "ts DESC, id DESC" if limit is not None else "ts, id"
            cursor = db.execute(f"SELECT ts, {self._names()} FROM rows {where} ORDER BY "
                                f"{order} LIMIT ?", (*args, size))
            at = 0
            while chunk := cursor.fetchmany(READ_CHUNK):
                part = np.asarray(chunk, dtype=np.float64).reshape(len(chunk), width)
                if limit is not None:
                    table[size - at - len(chunk):size - at] = part[::-1]
                else:
                    table[at:at + len(chunk)] = part
                at += len(chunk)
        finally:
            db.execute("COMMIT")
        return table[:, 0], table[:, 1:]

    def integrity(self) -> str:
        """sqlite's own verdict ("ok" when the file is sound)."""
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self._db.close()
