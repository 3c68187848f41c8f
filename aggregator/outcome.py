"""What a closed round yields, and the round's record.

The service only sequences; the decision "which updates count, and what the
round yields" (a FedAvg step and fleet metrics, or the pooled statistics) lives
here: decrypt the sum of every accepted update, or, when that sum fails the
codec's bounds, the sums the culprit search allows (aggregator.culprits)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.culprits import MIN_GROUP, Suspects, bounds_check, close_sum
from fedmq.aggregator.rounds import RoundState
from fedmq.models import ModelSpec
from fedmq.protocol.crypto.codec import CodecParams, mean_from_sums
from fedmq.protocol.crypto.paillier import PaillierPrivateKey
from fedmq.protocol.errors import CodecError
from fedmq.protocol.privacy.noise import DpParams, mean_from_noisy_sums
from fedmq.protocol.sums.evaluation import FleetEvaluation
from fedmq.protocol.sums.statistics import FleetStatistics, StatsParams

log = logging.getLogger("fedmq.aggregator.service")
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

    @property
    def usable(self) -> bool:
        return bool(self.kept)


def close_round(state: RoundState, private_key: PaillierPrivateKey, suspects: Suspects, *,
                spec: ModelSpec, codec: CodecParams, statistics: StatsParams,
                rng: random.Random | None = None, dp: DpParams | None = None) -> Closing:
    """Decrypt the round's sum (or the sums the culprit search keeps) and decode each section."""
    # Members are devices and relays (whose partial sums the search cannot split);
    # everything reported and counted below is in devices.
    members = state.members or {a: (a,) for a in state.vectors}
    check = bounds_check(state.layout, private_key, state.vectors, total=state.ciphertext_sum,
                         devices={m: len(d) for m, d in members.items()})
    # Under device-level DP no decrypted sum may hold fewer noise shares than the quorum's.
    min_group = MIN_GROUP if dp is None else max(MIN_GROUP, state.quorum)
    kept_members, sums, named = close_sum(state.round_id, members, check, suspects, rng=rng,
                                          min_group=min_group)
    kept = frozenset(d for m in kept_members for d in members[m])
    dropped = Closing((), tuple(sorted(state.accepted)), tuple(named))
    if sums is None or len(kept) < state.quorum:
        log.error("round %d: decrypted sum rejected (no group of at least the quorum passes "
                  "its bounds); %s", state.round_id,
                  "keeping the model" if state.phase == "training" else "nothing learned")
        return dropped
    sections = state.layout.split(sums)
    excluded = tuple(sorted(set(state.accepted) - kept))
    try:
        if state.phase == "statistics":
            return Closing(tuple(sorted(kept)), excluded, tuple(named),
                           statistics=FleetStatistics.from_sums(sections["statistics"], spec,
                                                                statistics))
        # Under DP without exact aggregates, training updates carry no evaluation section.
        evaluation = (_evaluation(state.round_id, sections["evaluation"], spec, statistics)
                      if "evaluation" in sections else None)
        if state.phase == "evaluation":
            return Closing(tuple(sorted(kept)), excluded, tuple(named), evaluation=evaluation)
        if dp is not None:  # device-level DP: a noised sum of unweighted, clipped deltas
            avg_delta, devices = mean_from_noisy_sums(sections["training"], dp)
            total_weight = float(devices)
        else:
            avg_delta, total_weight = mean_from_sums(sections["training"], codec)
    except CodecError as exc:
        # A forged or broken update in a fleet too small to split (or several
        # culprits): the round is dropped and the model kept.
        log.error("round %d: decrypted sum rejected (%s); keeping the model", state.round_id,
                  exc)
        return dropped
    return Closing(tuple(sorted(kept)), excluded, tuple(named), avg_delta=avg_delta,
                   total_weight=total_weight, evaluation=evaluation)


def _evaluation(round_id: int, sums: list[int], spec: ModelSpec,
                statistics: StatsParams) -> FleetEvaluation | None:
    # Inconsistent metric sums (that passed the bounds) cost the round its metrics,
    # never its model update: the training section is checked on its own.
    try:
        return FleetEvaluation.from_sums(sums, spec, statistics)
    except CodecError as exc:
        log.error("round %d: fleet evaluation sums rejected (%s)", round_id, exc)
        return None
