"""The differential-privacy terms a fleet announces with its public key. Pure.

Two levels, each optional, both may be on:

- device level (``device``, protocol.privacy.noise.DpParams): each device clips its
  whole update to an L2 norm, adds its share of discrete Gaussian noise in the
  integer domain, and the aggregator decrypts only the noised sum; the gateway
  accounts one event per round and enforces the run's budget;
- sample level (``sample``, SampleDpParams): DP-SGD on each device (per-example
  clipping, Gaussian noise, Poisson-sampled batches), calibrated and accounted by
  the device itself over the run's announced number of rounds.

With either on, updates are unweighted (each device counts once): a FedAvg weight
of n rows would make one row, or one device, move the model without bound. And
the exact fleet totals that are not noised (the statistics round's sums, the
per-round federated evaluation) are left out, unless ``exact_aggregates`` says
the operator accepts releasing them outside the budget.

The terms are part of the encoding contract (protocol.layout.contract_digest):
an agent that does not apply them computes another digest and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.privacy.noise import DpParams


@dataclass(frozen=True)
class SampleDpParams:
    """DP-SGD on each device: its budget per run, and the per-example clip."""

    epsilon: float
    delta: float
    clip: float  # L2 norm bound of one example's gradient
    rounds: int  # training rounds of the run: each device calibrates its noise to them

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ProtocolError("sample-level epsilon must be a positive number")
        if not 0 < self.delta < 1:
            raise ProtocolError("sample-level delta must lie in (0, 1)")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ProtocolError("sample-level clip must be a positive number")
        if self.rounds < 1:
            raise ProtocolError("sample-level DP needs at least one round")

    def to_dict(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "delta": self.delta, "clip": self.clip,
                "rounds": self.rounds}

    @classmethod
    def from_dict(cls, doc: Any) -> SampleDpParams:
        if not isinstance(doc, dict):
            raise ProtocolError("sample-level DP terms must be an object")
        try:
            return cls(epsilon=float(doc["epsilon"]), delta=float(doc["delta"]),
                       clip=float(doc["clip"]), rounds=int(doc["rounds"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"bad sample-level DP terms: {exc}") from exc


@dataclass(frozen=True)
class PrivacyTerms:
    device: DpParams | None = None
    sample: SampleDpParams | None = None
    # Release the statistics round's and the federated evaluation's exact fleet totals
    # although the budget does not cover them (the operator's explicit choice).
    exact_aggregates: bool = False

    @property
    def enabled(self) -> bool:
        return self.device is not None or self.sample is not None

    @property
    def evaluates(self) -> bool:
        """Whether updates carry exact evaluation sums (and a final evaluation round runs)."""
        return not self.enabled or self.exact_aggregates

    def to_dict(self) -> dict[str, Any]:
        return {"device": None if self.device is None else self.device.to_dict(),
                "sample": None if self.sample is None else self.sample.to_dict(),
                "exact_aggregates": self.exact_aggregates}

    @classmethod
    def from_dict(cls, doc: Any) -> PrivacyTerms:
        if doc is None:
            return cls()
        if not isinstance(doc, dict) or not isinstance(doc.get("exact_aggregates"), bool):
            raise ProtocolError("privacy terms must be an object with exact_aggregates")
        device, sample = doc.get("device"), doc.get("sample")
        return cls(device=None if device is None else DpParams.from_dict(device),
                   sample=None if sample is None else SampleDpParams.from_dict(sample),
                   exact_aggregates=doc["exact_aggregates"])

    def describe(self) -> str:
        """One line for logs: what is on."""
        parts = []
        if self.device is not None:
            d = self.device
            colluding = (f", {d.colluding_devices} of them possibly colluding"
                         if d.colluding_devices else "")
            parts.append(f"device-level DP (epsilon {d.epsilon:g} at delta {d.delta:g}, noise "
                         f"multiplier {d.noise_multiplier:.3g}, clip {d.clip:g}, calibrated "
                         f"to {d.quorum} devices{colluding})")
        if self.sample is not None:
            s = self.sample
            parts.append(f"sample-level DP-SGD (epsilon {s.epsilon:g} at delta {s.delta:g} "
                         f"per device over {s.rounds} rounds, example clip {s.clip:g})")
        return " and ".join(parts) or "no differential privacy"
