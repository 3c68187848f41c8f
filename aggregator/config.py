"""aggregator.toml -> AggregatorConfig (the file's schema: aggregator.schema)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msgspec.structs import asdict

from fedmq.aggregator.consistency import Tolerances
from fedmq.aggregator.groups import RULES
from fedmq.aggregator.privacy import privacy_terms
from fedmq.aggregator.schema import AggregatorFile
from fedmq.models import ModelError, ModelSpec
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import TrainingSettings
from fedmq.protocol.privacy.terms import PrivacyTerms
from fedmq.protocol.server import ServerSettings
from fedmq.protocol.sums.statistics import StatsParams
from fedmq.protocol.topics import Topics
from fedmq.runtime.config import blame, convert, is_loopback, load_toml, resolve
from fedmq.runtime.mqtt_settings import MqttSettings, mqtt_settings


@contextmanager
def _derivable_hint() -> Iterator[None]:
    """A wrong center/scale is often a leftover: say that it may simply go."""
    try:
        yield
    except ModelError as exc:
        if "one entry per feature" in str(exc):
            raise ModelError(f"{exc} (or leave it out: a statistics round derives it from "
                             "the devices' encrypted sums)") from None
        raise


@dataclass(frozen=True)
class RoundPolicy:
    rounds: int = 10
    round_timeout: float = 60.0
    quorum: int = 1
    min_agents: int = 1
    start_timeout: float = 300.0
    max_extensions: int = 5
    sample_fraction: float = 1.0  # share of online agents selected each round
    sample_count: int = 0  # fixed number selected each round (0: use sample_fraction)
    final_evaluation: bool = True  # one more round: the fleet evaluates the final model

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError("rounds.rounds must be at least 1")
        if self.round_timeout <= 0 or self.start_timeout <= 0:
            raise ConfigError("rounds.round_timeout and rounds.start_timeout must be positive")
        if self.quorum < 1 or self.min_agents < 1 or self.max_extensions < 0:
            raise ConfigError("rounds.quorum and rounds.min_agents must be at least 1")
        if not 0 < self.sample_fraction <= 1:
            raise ConfigError("rounds.sample_fraction must be in (0, 1]")
        if self.sample_count and self.sample_count < self.quorum:
            raise ConfigError("rounds.sample_count must be at least rounds.quorum")
        if self.sample_count < 0:
            raise ConfigError("rounds.sample_count must not be negative")

    @property
    def samples(self) -> bool:
        return self.sample_count > 0 or self.sample_fraction < 1

    def sample_size(self, online: int) -> int:
        """How many of ``online`` agents one round selects (never below the quorum)."""
        wanted = self.sample_count or math.ceil(self.sample_fraction * online)
        return min(online, max(wanted, self.quorum))


MAX_COMMIT_SECONDS = 5.0


@dataclass(frozen=True)
class Limits:
    """What any sender can make the aggregator hold or do: bounded whatever they send."""

    inbox_bytes: int = 64 * 1024 * 1024  # payload bytes queued for the round loop
    inbox_messages: int = 10_000
    status_bytes: int = 4096  # a status message is ~150 bytes
    # An honest agent sends one update a round, plus a re-send per re-announcement and
    # QoS 1 redeliveries after a reconnect; a budget per ROUND, not per second, because
    # rounds of a small model close in a tenth of a second.
    updates_per_round: int = 10
    status_rate: float = 2.0  # status messages per second per agent id (sustained) ...
    status_burst: int = 20  # ... and at once (reconnects)
    drain_seconds: float = 0.25  # inbound handling between two looks at the clock
    # At most one re-send of key and round per this many seconds to the devices whose
    # status says they lack them (aggregator.resend), however many ask.
    resend_seconds: float = 5.0
    # Group commit (aggregator.commit): accepted updates are made durable in batches of at
    # most this many, their oldest waiting at most this long; one fsync per batch.
    commit_updates: int = 256
    commit_seconds: float = 0.05

    def __post_init__(self) -> None:
        for name in ("inbox_bytes", "inbox_messages", "status_bytes", "updates_per_round",
                     "status_burst", "commit_updates"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"limits.{name} must be a positive integer, not {value!r}")
        for name in ("status_rate", "drain_seconds", "resend_seconds", "commit_seconds"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"limits.{name} must be a positive number, not {value!r}")
        # A held update is not counted: a long wait would stall every round's close.
        if self.commit_seconds > MAX_COMMIT_SECONDS:
            raise ConfigError(f"limits.commit_seconds must be at most {MAX_COMMIT_SECONDS:g} "
                              f"(an update counts only once committed), not "
                              f"{self.commit_seconds!r}")


@dataclass(frozen=True)
class HealthPolicy:
    """When the gateway warns about the fleet's data (aggregator.health)."""

    clipped_share_warning: float = 0.05  # of a round's update values clipped by the codec
    missing_class_rounds: int = 3  # rounds in a row a class has no row in the fleet totals

    def __post_init__(self) -> None:
        if not 0 <= self.clipped_share_warning <= 1 or self.missing_class_rounds < 1:
            raise ConfigError("health.clipped_share_warning must be in [0, 1] and "
                              "health.missing_class_rounds at least 1")


def _ranges(ranges: list[tuple[float, float]] | None, spec: ModelSpec,
            source: str) -> tuple[tuple[float, float], ...] | None:
    if ranges is None:
        return None
    if len(ranges) != len(spec.features):
        raise ConfigError(f"{source}: [statistics] ranges has {len(ranges)} entries; give one "
                          f"[low, high] per [model] feature ({len(spec.features)})")
    for name, (lo, hi) in zip(spec.features, ranges, strict=True):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ConfigError(f"{source}: [statistics] ranges: the range of {name!r} must be "
                              f"[low, high] with low < high, got [{lo!r}, {hi!r}]")
    return tuple((float(lo), float(hi)) for lo, hi in ranges)


@dataclass(frozen=True)
class RobustPolicy:
    """How a round's updates are combined (aggregator.groups) and checked
    (aggregator.consistency): ``rule`` across disjoint groups of >= ``min_group`` devices."""

    rule: str = "filtered-mean"
    groups: int = 5  # at most this many groups a round (fewer when the fleet is small)
    min_group: int = 2
    trim: int = 1  # trimmed-mean: groups cut from each side, per coordinate
    tolerances: Tolerances = field(default_factory=Tolerances)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"robust.rule must be one of {', '.join(RULES)}")
        if self.groups < 1 or self.min_group < 2 or self.trim < 0:
            raise ConfigError("robust.groups must be at least 1, robust.min_group at least 2 "
                              "and robust.trim not negative")


def _check_training(training: TrainingSettings, spec: ModelSpec,
                    privacy: PrivacyTerms) -> None:
    """[training]'s non-IID options against the model and the privacy terms."""
    if training.distills and spec.kind != "logistic":
        raise ConfigError("[training] distill_weight: distillation needs a classifier "
                          "([model] kind = \"logistic\"); a linear model has no classes")
    if "oversample" in training.augment and spec.kind != "logistic":
        raise ConfigError(f"[training] augment = {training.augment!r}: oversampling balances "
                          "classes; a linear model has none (use \"jitter\")")
    if training.augment != "none" and privacy.sample is not None:
        raise ConfigError(f"[training] augment = {training.augment!r} cannot be combined with "
                          "[privacy] sample-level DP: a repeated row would exceed DP-SGD's "
                          "per-row sensitivity")
    if training.distills and not privacy.evaluates:
        raise ConfigError("[training] distill_weight: the teacher travels in the exact "
                          "evaluation sums, which [privacy] releases only with "
                          "exact_aggregates = true")


@dataclass(frozen=True)
class AggregatorConfig:
    topics: Topics
    spec: ModelSpec
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    key_file: str = "state/aggregator/paillier.key"
    key_bits: int = 2048
    signing_key_file: str = "state/aggregator/signing.key"
    allow_list_file: str = "state/aggregator/allow_list.json"
    trustees_file: str | None = None  # set: the key is split among trustees (aggregator.trustees)
    resume: bool = True
    policy: RoundPolicy = field(default_factory=RoundPolicy)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    server: ServerSettings = field(default_factory=ServerSettings)  # [server]: its optimizer
    codec: CodecParams = field(default_factory=CodecParams)
    state_dir: str = "state/aggregator"
    client_id: str = "fedmq-aggregator"
    limits: Limits = field(default_factory=Limits)
    statistics: StatsParams = field(default_factory=StatsParams)
    # False: never run a statistics round; [model] must then give center and scale.
    statistics_round: bool = True
    health: HealthPolicy = field(default_factory=HealthPolicy)
    # [statistics] ranges: datasheet (low, high) per feature, or None.
    ranges: tuple[tuple[float, float], ...] | None = None
    robust: RobustPolicy = field(default_factory=RobustPolicy)
    privacy: PrivacyTerms = field(default_factory=PrivacyTerms)
    # [metrics]: serve the fleet's Prometheus metrics on metrics_bind:metrics_port (0: off).
    metrics_bind: str = "127.0.0.1"
    metrics_port: int = 0

    def __post_init__(self) -> None:
        _check_training(self.training, self.spec, self.privacy)
        device = self.privacy.device
        if device is not None and device.quorum > self.policy.quorum:
            raise ConfigError(
                f"[privacy]: the noise is sized for {device.quorum} devices but [rounds] "
                f"quorum = {self.policy.quorum} lets a round close with fewer: it would be "
                "under-noised. Size it for the quorum")
        if self.needs_statistics and not self.privacy.evaluates:
            raise ConfigError(
                "[privacy] is on, but [model] gives no center and scale: the statistics "
                "round would release the fleet's exact feature means and spreads, which the "
                "privacy budget does not cover. Give [model] center and scale (datasheet "
                "values; target_center/target_scale too for a linear model), or set "
                "[privacy] exact_aggregates = true to release those totals anyway")
        if not self.statistics_round and (self.spec.center is None or self.spec.scale is None):
            raise ConfigError(
                "[statistics] enabled = false, but [model] gives no center and scale: the "
                "model would train on raw, unscaled features. Remove 'enabled = false' "
                "(fedmq then derives them from the fleet's encrypted sums before round 1) "
                "or give [model] center and scale (datasheet values, one per feature)")

    @property
    def needs_statistics(self) -> bool:
        """True when a statistics round must derive what [model] leaves open."""
        spec = self.spec
        missing = spec.center is None or spec.scale is None or (
            spec.kind == "linear" and (spec.target_center is None or spec.target_scale is None))
        return self.statistics_round and missing

    @classmethod
    def from_file(cls, path: str | Path) -> AggregatorConfig:
        return cls.from_dict(load_toml(path), base=Path(path).resolve().parent,
                             source=str(path), config_file=Path(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path = Path("."),
                  source: str = "aggregator config",
                  config_file: Path | None = None) -> AggregatorConfig:
        f = convert(doc, AggregatorFile, source=source, labels={
            ("model", "center"): ("model", "features"), ("model", "scale"): ("model", "features")})
        with blame(source, "[fleet]"):
            topics = Topics(f.fleet.name, f.fleet.topic_prefix)
        with blame(source, "[model]"), _derivable_hint():
            spec = ModelSpec(**asdict(f.model))
        with blame(source, "[rounds]"):
            policy = RoundPolicy(**asdict(f.rounds))
        with blame(source, "[training]"):
            training = TrainingSettings(**asdict(f.training))
        with blame(source, "[server]"):
            server = ServerSettings(**asdict(f.server))
        with blame(source, "[codec]"):
            codec = CodecParams(**asdict(f.codec))
        with blame(source, "[limits]"):
            limits = Limits(**asdict(f.limits))
        with blame(source, "[health]"):
            health = HealthPolicy(**asdict(f.health))
        r = f.robust
        with blame(source, "[robust]"):
            robust = RobustPolicy(r.rule, r.groups, r.min_group, r.trim, Tolerances(
                scale_factor=r.scale_factor, metric=r.metric_tolerance, growth=r.growth,
                rows=r.rows_factor, trim=r.trim))
        stats = f.statistics
        ranges = _ranges(stats.ranges, spec, source)
        with blame(source, "[statistics]"):
            statistics = StatsParams(fraction_bits=stats.fraction_bits, max_abs=stats.max_abs,
                                     max_samples=stats.max_samples, max_agents=codec.max_agents)
        with blame(source, "[privacy]"):
            privacy = privacy_terms(f.privacy, spec=spec, rounds=policy.rounds,
                                    quorum=policy.quorum, codec=codec)
        rest = cls._rest(f, base, source, config_file)
        try:  # the checks across tables (AggregatorConfig.__post_init__)
            return cls(topics=topics, spec=spec, **rest,
                       policy=policy, training=training, server=server, codec=codec,
                       limits=limits, statistics=statistics, statistics_round=stats.enabled,
                       health=health, robust=robust, ranges=ranges, privacy=privacy)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    @staticmethod
    def _rest(f: AggregatorFile, base: Path, source: str,
              config_file: Path | None) -> dict[str, Any]:
        if not is_loopback(f.metrics.bind):
            raise ConfigError(f"{source}: [metrics] bind = {f.metrics.bind!r} is not a loopback "
                              "address: the aggregator's metrics endpoint has no login (serve "
                              "them elsewhere with fedmq dashboard and its [dashboard] users_file)")
        return dict(
            mqtt=mqtt_settings(f.mqtt, base=base, source=source, config_file=config_file),
            key_file=resolve(base, f.keys.private_key_file) or "",
            key_bits=f.keys.bits,
            signing_key_file=resolve(base, f.keys.signing_key_file) or "",
            allow_list_file=resolve(base, f.keys.allow_list_file) or "",
            trustees_file=resolve(base, f.keys.trustees_file),
            resume=f.output.resume, state_dir=resolve(base, f.output.state_dir) or "",
            metrics_bind=f.metrics.bind, metrics_port=f.metrics.port,
        )
