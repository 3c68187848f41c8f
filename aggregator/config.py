"""aggregator.toml -> AggregatorConfig."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import ModelError, ModelSpec
from protocol.codec import CodecParams
from protocol.errors import ConfigError, ProtocolError
from protocol.messages import TrainingSettings
from protocol.topics import Topics
from runtime.config import from_table, load_toml, reject_unknown, resolve, section
from runtime.transport import MqttSettings


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

    def __post_init__(self) -> None:
        for name in ("inbox_bytes", "inbox_messages", "status_bytes", "updates_per_round",
                     "status_burst"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"limits.{name} must be a positive integer, not {value!r}")
        for name in ("status_rate", "drain_seconds"):
            value = getattr(self, name)
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"limits.{name} must be a positive number, not {value!r}")


@dataclass(frozen=True)
class AggregatorConfig:
    topics: Topics
    spec: ModelSpec
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    key_file: str = "state/aggregator/paillier.key"
    key_bits: int = 2048
    signing_key_file: str = "state/aggregator/signing.key"
    allow_list_file: str = "state/aggregator/allow_list.json"
    resume: bool = True
    policy: RoundPolicy = field(default_factory=RoundPolicy)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    codec: CodecParams = field(default_factory=CodecParams)
    state_dir: str = "state/aggregator"
    client_id: str = "fedmq-aggregator"
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_file(cls, path: str | Path) -> AggregatorConfig:
        return cls.from_dict(load_toml(path), base=Path(path).resolve().parent)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path = Path(".")) -> AggregatorConfig:
        reject_unknown(doc, {"fleet", "mqtt", "keys", "rounds", "model", "training", "codec",
                             "output", "limits"}, "top level")
        fleet, keys, out = section(doc, "fleet"), section(doc, "keys"), section(doc, "output")
        reject_unknown(fleet, {"name", "topic_prefix"}, "fleet")
        reject_unknown(keys, {"private_key_file", "bits", "signing_key_file", "allow_list_file"},
                       "keys")
        reject_unknown(out, {"state_dir", "resume"}, "output")
        try:
            model = section(doc, "model", required=True)
            spec = ModelSpec.from_dict({"center": None, "scale": None, "n_classes": 0, **model})
            codec = section(doc, "codec")
            reject_unknown(codec, set(CodecParams.__dataclass_fields__), "codec")
            return cls(
                topics=Topics(fleet.get("name", "demo"), fleet.get("topic_prefix", "fedmq")),
                spec=spec,
                mqtt=MqttSettings.from_dict(section(doc, "mqtt")),
                key_file=resolve(base, keys.get("private_key_file",
                                                "state/aggregator/paillier.key")) or "",
                key_bits=int(keys.get("bits", 2048)),
                signing_key_file=resolve(base, keys.get("signing_key_file",
                                                        "state/aggregator/signing.key")) or "",
                allow_list_file=resolve(base, keys.get("allow_list_file",
                                                       "state/aggregator/allow_list.json")) or "",
                resume=bool(out.get("resume", True)),
                policy=from_table(RoundPolicy, section(doc, "rounds"), "rounds"),
                training=from_table(TrainingSettings, section(doc, "training"), "training"),
                codec=CodecParams.from_dict({**CodecParams().to_dict(), **codec}),
                state_dir=resolve(base, out.get("state_dir", "state/aggregator")) or "",
                limits=from_table(Limits, section(doc, "limits"), "limits"),
            )
        except (ModelError, ProtocolError) as exc:
            raise ConfigError(f"aggregator config: {exc}") from exc
        except TypeError as exc:
            raise ConfigError(f"aggregator config: unknown or mistyped option: {exc}") from exc
