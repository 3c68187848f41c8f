"""The methods ``fedmq bench-noniid`` compares, and its adapters to the fleet's real code.

A method is a preset name with optional overrides, ``name[:key=value,...]``, e.g.
``fedadam:server_lr=0.03,tau=0.001`` or ``fedavg:rule=mean``. Keys are the signed
[server] settings (optimizer, server_lr, momentum, beta1, beta2, tau), the signed
[training] settings (epochs, batch_size, learning_rate, l2, prox_mu, augment, jitter,
distill_weight, distill_temperature, personal, ditto_lambdas, personal_epochs) and the
aggregator's [robust] ``rule``. Every call into the fleet's code goes through the
adapters here: the device's local training (``edge_agent.trainer``), the aggregator's
server optimizer (``aggregator.server_opt``) and the device's personal model
(``edge_agent.personal``). A method whose code this build lacks is reported as
unavailable, never imitated.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.models import ModelSpec
from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.messages import TrainingSettings

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


def _optional(module: str, name: str) -> Any:
    """``module.name`` when this build has it (the parts of issue 21 land separately)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def server_settings_class() -> Any:
    return (_optional("fedmq.protocol.messages", "ServerSettings")
            or _optional("fedmq.protocol.server", "ServerSettings"))


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
        """``base`` with this method's [training] keys; ConfigError when this build's
        TrainingSettings lacks one of them."""
        keys = {k: v for k, v in self.overrides.items()
                if k not in SERVER_KEYS and k != RULE_KEY}
        known = {f.name for f in dataclasses.fields(base)}
        missing = sorted(set(keys) - known)
        if missing:
            raise ConfigError(f"{self.label}: this build's training settings lack "
                              f"{', '.join(missing)}")
        try:
            return dataclasses.replace(base, **keys)
        except (ProtocolError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.label}: {exc}") from exc

    def server(self) -> Any:
        """The method's ServerSettings, or None for plain FedAvg on a build without them."""
        keys = {k: v for k, v in self.overrides.items() if k in SERVER_KEYS}
        cls = server_settings_class()
        if cls is None:
            if keys.get("optimizer", "fedavg") != "fedavg":
                raise ConfigError(f"{self.label}: this build has no server optimizers")
            return None
        try:
            return cls(**keys)
        except (ProtocolError, TypeError, ValueError) as exc:
            raise ConfigError(f"{self.label}: {exc}") from exc

    @property
    def personal(self) -> str:
        return str(self.overrides.get("personal", "none"))


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
    local_fit = _optional("fedmq.edge_agent.trainer", "local_fit")
    if local_fit is not None:
        kwargs = {"teacher": teacher} if teacher else {}
        params, _before, _after = local_fit(spec, settings, start, X, y, seed=seed, **kwargs)
        return np.asarray(params, dtype=np.float64)
    # Before local_fit: train_round's own body (the same model, hyperparameters and seed).
    from fedmq.models import make_model

    model = make_model(spec, learning_rate=settings.learning_rate, epochs=settings.epochs,
                       batch_size=settings.batch_size, l2=settings.l2, seed=seed)
    model.fit(X, y, init_params=start)
    return np.asarray(model.params_, dtype=np.float64)


class Server:
    """The aggregator's step from the round's average delta: FedAvg, or the [server]
    optimizer with its state carried from round to round."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.state: Any = None
        step = _optional("fedmq.aggregator.server_opt", "server_step")
        state_cls = _optional("fedmq.aggregator.server_opt", "ServerState")
        fedavg = settings is None or getattr(settings, "optimizer", "fedavg") == "fedavg"
        if (step is None or state_cls is None) and not fedavg:
            raise ConfigError("this build has no aggregator.server_opt")
        self._step = None if step is None else step
        if state_cls is not None:
            self.state = state_cls() if _no_required_fields(state_cls) else state_cls(0, None,
                                                                                       None)

    def step(self, params: FloatArray, avg_delta: FloatArray) -> FloatArray:
        if self._step is None or self.settings is None:
            return params + avg_delta  # today's aggregator: w + mean delta
        new, self.state = self._step(self.settings, self.state, params, avg_delta)
        return np.asarray(new, dtype=np.float64)


def _no_required_fields(cls: Any) -> bool:
    if not dataclasses.is_dataclass(cls):
        return False
    return all(f.default is not dataclasses.MISSING or f.default_factory is not
               dataclasses.MISSING for f in dataclasses.fields(cls))


def fit_personal(mode: str, spec: ModelSpec, settings: TrainingSettings, params: FloatArray,
                 X: FloatArray, y: FloatArray, *, previous: Any = None, seed: int) -> Any:
    """The device's personal model (edge_agent.personal.fit_personal)."""
    fit = _optional("fedmq.edge_agent.personal", "fit_personal")
    if fit is None:
        raise ConfigError("this build has no edge_agent.personal")
    return fit(mode, spec, settings, params, X, y, previous=previous, seed=seed)


def teacher_sums(spec: ModelSpec, params: FloatArray, X: FloatArray,
                 y: FloatArray) -> tuple[list[float], list[int]] | None:
    """One device's share of the fleet's teacher (per-class logit sums and counts) as the
    evaluation section carries it, or None when this build has no distillation."""
    local = _optional("fedmq.models.distill", "class_logit_sums")
    if local is None:
        return None
    sums, counts = local(spec, params, X, y)
    return list(np.asarray(sums, dtype=np.float64).ravel()), list(counts)


def teacher_from(sums: list[list[float]], counts: list[list[int]]) -> tuple[float, ...]:
    """The published teacher: per-class mean logits over the fleet (C x C, row-major)."""
    total = np.sum(np.asarray(sums, dtype=np.float64), axis=0)
    n = np.sum(np.asarray(counts, dtype=np.float64), axis=0)
    c = n.size
    means = total.reshape(c, -1) / np.maximum(n, 1.0)[:, None]
    return tuple(float(v) for v in means.ravel())
