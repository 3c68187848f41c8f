"""The server optimizer a run applies to the fleet's average update, as signed into each round.

The aggregator steps the global model with it (aggregator.server_opt); agents only read it,
so logs on both sides name the same optimizer. Absent on the wire when it is the default
(plain FedAvg), so agents older than it parse rounds of gateways that do not use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from fedmq.protocol.errors import ProtocolError

# fedavg: w + avg_delta (today's step). The others follow Reddi et al. 2021, "Adaptive
# Federated Optimization" (FedAvgM: server momentum, Hsu et al. 2019).
OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


MAX_SERVER_LR = 100.0
MAX_TAU = 1.0


@dataclass(frozen=True)
class ServerSettings:
    """Which server optimizer and its hyperparameters (each used only by the optimizers
    that have it: momentum by fedavgm, beta1/beta2/tau by the adaptive ones)."""

    optimizer: str = "fedavg"
    server_lr: float = 1.0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ProtocolError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, "
                                f"not {self.optimizer!r}")
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value)):
                raise ProtocolError(f"{f.name} must be a finite number, not {value!r}")
        # Upper bounds keep the state finite: v starts at tau^2, and a step of server_lr
        # beyond 100 is a typo, not a setting (both overflowed into "state v must be finite").
        if not (0 < self.server_lr <= MAX_SERVER_LR and 0 < self.tau <= MAX_TAU):
            raise ProtocolError(f"server_lr must be in (0, {MAX_SERVER_LR:g}] and tau in "
                                f"(0, {MAX_TAU:g}], not {self.server_lr!r} and {self.tau!r}")
        for name in ("momentum", "beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ProtocolError(f"{name} must be in [0, 1), not {getattr(self, name)!r}")

    @property
    def is_default(self) -> bool:
        return self == ServerSettings()

    def describe(self) -> str:
        """One phrase for logs: the optimizer and the hyperparameters it uses."""
        if self.optimizer == "fedavg":
            return "fedavg" if self.server_lr == 1 else f"fedavg (server_lr {self.server_lr:g})"
        used = ["server_lr"] + (["momentum"] if self.optimizer == "fedavgm"
                                else ["beta1", "tau"] if self.optimizer == "fedadagrad"
                                else ["beta1", "beta2", "tau"])
        return f"{self.optimizer} ({', '.join(f'{n} {getattr(self, n):g}' for n in used)})"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, doc: Any) -> ServerSettings:
        """Missing keys take their defaults; unknown ones are ignored (a later gateway's
        settings: agents only report them, the aggregator alone applies them)."""
        if not isinstance(doc, dict):
            raise ProtocolError("server settings must be an object")
        names = {f.name for f in fields(cls)}
        optimizer = doc.get("optimizer", "fedavg")
        if not isinstance(optimizer, str):
            raise ProtocolError("server optimizer must be a string")
        numbers = {}
        for name in names - {"optimizer"}:
            if name in doc:
                value = doc[name]
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise ProtocolError(f"server setting {name!r} must be a number")
                try:
                    numbers[name] = float(value)
                except OverflowError:  # an integer beyond any float (JSON allows it)
                    raise ProtocolError(f"server setting {name!r} is out of range") from None
        return cls(optimizer=optimizer, **numbers)


# The step `fedmq bench-noniid` found most robust for each model kind (8 devices, 3 seeds,
# label, feature and quantity skew; docs/benchmarks.md, "Non-IID fleets"): what
# `fedmq init gateway` writes and the end-of-run hint names. The code's default stays FedAvg.
RECOMMENDED: dict[str, ServerSettings] = {
    "logistic": ServerSettings(optimizer="fedadam", server_lr=0.2),
    "linear": ServerSettings(optimizer="fedavgm", momentum=0.7),
}


def recommended_keys(kind: str) -> dict[str, str | float]:
    """RECOMMENDED[kind] as the [server] keys that differ from the default (and server_lr)."""
    chosen = RECOMMENDED[kind]
    keys: dict[str, str | float] = {"optimizer": chosen.optimizer,
                                    "server_lr": chosen.server_lr}
    if chosen.optimizer == "fedavgm":
        keys["momentum"] = chosen.momentum
    return keys
