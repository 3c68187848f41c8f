"""What the gateway says about its fleet's data, from what it may know: skip reasons the
devices publish, and the decrypted fleet totals (never one device's numbers).

- A device that skips a round says why in its status; each reason is logged once
  per device and round and counted in the round's record.
- The share of update values the training codec clipped (an encrypted count in
  every update) is the symptom of missing scaling or a too-small ``clip``.
- A class with no row in the fleet's evaluation totals for several rounds in a row
  means no device holding it contributed: the model cannot learn it, whatever
  the accuracy says.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable

from aggregator.config import HealthPolicy
from protocol.evaluation import FleetEvaluation
from protocol.health import Skip

log = logging.getLogger("aggregator.health")

FIXES = {
    "bad-labels": "its label column holds values that are not class numbers",
    "class-outside-model": "its labels include classes the model does not have "
                           "([model] n_classes)",
    "feature-mismatch": "its [data] features differ from [model] features",
    "data-error": "its data file cannot be read",
    "diverged": "local training diverged: lower [training] learning_rate",
}


def clipped_share(evaluation: FleetEvaluation | None, values_per_update: int,
                  updates: int) -> float:
    """Share of the kept updates' delta values that the training codec clipped."""
    if evaluation is None or updates < 1 or values_per_update < 1:
        return 0.0
    return evaluation.clipped_train / (values_per_update * updates)


class FleetHealth:
    def __init__(self, policy: HealthPolicy) -> None:
        self.policy = policy
        # class -> (first round of its current streak, agents absent in every round of it)
        self._absent: dict[int, tuple[int, frozenset[str]]] = {}
        self._contributed: set[str] = set()
        self._expected: set[str] = set()

    def skipped(self, round_id: int, agent: str, skip: Skip) -> None:
        log.warning("round %d: %s skips it (%s): %s; %s", round_id, agent, skip.code,
                    skip.detail or "no detail", FIXES.get(skip.code, ""))

    def round_closed(self, round_id: int, *, phase: str, expected: Iterable[str],
                     kept: Iterable[str], evaluation: FleetEvaluation | None,
                     share: float, skipped: dict[str, Skip]) -> dict[str, int]:
        """Log what the round's totals say about the fleet; return skips per code."""
        expected, kept = frozenset(expected), frozenset(kept)
        self._expected |= expected
        if phase == "training":
            self._contributed |= kept
        counts = dict(Counter(s.code for s in skipped.values()))
        if counts:
            log.warning("round %d: %d device(s) skipped it: %s", round_id, len(skipped),
                        ", ".join(f"{code} {n}" for code, n in sorted(counts.items())))
        if share > self.policy.clipped_share_warning:
            log.warning("round %d: %.0f%% of the update values were clipped to the codec's "
                        "bound: the features or the label are not scaled (give [model] "
                        "center/scale or let the statistics round derive them), or [codec] "
                        "clip is too small for the learning rate", round_id, 100 * share)
        if evaluation is not None and evaluation.confusion:
            self._watch_classes(round_id, evaluation, expected - kept)
        return counts

    def _watch_classes(self, round_id: int, evaluation: FleetEvaluation,
                       silent: frozenset[str]) -> None:
        absent = set(evaluation.classes_absent)
        for k in list(self._absent):
            if k not in absent:
                del self._absent[k]  # rows of it came back
        for k in sorted(absent):
            first, suspects = self._absent.get(k, (round_id, silent))
            suspects = suspects & silent
            self._absent[k] = (first, suspects)
            streak = round_id - first + 1
            if streak == self.policy.missing_class_rounds:
                who = (f"devices silent in each of them: {', '.join(sorted(suspects))}"
                       if suspects else "every expected device reported: no device in "
                       "the fleet holds it")
                log.warning("class %d has had no rows in the fleet's totals for %d rounds "
                            "(rounds %d-%d): the model is not learning it; %s", k, streak,
                            first, round_id, who)

    def run_finished(self) -> None:
        never = sorted(self._expected - self._contributed)
        if never:
            log.warning("%d device(s) never contributed an update to this run: %s",
                        len(never), ", ".join(never))
