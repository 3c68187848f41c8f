"""What a closed round yields: the FedAvg step from the decrypted sums, and the round's record.

The service only sequences; the decision "which updates count, and what is the
step" lives here: decrypt the sum of every accepted update, or, when that sum
fails the codec's bounds, the sums the culprit search allows (aggregator.culprits).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from aggregator.culprits import Suspects, bounds_check, close_sum
from aggregator.rounds import RoundState
from protocol.codec import Codec, mean_from_sums
from protocol.errors import CodecError
from protocol.paillier import PaillierPrivateKey

log = logging.getLogger("aggregator.service")
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


@dataclass(frozen=True)
class FedavgStep:
    """The weighted mean delta of the kept updates, or None when the round must be dropped."""

    avg_delta: FloatArray | None
    total_weight: float
    excluded: tuple[str, ...]  # accepted but not used
    named: tuple[str, ...]  # devices newly named culprits (to quarantine)


def fedavg_step(state: RoundState, codec: Codec, private_key: PaillierPrivateKey,
                suspects: Suspects, *, rng: random.Random | None = None) -> FedavgStep:
    check = bounds_check(codec, private_key, state.n_values, state.vectors,
                         total=state.ciphertext_sum)
    kept, sums, named = close_sum(state.round_id, state.accepted, check, suspects, rng=rng)
    try:
        if sums is None or len(kept) < state.quorum:
            raise CodecError("no group of at least the quorum passes its bounds")
        avg_delta, total_weight = mean_from_sums(sums, codec.params)
    except CodecError as exc:
        # A forged or broken update in a fleet too small to split (or several
        # culprits): the round is dropped and the model kept.
        log.error("round %d: decrypted sum rejected (%s); keeping the model", state.round_id,
                  exc)
        return FedavgStep(None, 0, tuple(sorted(state.accepted)), tuple(named))
    return FedavgStep(avg_delta, total_weight, tuple(sorted(set(state.accepted) - kept)),
                      tuple(named))
