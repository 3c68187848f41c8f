"""Plaintext federated averaging maths: the reference the encrypted path must match."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def weighted_average(
    deltas: Sequence[NDArray[np.float64]], weights: Sequence[float]
) -> NDArray[np.float64]:
    """sum_k n_k * delta_k / sum_k n_k, the FedAvg step in parameter-delta form."""
    if not deltas or len(deltas) != len(weights):
        raise ValueError("need as many weights as deltas, and at least one of each")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w <= 0):
        raise ValueError("weights must be positive")
    stacked = np.stack([np.asarray(d, dtype=np.float64) for d in deltas])
    return np.asarray((w[:, None] * stacked).sum(axis=0) / w.sum(), dtype=np.float64)
