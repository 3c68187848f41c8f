"""Whether this device holds enough new rows for a scheduled gateway's next run.

A gateway that keeps learning (aggregator.schedule) may start its next run once devices
hold ``ready_rows`` rows they did not hold when the last run ended. The device says so
with ONE bit in its retained status (``ready_for = <last run id>``), never its row count:
the broker and the gateway learn that the device gathered that many rows since run R,
and roughly when, nothing more.

"New rows" are the rows the device holds now minus those it held when it last trained in
run R (or, if it took no part, when it first heard that R ended). That baseline is kept
in ``<state_dir>/rows_since.json`` so a restarted device counts from the same point.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fedmq.runtime.files import write_atomic

log = logging.getLogger("fedmq.edge_agent.agent")
FILE = "rows_since.json"
# How often a waiting device counts its rows: a file stat when unchanged, but a changed CSV
# is read again whole, which a logger appending every second must not cost every 2 s.
CHECK_SECONDS = 30.0


class Readiness:
    def __init__(self, state_dir: str | None) -> None:
        self._path = None if state_dir is None else Path(state_dir) / FILE
        self.trained_rows: tuple[str, int] | None = None  # (run, rows) at its last training
        self._want: tuple[str, int, int] | None = None  # (run, baseline, new rows needed)
        self._next_check = 0.0

    def trained(self, run_id: str, rows: int) -> None:
        """This device trained on ``rows`` rows in run ``run_id``."""
        self.trained_rows = (run_id, rows)

    def expect(self, run_id: str, ready_rows: int, rows_now: int) -> None:
        """Run ``run_id`` ended; the next starts when devices hold ``ready_rows`` new rows."""
        if self._want is not None and self._want[0] == run_id:
            return  # the same announcement again
        baseline = self._saved(run_id)
        if baseline is None:
            trained = self.trained_rows
            baseline = trained[1] if trained is not None and trained[0] == run_id else rows_now
            self._save(run_id, baseline)
        self._want = (run_id, baseline, ready_rows)
        self._next_check = 0.0
        log.info("the gateway starts its next run once devices hold %d new rows (this one "
                 "has %d since run %s)", ready_rows, max(0, rows_now - baseline), run_id)

    def clear(self) -> None:
        """A new run started: nothing to watch until it ends."""
        self._want = None

    @property
    def waiting(self) -> bool:
        return self._want is not None and time.monotonic() >= self._next_check

    def check(self, rows_now: int) -> str | None:
        """The run id to report ready for, once (then nothing more to watch)."""
        self._next_check = time.monotonic() + CHECK_SECONDS
        if self._want is None:
            return None
        run_id, baseline, needed = self._want
        if rows_now - baseline < needed:
            return None
        self._want = None
        log.info("%d new rows since run %s: ready for the next run", rows_now - baseline,
                 run_id)
        return run_id

    def _saved(self, run_id: str) -> int | None:
        if self._path is None or not self._path.exists():
            return None
        try:
            doc = json.loads(self._path.read_bytes())
            rows = doc["rows"] if doc.get("run_id") == run_id else None
            return rows if isinstance(rows, int) and not isinstance(rows, bool) else None
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            log.info("ignoring %s (%s); counting new rows from now", self._path, exc)
            return None

    def _save(self, run_id: str, rows: int) -> None:
        if self._path is None:
            return
        try:
            write_atomic(self._path, json.dumps({"run_id": run_id, "rows": rows}).encode())
        except OSError as exc:  # the count restarts from now after a restart: no harm done
            log.info("cannot write %s: %s", self._path, exc.strerror)
