"""The aggregator between two runs of a gateway that keeps learning (``[schedule]``):
record each run's start and end, tell agents of the next run, and wait until it is due.

Mixed into aggregator.service.Aggregator; when the next run is due is
aggregator.schedule's, the warm start aggregator.warm's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.announcer import Herald
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.inbound import Inbound
from fedmq.aggregator.outcome import RoundResult
from fedmq.aggregator.runs import RunDirs
from fedmq.aggregator.schedule import LastRun, Schedule, ScheduleFile, ready_count
from fedmq.aggregator.warm import finished
from fedmq.models import ModelError, ModelSpec, load_model
from fedmq.protocol.crypto.signing import Ed25519PublicKey

log = logging.getLogger("fedmq.aggregator.service")
FloatArray = NDArray[np.float64]


class BetweenRuns:
    """The scheduling steps (mixed into aggregator.service.Aggregator)."""

    config: AggregatorConfig
    spec: ModelSpec
    runs: RunDirs
    results: list[RoundResult]
    statistics: RoundResult | None
    final_evaluation: RoundResult | None
    _schedule: Schedule | None
    _schedule_file: ScheduleFile
    _herald: Herald
    _inbound: Inbound
    _stop: threading.Event

    def allow_list(self) -> Mapping[str, Ed25519PublicKey]:
        raise NotImplementedError

    def _drain(self, state: Any, timeout: float) -> None:
        raise NotImplementedError

    def _run_began(self, run_id: str) -> float:
        """Record the run's start. A run resumed after a crash keeps the start it had; a
        failed run resumed when the next run was due counts from now."""
        if self._schedule is None:
            return time.time()
        last = self._schedule_file.load()
        if last is not None and last.run_id == run_id and not last.ended_at:
            return last.started_at
        now = time.time()
        self._schedule_file.save(LastRun(run_id, now))
        return now

    def _run_ended(self, run_id: str, started: float) -> LastRun:
        last = LastRun(run_id, started, time.time())
        self._schedule_file.save(last)
        return last

    def _next_run_terms(self, run_id: str) -> dict[str, Any]:
        """What the run's last announcement tells agents of the next run."""
        sched = self._schedule
        if sched is None:
            return {}
        last = self._schedule_file.load()
        started = last.started_at if last is not None and last.run_id == run_id else time.time()
        return {"next_run_at": sched.next_at(started, time.time()),
                "ready_rows": sched.min_new_rows}

    def _ended_run(self) -> LastRun | None:
        """The last run, when it finished: a restarted scheduled gateway waits for the next."""
        self.runs.check_writable()
        self.runs.migrate_legacy()
        prior = self.runs.latest()
        if prior is None or not finished(prior):
            return None
        return self._schedule_file.last(prior.name, now=time.time())

    def _announce_ended(self, last: LastRun, params: FloatArray) -> FloatArray:
        """After a restart between runs: announce the finished run again, with the next
        run's terms, so agents that start now stay for it. Returns its final model (else
        ``params``)."""
        try:
            spec, params, meta = load_model(self.runs.root / last.run_id / "global_model.npz")
        except ModelError as exc:
            log.info("the last run's model is not readable (%s); not announced again", exc)
            return params
        version = meta.get("model_version", 0)
        version = version if isinstance(version, int) and version >= 0 else 0
        self.spec = spec
        self._herald.round(last.run_id, self.config.policy.rounds + 1, version, params,
                           state="finished", spec=spec, **self._next_run_terms(last.run_id))
        return params

    def _wait_for_next(self, last: LastRun) -> bool:
        """Serve the broker (statuses, re-announcements) until the next run is due;
        False if stopped first."""
        sched = self._schedule
        assert sched is not None
        due_at = sched.next_at(last.started_at, last.ended_at)
        if due_at:
            log.info("next run due at %s UTC (%s)",
                     time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(due_at)), sched.describe())
        else:
            log.info("next run %s", sched.describe())
        while not self._stop.is_set():
            now = time.time()
            if due_at and now >= due_at:
                log.info("the next run is due (%g s after run %s started)", sched.every,
                         last.run_id)
                return True
            if sched.min_new_rows:
                ready = ready_count(self._inbound.ready, self._inbound.online,
                                    self.allow_list(), last.run_id)
                if ready >= sched.ready_devices:
                    log.info("the next run is due: %d device(s) hold %d new rows since run %s",
                             ready, sched.min_new_rows, last.run_id)
                    return True
            wait = sched.check_seconds if not due_at else min(sched.check_seconds,
                                                             due_at - now)
            self._drain(None, max(0.0, wait))
        return False
