"""``fedmq simulate``'s options: the ``[simulate]`` table and the flags, merged and checked."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.messages import PERSONAL_MODES
from fedmq.protocol.server import RECOMMENDED, ServerSettings
from fedmq.simulation import synthetic
from fedmq.simulation.broker import BrokerChoice
from fedmq.simulation.config import SCALINGS, check_flags, file_options
from fedmq.simulation.tasks import TASKS


@dataclass(frozen=True)
class SimulationOptions:
    agents: int = 20
    rounds: int = 10
    iid: bool = False
    task: str = "fault"
    samples_per_device: int = 400
    # Uninformative extra channels spare_00.. per device (fedmq.simulation.synthetic): a wider
    # model, d = 4 + K (+ 1 intercept), for measuring a fleet at a realistic size.
    spare_sensors: int = 0
    key_bits: int = 2048
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 0.1
    l2: float = 0.0
    # The aggregator's [server] optimizer on the fleet's average update, and its step size.
    server_optimizer: str = "fedavg"
    server_lr: float | None = None  # None: 1.0, or ADAPTIVE_SERVER_LR for fedadam & co.
    server_momentum: float = 0.9  # fedavgm
    personal: str = "none"  # [training] personal: the devices' personal models
    # Non-IID fleets: aggregator.toml's [training] keys of the same names (issue 21).
    prox_mu: float = 0.0
    augment: str = "none"
    jitter: float = 0.05
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    round_timeout: float = 20.0
    quorum_fraction: float = 0.5
    kill: int = 0
    kill_after_round: int = 1
    seed: int = 0
    out_dir: str = "runs"  # each run in out_dir/<run_id>/, out_dir/latest pointing at it
    plot: bool = True
    reuse_key: bool = False  # the aggregator key of out_dir/latest instead of a fresh one
    # "federated": the statistics round derives center/scale from the devices' encrypted
    # sums; "datasheet": the sensors' nominal values (synthetic.SENSOR_NOMINAL) in the spec.
    # None: "federated", or "datasheet" with differential privacy (the statistics round's
    # exact totals are not covered by its budget).
    scaling: str | None = None
    # Worker processes the agents are sharded over; 0: threads of this process (the
    # agents stay inspectable). The CLI defaults to os.cpu_count().
    workers: int = 0
    broker: str = "embedded"  # embedded, mosquitto or HOST:PORT (fedmq.simulation.broker)
    # Seconds over which the agents of a shard first connect; None: 5 ms per agent.
    connect_spread: float | None = None
    dp_epsilon: float | None = None  # fedmq.simulation.privacy
    dp_delta: float = 1e-5
    dp_clip: float = 0.5
    dp_noise: float = 0.0
    dp_sample_epsilon: float | None = None
    dp_sample_clip: float = 1.0
    # Threshold decryption: the key dealt threshold-of-trustees, one process per trustee.
    trustees: int = 0
    threshold: int = 0  # 0: a majority of the trustees
    # fedmq simulate --dashboard: serve the live page on this loopback port (0: any free one).
    dashboard: int | None = None
    # fedmq simulate --stream: the devices publish their rows over MQTT (on their own local
    # topics) at stream_rate readings per second each; the agents ingest and train from them.
    stream: bool = False
    stream_rate: float = 200.0

    def __post_init__(self) -> None:
        if self.scaling is None:
            private = self.dp_epsilon is not None or self.dp_sample_epsilon is not None
            object.__setattr__(self, "scaling", "datasheet" if private else "federated")
        if self.personal not in PERSONAL_MODES:
            raise ConfigError(f"--personal must be one of {', '.join(PERSONAL_MODES)}")
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; choose from {', '.join(TASKS)}")
        if self.scaling not in SCALINGS:
            raise ConfigError(f"unknown scaling {self.scaling!r}; choose from "
                              f"{', '.join(SCALINGS)}")
        linear = TASKS[self.task][1] == "linear"
        if linear and (self.distill_weight > 0 or "oversample" in self.augment):
            raise ConfigError(f"--task {self.task} is a regression: --distill-weight and "
                              "--augment oversample need a classifier's classes")
        if self.augment != "none" and self.dp_sample_epsilon is not None:
            raise ConfigError("--augment cannot be combined with --dp-sample-epsilon (a "
                              "repeated row would exceed DP-SGD's per-row sensitivity)")
        if self.agents < 1 or self.rounds < 1:
            raise ConfigError("--agents and --rounds must be at least 1")
        if not 0 <= self.spare_sensors <= synthetic.MAX_SPARE_SENSORS:
            raise ConfigError(f"--spare-sensors must be in [0, {synthetic.MAX_SPARE_SENSORS}]")
        if not 0 < self.quorum_fraction <= 1:
            raise ConfigError("--quorum must be a fraction in (0, 1]")
        if not 0 <= self.kill < self.agents:
            raise ConfigError("--kill must leave at least one agent alive")
        if self.trustees:
            low = max(2, self.trustees // 2 + 1)  # as fedmq init gateway: a majority
            if not 2 <= self.trustees <= 16:
                raise ConfigError(f"--trustees {self.trustees} is not in 2..16")
            if not low <= self.effective_threshold <= self.trustees:
                raise ConfigError(f"--threshold {self.threshold} is not in {low}..{self.trustees}"
                                  ": a decryption needs a majority of the trustees")
        if self.threshold and not self.trustees:
            raise ConfigError("--threshold goes with --trustees K")
        if self.trustees and self.reuse_key:
            raise ConfigError("--reuse-key reuses a whole aggregator key; with --trustees "
                              "every run deals its own")
        if self.workers < 0:
            raise ConfigError("--workers must be 0 (threads of this process) or more")
        BrokerChoice.parse(self.broker)
        try:
            _ = self.server  # the same checks as [server]
        except ProtocolError as exc:
            raise ConfigError(f"--server-optimizer/--server-lr/--server-momentum: {exc}") from None
        if self.stream and self.broker != "embedded":
            raise ConfigError("--stream runs on the embedded broker (its local topics need "
                              "their own logins and ACL on Mosquitto: not simulated yet)")
        if self.stream_rate <= 0:
            raise ConfigError("--stream-rate must be positive (readings per second)")
        if self.agents - self.kill < self.quorum:
            raise ConfigError(f"killing {self.kill} of {self.agents} agents leaves fewer than "
                              f"the quorum of {self.quorum}")

    @property
    def server(self) -> ServerSettings:
        """The aggregator's [server] table (its other hyperparameters at their defaults)."""
        lr = self.server_lr
        if lr is None:  # an adaptive step of 1.0 overshoots on standardised features
            lr = (RECOMMENDED["logistic"].server_lr
                  if self.server_optimizer in ("fedadam", "fedyogi", "fedadagrad") else 1.0)
        return ServerSettings(optimizer=self.server_optimizer, server_lr=lr,
                              momentum=self.server_momentum)

    @property
    def effective_threshold(self) -> int:
        return self.threshold or self.trustees // 2 + 1

    @property
    def quorum(self) -> int:
        return max(1, int(np.ceil(self.quorum_fraction * self.agents)))

    @property
    def spread(self) -> float:
        return 0.005 * self.agents if self.connect_spread is None else self.connect_spread


def default_workers() -> int:
    return os.cpu_count() or 1


def options_from(config: str | None, overrides: dict[str, Any]) -> SimulationOptions:
    """Options from a ``[simulate]`` TOML table, then command-line overrides; both typed
    by fedmq.simulation.config.SimulateTable."""
    table = file_options(config) if config is not None else {}
    check_flags(overrides)
    merged = {**table, **overrides}
    merged.setdefault("workers", default_workers())
    try:
        return SimulationOptions(**merged)
    except TypeError as exc:
        raise ConfigError(f"bad simulate option: {exc}") from exc
