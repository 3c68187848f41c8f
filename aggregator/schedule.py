"""When a gateway that keeps learning starts its next run (``[schedule]``), and what it
remembers of the last one across restarts (``<state_dir>/schedule.json``).

Two triggers, whichever comes first:

- ``every``: a new run starts this long after the START of the last run (a fixed cadence:
  "every 24h" stays at the same hour of the day). A run that lasts longer than ``every``
  is followed by the next right after it ends: runs never overlap.
- ``min_new_rows``: a device counts as ready once it holds at least this many rows it did
  not hold when the last run finished; the run starts once ``ready_devices`` online,
  enrolled devices say so. The devices report one bit ("ready since run R"), never a count.

The aggregator checks every ``check_seconds``; a restart between runs reads the last
run's start time from schedule.json (or from its run id, which starts with its UTC start
time) and waits for the same due time: it never starts a run early, twice, or again.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import re
import time
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from fedmq.protocol.errors import ConfigError
from fedmq.runtime.files import write_atomic

log = logging.getLogger(__name__)
SCHEMA = "fedmq.schedule/1"
FILE = "schedule.json"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhd])\s*$")


def parse_duration(text: str, name: str = "every") -> float:
    """``"90s"``, ``"15m"``, ``"6h"``, ``"1.5d"`` -> seconds (> 0)."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"{name} = {text!r} is not a duration: write a number and a unit "
                          "s, m, h or d (\"90s\", \"15m\", \"6h\", \"1d\")")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{name} = {text!r} must be longer than zero")
    return seconds


@dataclass(frozen=True)
class Schedule:
    """``[schedule]``: off (the aggregator runs one run and exits) unless a trigger is set."""

    every: float = 0.0  # seconds between run starts; 0: no timer
    min_new_rows: int = 0  # new rows per device that make it ready; 0: no rows trigger
    ready_devices: int = 1  # ready devices the rows trigger waits for
    check_seconds: float = 30.0
    warm_start: bool = True  # a new run starts from the last run's final model

    def __post_init__(self) -> None:
        if not (math.isfinite(self.every) and self.every >= 0):
            raise ConfigError("every must be a duration such as \"6h\"")
        if self.min_new_rows < 0 or self.ready_devices < 1:
            raise ConfigError("min_new_rows must be >= 0 and ready_devices >= 1")
        if not (math.isfinite(self.check_seconds) and self.check_seconds > 0):
            raise ConfigError("check_seconds must be a positive number")

    @property
    def enabled(self) -> bool:
        return self.every > 0 or self.min_new_rows > 0

    def next_at(self, started_at: float, ended_at: float) -> float:
        """When the timer makes the next run due (0.0: no timer)."""
        if self.every <= 0:
            return 0.0
        return max(started_at + self.every, ended_at)

    def describe(self) -> str:
        parts = []
        if self.every > 0:
            parts.append(f"every {self.every:g} s after the last run's start")
        if self.min_new_rows > 0:
            parts.append(f"once {self.ready_devices} device(s) hold {self.min_new_rows} new "
                         "rows since the last run")
        return " or ".join(parts) or "off"


@dataclass(frozen=True)
class LastRun:
    """The run that started last: its id, start and end (0.0 while it runs)."""

    run_id: str
    started_at: float
    ended_at: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {"schema": SCHEMA, "run_id": self.run_id, "started_at": self.started_at,
                "ended_at": self.ended_at}


def run_id_time(run_id: str) -> float | None:
    """The UTC start time a run id of aggregator.runs.new_run_id begins with, else None."""
    try:
        return float(calendar.timegm(time.strptime(run_id[:15], "%Y%m%d-%H%M%S")))
    except ValueError:
        return None


class ScheduleFile:
    """``<state_dir>/schedule.json``: written when a run starts and when it ends."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE

    def load(self) -> LastRun | None:
        if not self.path.exists():
            return None
        try:
            doc = json.loads(self.path.read_bytes())
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                raise ValueError(f"not a {SCHEMA} file")
            run_id, started, ended = doc["run_id"], doc["started_at"], doc["ended_at"]
            if not isinstance(run_id, str) or not all(
                    isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                    for t in (started, ended)):
                raise ValueError("run_id must be a string, started_at and ended_at numbers")
            return LastRun(run_id, float(started), float(ended))
        except (OSError, ValueError, KeyError) as exc:
            # The schedule is advice, not run state: a broken file costs one early run at
            # most, never a crash loop under systemd.
            log.warning("ignoring %s (%s); the schedule counts from the last run's id",
                        self.path, exc)
            return None

    def save(self, last: LastRun) -> None:
        try:
            write_atomic(self.path, json.dumps(last.to_dict(), indent=1).encode())
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path}: {exc.strerror}") from exc

    def last(self, run_id: str, *, now: float) -> LastRun:
        """What is known of finished run ``run_id``: this file's record if it is of that
        run, else its start from the run id (or ``now``: the wait starts afresh)."""
        saved = self.load()
        if saved is not None and saved.run_id == run_id:
            return saved if saved.ended_at else LastRun(run_id, saved.started_at, now)
        started = run_id_time(run_id)
        return LastRun(run_id, now if started is None else started, now)


def ready_count(ready: dict[str, str], online: dict[str, bool], enrolled: Container[str],
                run_id: str) -> int:
    """Online, enrolled devices whose status says "ready since run ``run_id``"."""
    return sum(1 for agent, since in ready.items()
               if since == run_id and online.get(agent) and agent in enrolled)
