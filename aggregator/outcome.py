"""What a closed round yields, and the round's record.

The service only sequences; the decision "which updates count, and what the
round yields" (a FedAvg step and fleet metrics, or the pooled statistics) lives
here: decrypt the sum of every accepted update, or, when that sum fails the
codec's bounds, the sums the culprit search allows (aggregator.culprits)."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.config import RobustPolicy
from fedmq.aggregator.consistency import (
    Group,
    Tolerances,
    evaluation_outliers,
    growth_check,
    rows_check,
    statistics_invalid,
    statistics_outliers,
    step_outliers,
)
from fedmq.aggregator.consistency import named as named_group
from fedmq.aggregator.culprits import (
    MIN_GROUP,
    Decryptor,
    Suspects,
    bounds_check,
    close_groups,
)
from fedmq.aggregator.groups import (
    FAR,
    MIN_GROUPS,
    capped,
    combine,
    filtered_mean,
    partition,
)
from fedmq.aggregator.rounds import RoundState
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams, mean_from_sums
from fedmq.protocol.crypto.paillier import PaillierPrivateKey
from fedmq.protocol.errors import CodecError, DecryptionUnavailable
from fedmq.protocol.privacy.noise import DpParams, mean_from_noisy_sums
from fedmq.protocol.sums.evaluation import FleetEvaluation
from fedmq.protocol.sums.statistics import FleetStatistics, StatsParams
from fedmq.protocol.sums.teacher import fleet_teacher

log = logging.getLogger("fedmq.aggregator.service")
LEFT_OUT = -1  # statistics_rows: the group's statistics were left out as implausible
FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class RoundResult:
    round_id: int
    model_version: int
    params: FloatArray
    closed_by: str
    reported: tuple[str, ...]
    expected: int
    rejected: int
    total_weight: float
    seconds: float
    update_norm: float
    excluded: tuple[str, ...] = ()  # accepted, but in a failing group of the culprit search
    # What the round cost on the wire: the accepted update payloads received, and the
    # retained announcements this aggregator published while the round was open (the
    # round's model, re-sends after a deadline extension or reconnect). The broker sends
    # each announcement on to every subscribed agent.
    update_bytes: int = 0
    model_bytes: int = 0
    phase: str = "training"  # protocol.layout.PHASES
    # Fleet metrics of the model the round STARTED from (training), or of the final
    # model (evaluation): decrypted totals only. None without an evaluation section.
    evaluation: FleetEvaluation | None = None
    statistics: FleetStatistics | None = None  # the statistics round's pooled statistics
    skipped: dict[str, int] = field(default_factory=dict)  # skip code -> expected agents
    clipped_share: float = 0.0  # of the kept updates' values, clipped by the training codec
    epsilon: float | None = None  # device-level DP: the run's epsilon spent after this round


@dataclass(frozen=True)
class Closing:
    """What the decrypted sums of a round yield; nothing when the round must be dropped."""

    kept: tuple[str, ...]
    excluded: tuple[str, ...]  # accepted but not used
    named: tuple[str, ...]  # devices newly named culprits (to quarantine)
    avg_delta: FloatArray | None = None  # training: the FedAvg step
    total_weight: float = 0.0
    evaluation: FleetEvaluation | None = None
    statistics: FleetStatistics | None = None
    groups: int = 1  # groups whose sums were decrypted and used
    # Statistics round: rows per group of devices (for the growth check of later rounds).
    group_rows: dict[frozenset[str], int] = field(default_factory=dict)
    # Distilling fleets: the per-class mean logits of the model the round started from
    # (protocol.sums.teacher), published on the next round; empty when none.
    teacher: tuple[float, ...] = ()

    @property
    def usable(self) -> bool:
        return bool(self.kept)


def _devices(group: Iterable[str], members: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
    """The devices behind a group of members (a relay's partial stands for several)."""
    return frozenset(d for m in group for d in members[m])


def close_round(state: RoundState, private_key: PaillierPrivateKey | Decryptor,
                suspects: Suspects, *,
                spec: ModelSpec, codec: CodecParams, statistics: StatsParams,
                robust: RobustPolicy | None = None,
                statistics_rows: Mapping[frozenset[str], int] | None = None,
                rng: random.Random | None = None, dp: DpParams | None = None) -> Closing:
    """Decrypt the sums of the round's groups (one group when the fleet is too small, or the
    rule is plain ``mean``), check them against each other and decode what the phase yields.

    ``statistics_rows``: the statistics round's rows per group of devices, for the growth check.
    """
    robust = robust or RobustPolicy()
    # Members are devices and relays (whose partial sums cannot be split); everything
    # reported and counted below is in devices.
    members = state.members or {a: (a,) for a in state.vectors}
    sizes = {m: len(d) for m, d in members.items()}
    check = bounds_check(state.layout, private_key, state.vectors, total=state.ciphertext_sum,
                         devices=sizes)
    # Under device-level DP no decrypted sum may hold fewer noise shares than the quorum's.
    min_group = max(robust.min_group, MIN_GROUP if dp is None else state.quorum)
    groups = (frozenset(members),) if robust.rule == "mean" else partition(
        sizes, fleet=state.fleet, min_group=min_group, groups=robust.groups)
    dropped = Closing((), tuple(sorted(state.accepted)), ())
    try:
        found = close_groups(state.round_id, groups, check, suspects, rng=rng,
                             min_group=min_group, devices=sizes)
    except DecryptionUnavailable as exc:
        log.error("%s; %s", exc, "keeping the model" if state.phase == "training"
                  else "nothing learned")
        return dropped
    named = found.named
    group_sums = dict(found.sums)
    left_out: dict[frozenset[str], int] = {}
    sections = {g: state.layout.split(s) for g, s in group_sums.items()}
    if state.phase == "statistics" and len(group_sums) >= MIN_GROUPS:
        stats = {g: parts["statistics"] for g, parts in sections.items()}
        flagged = statistics_invalid(stats, spec, statistics)
        if len(flagged) > robust.tolerances.trim:
            flagged = []  # most of the fleet: a config matter (max_abs), said when adopted
        for group, _ in flagged:
            del stats[group]
        flagged += statistics_outliers(stats, spec, statistics, robust.tolerances)
        for group, why in flagged:
            log.warning("statistics round: group %s left out of the fleet's center/scale: %s",
                        named_group(group, members), why)
            del group_sums[group], sections[group]
            left_out[_devices(group, members)] = LEFT_OUT
    kept = _devices((m for g in group_sums for m in g), members)
    dropped = Closing((), tuple(sorted(state.accepted)), named)
    if not group_sums or len(kept) < state.quorum:
        log.error("round %d: decrypted sum rejected (no group of at least the quorum passes "
                  "its bounds); %s", state.round_id,
                  "keeping the model" if state.phase == "training" else "nothing learned")
        return dropped
    total = state.layout.split([sum(c) for c in zip(*group_sums.values(), strict=True)])
    excluded = tuple(sorted(set(state.accepted) - kept))
    done = functools.partial(Closing, tuple(sorted(kept)), excluded, named,
                             groups=len(group_sums))
    try:
        if state.phase == "statistics":
            rows = {_devices(g, members): s["statistics"][-1]
                    for g, s in sections.items()} | left_out
            return done(statistics=FleetStatistics.from_sums(total["statistics"], spec,
                                                             statistics), group_rows=rows)
        # Under DP without exact aggregates, training updates carry no evaluation section.
        evaluation = (_evaluation(state, sections, members, spec, statistics, codec,
                                  robust.tolerances, statistics_rows or {})
                      if "evaluation" in total else None)
        if state.phase == "evaluation":
            return done(evaluation=evaluation)
        avg_delta, total_weight = _step(state, sections, members, codec, robust, dp,
                                        statistics_rows or {})
    except CodecError as exc:
        # A forged or broken update in a fleet too small to split (or several
        # culprits): the round is dropped and the model kept.
        log.error("round %d: decrypted sum rejected (%s); keeping the model", state.round_id,
                  exc)
        return dropped
    return done(avg_delta=avg_delta, total_weight=total_weight, evaluation=evaluation,
                teacher=_teacher(state.round_id, total, spec, statistics))


def _teacher(round_id: int, total: Mapping[str, list[int]], spec: ModelSpec,
             statistics: StatsParams) -> tuple[float, ...]:
    """The fleet's teacher from the round's totals (every kept group: the class counts come
    from the same groups' evaluation sums), or () when the round carries none."""
    if "teacher" not in total or "evaluation" not in total:
        return ()
    try:
        counts = [sum(row) for row in FleetEvaluation.from_sums(
            total["evaluation"], spec, statistics).confusion]
        return fleet_teacher(total["teacher"], counts, spec, statistics)
    except CodecError as exc:
        # Like the metric's: inconsistent sums cost the next round its teacher, not the model.
        log.error("round %d: teacher sums rejected (%s); the next round trains without one",
                  round_id, exc)
        return ()


def _step(state: RoundState, sections: Mapping[Group, dict[str, list[int]]],
          members: Mapping[str, tuple[str, ...]], codec: CodecParams, robust: RobustPolicy,
          dp: DpParams | None, statistics_rows: Mapping[frozenset[str], int]
          ) -> tuple[FloatArray, float]:
    """The training step: ``robust.rule`` across the groups' mean updates, each group
    weighing at most the rows its devices reported in the statistics round (a group
    without that figure: at most WEIGHT_CAP median groups); returns it and the weight of
    the groups it used."""
    means: dict[Group, FloatArray] = {}
    weights: dict[Group, float] = {}
    uncapped: set[Group] = set()
    grown: list[tuple[Group, str]] = []
    for group, parts in sections.items():
        name = named_group(group, members)
        rows = statistics_rows.get(_devices(group, members))
        if dp is not None:  # device-level DP: a noised sum of unweighted, clipped deltas
            mean, devices = mean_from_noisy_sums(parts["training"], dp)
            means[group], weights[group] = mean, float(devices)
            continue
        mean, weight = mean_from_sums(parts["training"], codec)
        means[group], weights[group] = mean, float(weight)
        rows = None if rows == LEFT_OUT else rows
        why = growth_check(weight, rows, robust.tolerances)
        if robust.rule == "mean" or len(sections) == 1:
            if why:
                log.warning("round %d: group %s: %s", state.round_id, name, why)
            continue  # plain FedAvg: the weights as claimed
        if why:
            # A weight no honest device can claim also skews its group's mean toward the
            # device that claimed it: the group's update cannot be trusted at any weight.
            grown.append((group, why))
        if rows is None:
            uncapped.add(group)
        else:  # an honest device trains on the rows it summed, or on rows added since
            weights[group] = min(float(weight), float(rows))
    leave = len(grown) < len(means)  # never every group: then they all count, capped
    for group, why in grown:
        log.warning("round %d: group %s%s: %s", state.round_id, named_group(group, members),
                    " left out of the step" if leave else "", why)
        if leave:
            del means[group], weights[group]
            uncapped.discard(group)
    if uncapped:
        limits = dict(zip(weights, capped(list(weights.values())), strict=True))
        for group in uncapped:
            weights[group] = limits[group]
    order = list(means)
    if robust.rule != "filtered-mean":
        step = combine(robust.rule, list(means.values()), list(weights.values()), robust.trim)
        for group, why in step_outliers(means, step):
            log.warning("round %d: group %s outvoted by the robust rule: %s", state.round_id,
                        named_group(group, members), why)
        return step, sum(weights.values())
    step, far = filtered_mean(list(means.values()), list(weights.values()))
    for i in far:
        log.warning("round %d: group %s left out of the step: its mean update lies more than "
                    "%g times the groups' typical spacing from the coordinate-wise median of "
                    "the group means", state.round_id, named_group(order[i], members), FAR)
    return step, sum(weights[g] for i, g in enumerate(order) if i not in far)


def _evaluation(state: RoundState, sections: Mapping[Group, dict[str, list[int]]],
                members: Mapping[str, tuple[str, ...]], spec: ModelSpec,
                statistics: StatsParams, codec: CodecParams, tol: Tolerances,
                statistics_rows: Mapping[frozenset[str], int]) -> FleetEvaluation | None:
    """The fleet metric over the groups whose evaluation sums can be honest."""
    evals = {g: s["evaluation"] for g, s in sections.items()}
    impossible: list[tuple[Group, str]] = []
    weighted = state.layout.sections[0].name == "training" and \
        state.layout.sections[0].max_count > 1  # weight = rows (no DP)
    for group, parts in sections.items():
        rows = statistics_rows.get(_devices(group, members))
        why = None
        if rows == LEFT_OUT:
            why = "the same devices' sums were left out of the statistics round"
        elif weighted:
            why = rows_check(parts["training"][-1], parts["evaluation"][-1], codec.max_weight,
                             sum(len(members[m]) for m in group))
        if why is None and rows is not None and rows != LEFT_OUT:
            why = growth_check(parts["evaluation"][-1], rows, tol)
            why = why and why.replace("training weight", "evaluation row count")
        if why:
            impossible.append((group, why))
    flagged = evaluation_outliers(evals, spec, statistics, tol, impossible) \
        if len(evals) >= 3 else impossible
    what = "round" if state.phase == "training" else "evaluation round"
    for group, why in flagged:
        log.warning("%s %d: group %s left out of the fleet metric: %s", what, state.round_id,
                    named_group(group, members), why)
    left = {g for g, _ in flagged}
    rest = [s for g, s in evals.items() if g not in left]
    if not rest:
        return None
    return _metric(state.round_id, [sum(c) for c in zip(*rest, strict=True)], spec,
                   statistics)


def _metric(round_id: int, sums: list[int], spec: ModelSpec,
            statistics: StatsParams) -> FleetEvaluation | None:
    # Inconsistent metric sums (that passed the bounds) cost the round its metrics,
    # never its model update: the training section is checked on its own.
    try:
        return FleetEvaluation.from_sums(sums, spec, statistics)
    except CodecError as exc:
        log.error("round %d: fleet evaluation sums rejected (%s)", round_id, exc)
        return None
