"""TEMPORARY stand-in (coordinator's wiring branch); replaced by helper i11-core's module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RoundCharge:
    round_id: int
    rho: float
    devices: int


class PrivacyLedger:
    def __init__(self, delta: float, charges: Any = ()) -> None:
        self.delta = delta
        self.charges: list[RoundCharge] = list(charges)

    def charge(self, round_id: int, rho: float, devices: int) -> None:
        self.charges.append(RoundCharge(round_id, rho, devices))

    def _eps(self, rhos: list[float]) -> float:
        import dp_accounting
        from dp_accounting.rdp import RdpAccountant
        acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
        for r in rhos:
            acc.compose(dp_accounting.ZCDpEvent(r))
        return float(acc.get_epsilon(self.delta)) if rhos else 0.0

    def epsilon(self) -> float:
        return self._eps([c.rho for c in self.charges])

    def epsilon_with(self, rho: float) -> float:
        return self._eps([*(c.rho for c in self.charges), rho])

    def to_dict(self) -> dict[str, Any]:
        return {"delta": self.delta, "charges": [c.__dict__ for c in self.charges]}

    @classmethod
    def from_dict(cls, doc: Any) -> PrivacyLedger:
        return cls(doc["delta"], [RoundCharge(**c) for c in doc["charges"]])


def calibrate_noise_multiplier(*, epsilon: float, delta: float, rounds: int, d: int,
                               quorum: int, precision_bits: int = 20) -> float:
    lo, hi = 0.01, 1000.0
    from protocol.privacy import DpParams
    for _ in range(60):
        mid = (lo + hi) / 2
        p = DpParams(epsilon, delta, mid, 1.0, quorum, precision_bits)
        led = PrivacyLedger(delta, [RoundCharge(i, p.round_rho(d, quorum), quorum)
                                    for i in range(rounds)])
        if led.epsilon() > epsilon:
            lo = mid
        else:
            hi = mid
    return hi
