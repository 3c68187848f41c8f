"""TEMPORARY stand-in (coordinator's wiring branch); replaced by helper i11-core's module."""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from protocol.errors import CodecError, ProtocolError

MECHANISM = "ddg/1"


@dataclass(frozen=True)
class DpParams:
    epsilon: float
    delta: float
    noise_multiplier: float
    clip: float
    quorum: int
    precision_bits: int = 20
    tail: float = 12.0
    mechanism: str = MECHANISM

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> DpParams:
        if not isinstance(doc, dict):
            raise ProtocolError("dp params must be an object")
        return cls(**doc)

    def sensitivity(self, d: int) -> float:
        return 2.0**self.precision_bits + math.sqrt(d) / 2

    def device_sigma(self, d: int) -> float:
        return self.noise_multiplier * self.sensitivity(d) / math.sqrt(self.quorum)

    def bound_int(self, d: int) -> int:
        return (1 << self.precision_bits) + math.ceil(self.tail * self.device_sigma(d))

    def round_rho(self, d: int, reporting: int) -> float:
        return self.sensitivity(d) ** 2 / (2 * reporting * self.device_sigma(d) ** 2)


@dataclass(frozen=True)
class DpContract:
    params: DpParams
    d: int
    max_agents: int

    @property
    def bound_int(self) -> int:
        return self.params.bound_int(self.d)


@dataclass(frozen=True)
class NoisyUpdate:
    values: list[int]
    norm: float
    clipped: bool


def noisy_update(delta: Any, params: DpParams, *, rng: np.random.Generator | None = None
                 ) -> NoisyUpdate:
    delta = np.asarray(delta, dtype=np.float64)
    if not np.all(np.isfinite(delta)):
        raise CodecError("non-finite")
    norm = float(np.linalg.norm(delta))
    clipped = norm > params.clip
    if clipped:
        delta = delta * (params.clip / norm)
    q = np.rint(delta * (2.0**params.precision_bits / params.clip)).astype(np.int64)
    rng = rng or np.random.default_rng(secrets.randbits(128))
    s = params.device_sigma(delta.size)
    noise = np.rint(rng.normal(0, s, delta.size)).astype(np.int64)
    return NoisyUpdate([*(q + noise).tolist(), 1], norm, clipped)


def mean_from_noisy_sums(sums: Any, params: DpParams) -> tuple[np.ndarray, int]:
    m = int(sums[-1])
    if m < 1:
        raise CodecError("count")
    scale = params.clip / (m * 2.0**params.precision_bits)
    return np.array([s * scale for s in sums[:-1]], dtype=np.float64), m
