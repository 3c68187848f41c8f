"""Joining readings of several topics into rows by time: pure, no I/O.

A reading carries some columns (the fields its topic maps) at a time ``ts``. Readings
whose times lie within ``join_seconds`` of a row's first reading fill that row (each
column once); a row is complete when every column is there and leaves the join at once.
Times may arrive out of order: the join keeps rows open until the newest time seen has
moved more than ``join_seconds`` past them, then drops them as stale (counted). A
reading already older than that on arrival is dropped as late. At most ``max_open`` rows
wait at once: beyond it the oldest go as stale, so a flood of one topic cannot grow the
join (or the ``pending`` table) without bound.

Open rows are kept sorted by their first time, once overall and once per set of columns
a reading may bring (only rows lacking all of them): finding a reading's row is a bisect,
not a scan of every open row.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_OPEN = 1000  # partial rows waiting for their partners

Key = tuple[float, int]  # (anchor, sequence): open rows in time order, ties by arrival


@dataclass(frozen=True)
class Reading:
    id: int
    topic: int
    ts: float
    values: dict[str, float]


@dataclass
class _Open:
    key: Key
    values: dict[str, float] = field(default_factory=dict)
    ts: float = 0.0  # the newest time among its readings
    ids: list[int] = field(default_factory=list)

    @property
    def anchor(self) -> float:  # the time of its first reading
        return self.key[0]


@dataclass(frozen=True)
class JoinResult:
    rows: list[tuple[float, list[float]]]  # complete rows: (time, values in column order)
    used: list[int]  # ids of readings now part of a complete row
    dropped: list[int]  # ids of readings dropped (a stale partial row or a late reading)
    stale_rows: int  # partial rows given up (too old, or beyond max_open)
    late: int  # readings too old on arrival


class Joiner:
    def __init__(self, columns: Sequence[str], join_seconds: float, *,
                 max_open: int = MAX_OPEN) -> None:
        if max_open < 1:
            raise ValueError("max_open must be at least 1")
        self.columns = tuple(columns)
        self.join_seconds = join_seconds
        self.max_open = max_open
        self._rows: dict[Key, _Open] = {}
        self._order: list[Key] = []  # every open row, sorted
        self._lacking: dict[frozenset[str], list[Key]] = {}  # rows without any of these
        self._seq = itertools.count()
        self.newest = float("-inf")

    @property
    def open_ids(self) -> set[int]:
        """Readings waiting for their partners (to be kept durable until they join)."""
        return {i for row in self._rows.values() for i in row.ids}

    def add(self, readings: Sequence[Reading]) -> JoinResult:
        rows: list[tuple[float, list[float]]] = []
        used: list[int] = []
        dropped: list[int] = []
        late = stale = 0
        for r in readings:
            if r.ts < self.newest - self.join_seconds:
                late += 1
                dropped.append(r.id)
                continue
            self.newest = max(self.newest, r.ts)
            row = self._match(r)
            self._fill(row, r)
            if len(row.values) == len(self.columns):
                self._remove(row)
                rows.append((row.ts, [row.values[c] for c in self.columns]))
                used.extend(row.ids)
        horizon = self.newest - self.join_seconds
        while self._order and (self._order[0][0] < horizon
                               or len(self._order) > self.max_open):
            row = self._rows[self._order[0]]
            self._remove(row)
            dropped.extend(row.ids)
            stale += 1
        return JoinResult(rows, used, dropped, stale, late)

    def _candidates(self, columns: frozenset[str]) -> list[Key]:
        keys = self._lacking.get(columns)
        if keys is None:  # first reading with these columns: index the rows lacking them
            keys = sorted(k for k, row in self._rows.items() if not columns & row.values.keys())
            self._lacking[columns] = keys
        return keys

    def _match(self, r: Reading) -> _Open:
        """The open row nearest in time that lacks all of ``r``'s columns, else a new one."""
        keys = self._candidates(frozenset(r.values))
        i = bisect.bisect_left(keys, (r.ts, -1))
        best: Key | None = None
        if i < len(keys):  # the earliest row anchored at or after r.ts
            best = keys[i]
        if i > 0:  # the earliest row at the latest anchor before r.ts
            before = keys[bisect.bisect_left(keys, (keys[i - 1][0], -1))]
            if best is None or r.ts - before[0] <= best[0] - r.ts:
                best = before
        if best is not None and abs(best[0] - r.ts) <= self.join_seconds:
            return self._rows[best]
        key = (r.ts, next(self._seq))
        row = _Open(key, ts=r.ts)
        self._rows[key] = row
        bisect.insort(self._order, key)
        for keys in self._lacking.values():  # empty so far: it lacks every column
            bisect.insort(keys, key)
        return row

    def _fill(self, row: _Open, r: Reading) -> None:
        for columns, keys in self._lacking.items():  # no longer lacking r's columns
            if columns & r.values.keys() and not columns & row.values.keys():
                del keys[bisect.bisect_left(keys, row.key)]
        row.values.update(r.values)
        row.ts = max(row.ts, r.ts)
        row.ids.append(r.id)

    def _remove(self, row: _Open) -> None:
        del self._rows[row.key]
        del self._order[bisect.bisect_left(self._order, row.key)]
        for columns, keys in self._lacking.items():
            if not columns & row.values.keys():
                del keys[bisect.bisect_left(keys, row.key)]
