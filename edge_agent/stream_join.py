"""Joining readings of several topics into rows by time: pure, no I/O.

A reading carries some columns (the fields its topic maps) at a time ``ts``. Readings
whose times lie within ``join_seconds`` of a row's first reading fill that row (each
column once); a row is complete when every column is there and leaves the join at once.
Times may arrive out of order: the join keeps rows open until the newest time seen has
moved more than ``join_seconds`` past them, then drops them as stale (counted). A
reading already older than that on arrival is dropped as late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reading:
    id: int
    topic: int
    ts: float
    values: dict[str, float]


@dataclass
class _Open:
    anchor: float  # the time of its first reading
    values: dict[str, float] = field(default_factory=dict)
    ts: float = 0.0  # the newest time among its readings
    ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class JoinResult:
    rows: list[tuple[float, list[float]]]  # complete rows: (time, values in column order)
    used: list[int]  # ids of readings now part of a complete row
    dropped: list[int]  # ids of readings dropped (a stale partial row or a late reading)
    stale_rows: int  # partial rows given up
    late: int  # readings too old on arrival


class Joiner:
    def __init__(self, columns: Sequence[str], join_seconds: float) -> None:
        self.columns = tuple(columns)
        self.join_seconds = join_seconds
        self._open: list[_Open] = []
        self.newest = float("-inf")

    @property
    def open_ids(self) -> set[int]:
        """Readings waiting for their partners (to be kept durable until they join)."""
        return {i for row in self._open for i in row.ids}

    def add(self, readings: Sequence[Reading]) -> JoinResult:
        rows: list[tuple[float, list[float]]] = []
        used: list[int] = []
        dropped: list[int] = []
        late = 0
        for r in readings:
            if r.ts < self.newest - self.join_seconds:
                late += 1
                dropped.append(r.id)
                continue
            self.newest = max(self.newest, r.ts)
            row = self._match(r)
            row.values.update(r.values)
            row.ts = max(row.ts, r.ts)
            row.ids.append(r.id)
            if len(row.values) == len(self.columns):
                self._open.remove(row)
                rows.append((row.ts, [row.values[c] for c in self.columns]))
                used.extend(row.ids)
        stale = [row for row in self._open if row.anchor < self.newest - self.join_seconds]
        for row in stale:
            self._open.remove(row)
            dropped.extend(row.ids)
        return JoinResult(rows, used, dropped, len(stale), late)

    def _match(self, r: Reading) -> _Open:
        """The open row nearest in time that lacks all of ``r``'s columns, else a new one."""
        best: _Open | None = None
        for row in self._open:
            fits = abs(row.anchor - r.ts) <= self.join_seconds and not (row.values.keys()
                                                                        & r.values.keys())
            if fits and (best is None or abs(row.anchor - r.ts) < abs(best.anchor - r.ts)):
                best = row
        if best is None:
            best = _Open(anchor=r.ts, ts=r.ts)
            self._open.append(best)
        return best
