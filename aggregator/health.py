"""What the gateway says about its fleet's data, from what it may know: skip reasons the
devices publish, and the decrypted fleet totals (never one device's numbers).

- A device that skips a round says why in its status; each reason is logged once
  per device and run and counted in each round's record (a WARNING only for a
  round that brings a device or reason not seen skipping before in this run).
- The share of update values the training codec clipped (an encrypted count in
  every update) is the symptom of missing scaling or a too-small ``clip``.
- A class with no row in the fleet's evaluation totals for several rounds in a row
  means no device holding it contributed: the model cannot learn it, whatever
  the accuracy says.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable

from fedmq.aggregator.config import HealthPolicy
from fedmq.protocol.health import Skip
from fedmq.protocol.server import ServerSettings, recommended_keys
from fedmq.protocol.sums.evaluation import FleetEvaluation

log = logging.getLogger("fedmq.aggregator.health")

FIXES = {
    "bad-labels": "fix its label column: class numbers 0..n_classes-1, no text or NaN",
    "class-outside-model": "map its labels to 0..n_classes-1, or raise [model] n_classes",
    "feature-mismatch": "make its [data] features the [model] features, same names and order",
    "data-error": "fix its data file (the device's log names the line)",
    "diverged": "lower [training] learning_rate",
    "privacy-budget": "none: its own privacy ledger is spent, it sits the rest out by design "
                      "(a larger [privacy] epsilon or sample_epsilon, or fewer rounds, next "
                      "run)",
}
STILL_FALLING = 0.05  # relative drop of the fleet loss over the last rounds worth a word
FALLING_OVER = 3  # rounds


def clipped_share(evaluation: FleetEvaluation | None, values_per_update: int,
                  updates: int) -> float:
    """Share of the kept updates' delta values that the training codec clipped."""
    if evaluation is None or updates < 1 or values_per_update < 1:
        return 0.0
    return evaluation.clipped_train / (values_per_update * updates)


def still_falling_hint(server: ServerSettings, learning_rate: float,
                       kind: str = "logistic") -> str:
    """Which setting would most likely help a run whose loss was still falling at its end.

    Plain FedAvg first gains from a server optimizer (Reddi et al. 2021: the same rounds
    go further), the one bench-noniid found most robust for the model ``kind``
    (protocol.server.RECOMMENDED); with one already on, more rounds or larger local steps
    are what is left.
    """
    more = "more [rounds] rounds"
    if server.optimizer == "fedavg":
        keys = ", ".join(f"{k} = {json.dumps(v)}" for k, v in recommended_keys(kind).items()
                         if k != "server_lr" or v != 1)
        model = "classifiers" if kind == "logistic" else "regressions"
        return (f"{more}, or [server] {keys} (bench-noniid's most robust for {model}), or a "
                f"larger [server] server_lr than {server.server_lr:g}, would likely help")
    return (f"{more}, or a larger [training] learning_rate than {learning_rate:g} (or "
            f"[server] server_lr than {server.server_lr:g}, with optimizer "
            f"{server.optimizer}), would likely help")


class FleetHealth:
    def __init__(self, policy: HealthPolicy, *, server: ServerSettings | None = None,
                 learning_rate: float = 0.1, kind: str = "logistic") -> None:
        """``server``, ``learning_rate`` and the model ``kind``: the run's, named in the
        end-of-run hint."""
        self.policy = policy
        self._hint = still_falling_hint(server or ServerSettings(), learning_rate, kind)
        # class -> (first round of its current streak, agents absent in every round of it)
        self._absent: dict[int, tuple[int, frozenset[str]]] = {}
        self._contributed: set[str] = set()
        self._expected: set[str] = set()
        self._said: set[tuple[str, str]] = set()  # (agent, skip code) logged in this run
        self._counted: set[tuple[str, str]] = set()  # (agent, skip code) in a round's count
        self._losses: list[float] = []  # fleet loss of each evaluated model, in order

    def skipped(self, round_id: int, agent: str, skip: Skip) -> None:
        """A device's skip reason: in full once per device and reason, then counted only."""
        if (agent, skip.code) in self._said:
            log.debug("round %d: %s skips it (%s)", round_id, agent, skip.code)
            return
        self._said.add((agent, skip.code))
        log.warning("round %d: %s skips it (%s): %s; fix: %s (said once; later rounds count "
                    "it in rounds.csv 'skipped')", round_id, agent, skip.code,
                    skip.detail or "no detail", FIXES.get(skip.code, "see the device's log"))

    def round_closed(self, round_id: int, *, phase: str, expected: Iterable[str],
                     kept: Iterable[str], evaluation: FleetEvaluation | None,
                     share: float, skipped: dict[str, Skip],
                     offline: Iterable[str] = ()) -> dict[str, int]:
        """Log what the round's totals say about the fleet; return skips per code.

        ``offline``: enrolled devices that were not online for this round.
        """
        expected, kept = frozenset(expected), frozenset(kept)
        self._expected |= expected
        if phase == "training":
            self._contributed |= kept
        if evaluation is not None and phase != "statistics":
            self._losses.append(evaluation.loss)
        counts = dict(Counter(s.code for s in skipped.values()))
        if counts:
            # The same devices skipping for the same reasons every round was said already
            # (skipped() above, once per device and reason): counted, not warned again.
            pairs = {(agent, s.code) for agent, s in skipped.items()}
            news, self._counted = pairs - self._counted, self._counted | pairs
            log.log(logging.WARNING if news else logging.INFO,
                    "round %d: %d device(s) skipped it: %s", round_id, len(skipped),
                    ", ".join(f"{code} {n}" for code, n in sorted(counts.items())))
        if share > self.policy.clipped_share_warning:
            log.warning("round %d: %.0f%% of the update values were clipped to the codec's "
                        "bound: the features or the label are not scaled (give [model] "
                        "center/scale or let the statistics round derive them), or [codec] "
                        "clip is too small for the learning rate", round_id, 100 * share)
        if evaluation is not None and evaluation.confusion:
            self._watch_classes(round_id, evaluation, expected - kept, frozenset(offline))
        return counts

    def _watch_classes(self, round_id: int, evaluation: FleetEvaluation,
                       silent: frozenset[str], offline: frozenset[str]) -> None:
        absent = set(evaluation.classes_absent)
        for k in list(self._absent):
            if k not in absent:
                del self._absent[k]  # rows of it came back
        for k in sorted(absent):
            first, suspects = self._absent.get(k, (round_id, silent))
            suspects = suspects & silent
            self._absent[k] = (first, suspects)
            streak = round_id - first + 1
            if streak != self.policy.missing_class_rounds:
                continue
            if suspects:
                who = f"devices silent in each of them: {_names(suspects)}"
            elif offline:
                who = (f"no device that reported holds it; enrolled devices not online: "
                       f"{_names(offline)}")
            else:
                who = "no device that reported holds it, and no enrolled device is offline"
            log.warning("class %d has had no rows in the fleet's totals for %d rounds "
                        "(rounds %d-%d): the model is not learning it; %s", k, streak,
                        first, round_id, who)

    def run_finished(self, never_online: Iterable[str] = ()) -> None:
        """``never_online``: enrolled devices never seen online during the run."""
        never = sorted(self._expected - self._contributed)
        if never:
            log.warning("%d device(s) never contributed an update to this run: %s",
                        len(never), _names(never))
        absent = sorted(never_online)
        if absent:
            log.warning("%d enrolled device(s) were never online during this run: %s",
                        len(absent), _names(absent))
        losses = self._losses
        if len(losses) > FALLING_OVER:
            before, last = losses[-1 - FALLING_OVER], losses[-1]
            if before > 0 and (before - last) / before > STILL_FALLING:
                log.warning("the fleet loss was still falling at the end (%.4g -> %.4g over the "
                            "last %d rounds): the model has not converged; %s",
                            before, last, FALLING_OVER, self._hint)


def _names(agents: Iterable[str], most: int = 20) -> str:
    names = sorted(agents)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more
