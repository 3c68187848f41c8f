"""Schema of aggregator.toml: what each table may hold, its types and ranges.

Defaults here equal those of the settings dataclasses they become (RoundPolicy,
Limits, TrainingSettings, CodecParams) and its choices those of the code
(CODEC_NAMES): tests/aggregator/test_config.py checks both.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from fedmq.runtime.config import Table
from fedmq.runtime.mqtt_settings import MqttTable, NonEmpty

Positive = Annotated[float, Meta(gt=0)]
AtLeastOne = Annotated[int, Meta(ge=1)]


class FleetTable(Table, frozen=True):
    name: str = "demo"
    topic_prefix: str = "fedmq"


class KeysTable(Table, frozen=True):
    private_key_file: NonEmpty = "state/aggregator/paillier.key"  # created on first run
    bits: Annotated[int, Meta(ge=512, le=8192)] = 2048
    signing_key_file: NonEmpty = "state/aggregator/signing.key"
    allow_list_file: NonEmpty = "state/aggregator/allow_list.json"
    # Threshold decryption (fedmq init gateway --trustees K --threshold T): the public key
    # and the trustees' verification keys; the aggregator then holds no private key at all.
    trustees_file: NonEmpty | None = None


class RoundsTable(Table, frozen=True):
    rounds: AtLeastOne = 10
    round_timeout: Positive = 60.0
    quorum: AtLeastOne = 1
    min_agents: AtLeastOne = 1
    start_timeout: Positive = 300.0
    max_extensions: Annotated[int, Meta(ge=0)] = 5
    sample_fraction: Annotated[float, Meta(gt=0, le=1)] = 1.0
    sample_count: Annotated[int, Meta(ge=0)] = 0
    final_evaluation: bool = True


class LimitsTable(Table, frozen=True):
    inbox_bytes: AtLeastOne = 64 * 1024 * 1024
    inbox_messages: AtLeastOne = 10_000
    status_bytes: AtLeastOne = 4096
    updates_per_round: AtLeastOne = 10
    status_rate: Positive = 2.0
    status_burst: AtLeastOne = 20
    drain_seconds: Positive = 0.25
    resend_seconds: Positive = 5.0
    commit_updates: AtLeastOne = 256
    commit_seconds: Annotated[float, Meta(gt=0, le=5)] = 0.05


class ModelTable(Table, frozen=True):
    kind: Literal["linear", "logistic"]
    features: Annotated[list[NonEmpty], Meta(min_length=1)]
    n_classes: Annotated[int, Meta(ge=0)] = 0
    center: list[float] | None = None  # one per feature
    scale: list[float] | None = None  # one per feature, each > 0
    target_center: float | None = None  # linear only: the label's datasheet mean ...
    target_scale: Annotated[float, Meta(gt=0)] | None = None  # ... and spread


class TrainingTable(Table, frozen=True):
    epochs: AtLeastOne = 2
    batch_size: AtLeastOne = 16
    learning_rate: Positive = 0.1
    l2: Annotated[float, Meta(ge=0)] = 0.0
    # Personal models on the devices (edge_agent.personal); their fleet metrics come with
    # the global model's in every round.
    personal: Literal["none", "finetune", "ditto", "intercept"] = "none"
    ditto_lambdas: Annotated[tuple[Annotated[float, Meta(ge=0)], ...],
                             Meta(min_length=1, max_length=16)] = (0.01, 0.1, 1.0)
    personal_epochs: Annotated[int, Meta(ge=1, le=1000)] = 2
    # Non-IID fleets (issue 21): FedProx, augmentation, federated distillation.
    prox_mu: Annotated[float, Meta(ge=0)] = 0.0
    augment: Literal["none", "oversample", "jitter", "oversample+jitter"] = "none"
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.05
    distill_weight: Annotated[float, Meta(ge=0)] = 0.0
    distill_temperature: Positive = 1.0


Fraction = Annotated[float, Meta(ge=0, lt=1)]


class ServerTable(Table, frozen=True):
    # The server optimizer on the fleet's average update (aggregator.server_opt).
    optimizer: Literal["fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] = "fedavg"
    server_lr: Annotated[float, Meta(gt=0, le=100)] = 1.0  # protocol.server.MAX_SERVER_LR
    momentum: Fraction = 0.9  # fedavgm
    beta1: Fraction = 0.9  # fedadam, fedyogi, fedadagrad
    beta2: Fraction = 0.99  # fedadam, fedyogi
    # fedadam, fedyogi, fedadagrad: adaptivity (v starts at tau^2); protocol.server.MAX_TAU
    tau: Annotated[float, Meta(gt=0, le=1)] = 1e-3


class CodecTable(Table, frozen=True):
    name: Literal["packed/1", "per-value/1"] = "packed/1"
    precision_bits: Annotated[int, Meta(ge=8, le=40)] = 20
    clip: Positive = 10.0
    max_weight: Annotated[int, Meta(ge=1, le=2**24)] = 8_000
    max_agents: Annotated[int, Meta(ge=1, le=2**24)] = 1_000


class StatisticsTable(Table, frozen=True):
    enabled: bool = True  # derive missing center/scale in a statistics round
    fraction_bits: Annotated[int, Meta(ge=8, le=32)] = 24
    max_abs: Annotated[float, Meta(ge=1)] = 1_000_000.0
    max_samples: Annotated[int, Meta(ge=1, le=2**24)] = 2**20
    # Datasheet [low, high] per feature: a derived center/scale they rule out is replaced.
    ranges: list[tuple[float, float]] | None = None


class RobustTable(Table, frozen=True):
    rule: Literal["filtered-mean", "trimmed-mean", "median", "mean"] = "filtered-mean"
    groups: Annotated[int, Meta(ge=1, le=1000)] = 5
    min_group: Annotated[int, Meta(ge=2)] = 2
    trim: Annotated[int, Meta(ge=0)] = 1
    scale_factor: Annotated[float, Meta(gt=1)] = 3.0
    metric_tolerance: Annotated[float, Meta(gt=0, le=1)] = 0.05
    growth: Annotated[float, Meta(ge=1)] = 4.0
    rows_factor: Annotated[float, Meta(ge=1)] = 10.0


class HealthTable(Table, frozen=True):
    clipped_share_warning: Annotated[float, Meta(ge=0, le=1)] = 0.05
    missing_class_rounds: AtLeastOne = 3


Probability = Annotated[float, Meta(gt=0, lt=1)]


class PrivacyTable(Table, frozen=True):
    # Device level: the run's budget; unset, no device-level DP.
    epsilon: Positive | None = None
    delta: Probability = 1e-5
    # 0: the smallest multiplier whose [rounds] rounds at the quorum fit epsilon.
    noise_multiplier: Annotated[float, Meta(ge=0)] = 0.0
    clip: Positive = 1.0  # L2 norm bound of one device's model update
    # Devices of a decrypted sum that may collude with the aggregator (below [rounds] quorum).
    colluding_devices: Annotated[int, Meta(ge=0)] = 0
    # Sample level (DP-SGD on each device); unset, off.
    sample_epsilon: Positive | None = None
    sample_delta: Probability = 1e-5
    sample_clip: Positive = 1.0  # L2 norm bound of one example's gradient
    # Release the statistics round's and the fleet evaluation's exact totals anyway.
    exact_aggregates: bool = False


class OutputTable(Table, frozen=True):
    state_dir: NonEmpty = "state/aggregator"
    resume: bool = True


class ScheduleTable(Table, frozen=True):
    # A gateway that keeps learning (aggregator.schedule); both unset: one run, then exit.
    every: NonEmpty | None = None  # "6h": a new run this long after the last one started
    min_new_rows: Annotated[int, Meta(ge=0)] = 0  # per device, since the last run; 0: off
    ready_devices: AtLeastOne = 1  # devices with min_new_rows new rows the run waits for
    check_seconds: Positive = 30.0
    warm_start: bool = True  # start from the last run's final model


class MetricsTable(Table, frozen=True):
    # The fleet's Prometheus metrics (and page) served by the aggregator itself; 0: off.
    port: Annotated[int, Meta(ge=0, le=65535)] = 0
    bind: NonEmpty = "127.0.0.1"  # loopback only: this endpoint has no login


class AggregatorFile(Table, frozen=True):
    """Schema of aggregator.toml."""

    model: ModelTable
    fleet: FleetTable = FleetTable()
    mqtt: MqttTable = MqttTable()
    keys: KeysTable = KeysTable()
    rounds: RoundsTable = RoundsTable()
    limits: LimitsTable = LimitsTable()
    training: TrainingTable = TrainingTable()
    server: ServerTable = ServerTable()
    codec: CodecTable = CodecTable()
    statistics: StatisticsTable = StatisticsTable()
    health: HealthTable = HealthTable()
    robust: RobustTable = RobustTable()
    privacy: PrivacyTable = PrivacyTable()
    output: OutputTable = OutputTable()
    metrics: MetricsTable = MetricsTable()
    schedule: ScheduleTable = ScheduleTable()

