"""The methods ``fedmq bench-noniid`` compares, and its adapters to the fleet's real code.

A method is a preset name with optional overrides, ``name[:key=value,...]``, e.g.
``fedadam:server_lr=0.03,tau=0.001`` or ``fedavg:rule=mean``. Keys are the signed
[server] settings (optimizer, server_lr, momentum, beta1, beta2, tau), the signed
[training] settings (epochs, batch_size, learning_rate, l2, prox_mu, augment, jitter,
distill_weight, distill_temperature, personal, ditto_lambdas, personal_epochs) and the
aggregator's [robust] ``rule``. Every call into the fleet's code goes through the
adapters here: the device's local training (``edge_agent.trainer``), the aggregator's
server optimizer (``aggregator.server_opt``) and the device's personal model
(``edge_agent.personal``), never an imitation of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.server_opt import ServerState, initial_state, server_step
from fedmq.edge_agent import personal
from fedmq.edge_agent.trainer import local_fit
from fedmq.models import ModelSpec, make_model
from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.messages import TrainingSettings
from fedmq.protocol.server import ServerSettings

FloatArray = NDArray[np.float64]

SERVER_KEYS = ("optimizer", "server_lr", "momentum", "beta1", "beta2", "tau")
RULE_KEY = "rule"
RULES = ("filtered-mean", "trimmed-mean", "median", "mean")
DEFAULT_RULE = "filtered-mean"  # the aggregator's [robust] rule by default

# preset -> overrides; "local" and "central" are the baselines, not federated runs.
PRESETS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavgm": {"optimizer": "fedavgm"},
    "fedadam": {"optimizer": "fedadam", "server_lr": 0.1},
    "fedyogi": {"optimizer": "fedyogi", "server_lr": 0.1},
    "fedadagrad": {"optimizer": "fedadagrad", "server_lr": 0.1},
    "fedprox": {"prox_mu": 0.1},
    "finetune": {"personal": "finetune"},
    "ditto": {"personal": "ditto"},
    "intercept": {"personal": "intercept"},
    "augment": {"augment": "oversample+jitter"},
    "distill": {"distill_weight": 0.5},
    "local": {},
    "central": {},
}
BASELINES = ("local", "central")
DEFAULT_METHODS = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedprox",
                   "finetune", "ditto", "intercept", "augment", "distill", "local", "central")


def _value(text: str) -> Any:
    if "/" in text:  # ditto_lambdas: 0.01/0.1/1
        return tuple(float(v) for v in text.split("/"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class Method:
    """One column of the benchmark: the settings a fleet would be configured with."""

    label: str
    preset: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def baseline(self) -> bool:
        return self.preset in BASELINES

    @property
    def rule(self) -> str:
        return str(self.overrides.get(RULE_KEY, DEFAULT_RULE))

    def training(self, base: TrainingSettings) -> TrainingSettings:
        """``base`` with this method's [training] keys; ConfigError for a key that is
        not one."""
        known = {f.name for f in dataclasses.fields(base)}
        keys = {k: v for k, v in self.overrides.items() if k not in SERVER_KEYS
                and k != RULE_KEY}
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ConfigError(f"{self.label}: no [training] or [server] key "
                              f"{', '.join(unknown)}")
        try:
            return dataclasses.replace(base, **keys)
        except (ProtocolError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.label}: {exc}") from exc

    def server(self) -> ServerSettings:
        """The method's signed [server] settings."""
        keys = {k: v for k, v in self.overrides.items() if k in SERVER_KEYS}
        try:
            return ServerSettings(**keys)
        except (ProtocolError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.label}: {exc}") from exc

    @property
    def personal(self) -> str:
        return str(self.overrides.get("personal", "none"))

    def applies(self, kind: str) -> bool:
        """Distillation and oversampling need classes: not for a regression."""
        classes_only = float(self.overrides.get("distill_weight", 0)) > 0 or \
            "oversample" in str(self.overrides.get("augment", "none"))
        return kind == "logistic" or not classes_only


def parse_method(text: str) -> Method:
    """``name[:key=value,...]`` -> Method; bad input is one ConfigError line."""
    name, _, rest = text.partition(":")
    if name not in PRESETS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(PRESETS)}")
    overrides = dict(PRESETS[name])
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"method {text!r}: overrides are key=value, got {item!r}")
        overrides[key.strip().replace("-", "_")] = _value(value.strip())
    if overrides.get(RULE_KEY, DEFAULT_RULE) not in RULES:
        raise ConfigError(f"method {text!r}: rule must be one of {', '.join(RULES)}")
    return Method(text, name, overrides)


# -- adapters to the fleet's code ---------------------------------------------------------


def local_train(spec: ModelSpec, settings: TrainingSettings, start: FloatArray,
                X: FloatArray, y: FloatArray, *, seed: int,
                teacher: tuple[float, ...] = ()) -> FloatArray:
    """The device's local training from ``start``: its new parameters."""
    params, _before, _after = local_fit(spec, settings, start, X, y, seed=seed,
                                        teacher=teacher or None)
    return np.asarray(params, dtype=np.float64)


class Server:
    """The aggregator's step from the round's average delta: FedAvg, or the [server]
    optimizer with its state carried from round to round."""

    def __init__(self, settings: ServerSettings, n_params: int) -> None:
        self.settings = settings
        self.state: ServerState = initial_state(settings, n_params)

    def step(self, params: FloatArray, avg_delta: FloatArray) -> FloatArray:
        new, self.state = server_step(self.settings, self.state, params, avg_delta)
        return np.asarray(new, dtype=np.float64)


def fit_personal(method: Method, spec: ModelSpec, settings: TrainingSettings,
                 params: FloatArray, X: FloatArray, y: FloatArray, *, previous: Any = None,
                 seed: int) -> Any:
    """The device's personal model (edge_agent.personal.fit_personal)."""
    return personal.fit_personal(method.personal, spec, settings, params, X, y,
                                 previous=previous, seed=seed)


def training_rows(method: Method, spec: ModelSpec, X: FloatArray) -> FloatArray:
    """The rows a device trains the global update on: with personal intercepts, its own
    standardisation mapped into the fleet's units (edge_agent.personal.aligned_rows, as
    edge_agent.phases does), otherwise its rows."""
    if method.personal != "intercept":
        return X
    return np.asarray(personal.aligned_rows(spec, X), dtype=np.float64)


def teacher_section(spec: ModelSpec, params: FloatArray, X: FloatArray,
                    y: FloatArray) -> tuple[list[int], list[int]]:
    """One device's teacher section (protocol.sums.teacher.local_teacher: per-class sums
    of the received model's quantized logits) and its class counts (what the evaluation
    section's confusion matrix gives the aggregator), on the same first max_samples rows."""
    from fedmq.models.logistic import LogisticRegressionModel
    from fedmq.protocol.sums.statistics import StatsParams
    from fedmq.protocol.sums.teacher import local_teacher

    stats = StatsParams()
    model = make_model(spec).set_params_vector(params)
    if not isinstance(model, LogisticRegressionModel):
        raise ConfigError("distillation needs a classifier")
    counts = np.bincount(np.asarray(y[: stats.max_samples], dtype=np.int64),
                         minlength=spec.n_classes)
    return local_teacher(model, X, y, stats), [int(c) for c in counts]


def fleet_teacher(spec: ModelSpec, sections: list[tuple[list[int], list[int]]]
                  ) -> tuple[float, ...]:
    """The next round's teacher from the devices' sections, as the aggregator decodes it."""
    from fedmq.protocol.sums.statistics import StatsParams
    from fedmq.protocol.sums.teacher import fleet_teacher as decode

    sums = [sum(col) for col in zip(*(s for s, _ in sections), strict=True)]
    counts = [sum(col) for col in zip(*(c for _, c in sections), strict=True)]
    return decode(sums, counts, spec, StatsParams())
