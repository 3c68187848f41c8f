"""agent.toml -> AgentConfig: the file's schema, then the settings the agent runs with."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from fedmq.edge_agent.prediction_settings import (
    PredictionSettings,
    PredictionsTable,
    prediction_settings,
)
from fedmq.edge_agent.stream_config import StreamConfig, StreamTable, stream_config
from fedmq.protocol.crypto.obfuscation import OBFUSCATOR_KINDS
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics, check_name
from fedmq.runtime.config import Table, blame, convert, load_toml, resolve
from fedmq.runtime.mqtt_settings import (
    EnvName,
    MqttSettings,
    MqttTable,
    NonEmpty,
    mqtt_settings,
)

Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$",
                            description="64 lowercase hex characters")]


class AgentTable(Table, frozen=True):
    id: str
    state_dir: NonEmpty | None = None  # signing key, trusted keys, final model
    signing_key_file: NonEmpty | None = None
    seed: int | None = None
    exit_when_finished: bool = True


class AgentFleetTable(Table, frozen=True):
    name: str = "demo"
    topic_prefix: str = "fedmq"
    key_fingerprint: Hex64 | None = None  # SHA-256 of the aggregator's Paillier key
    aggregator_signing_key: Hex64 | None = None  # its Ed25519 public key


class DataTable(Table, frozen=True):
    features: Annotated[list[NonEmpty], Meta(min_length=1)]
    label: NonEmpty
    source: Literal["csv", "mqtt"] = "csv"
    path: NonEmpty | None = None  # required for csv
    delimiter: Annotated[str, Meta(min_length=1, max_length=1,
                                   description="one character")] = ","
    # Share of the rows kept out of training, to evaluate the fleet model on.
    holdout: Annotated[float, Meta(ge=0, le=0.5)] = 0.0
    stream: StreamTable | None = None  # source = "mqtt": topics, paths, storage



class LocalTable(Table, frozen=True):
    """``[local]``: the device's own broker (sensor readings in, predictions out).

    A connection of its own, never the fleet link of ``[mqtt]``, even when both name the
    same host and port: then the broker's ACL must keep the local topics private.
    """

    host: NonEmpty = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    username: NonEmpty | None = None
    password_file: NonEmpty | None = None
    password_env: EnvName | None = None
    tls: bool = False
    ca_file: NonEmpty | None = None  # implies tls
    client_id: NonEmpty | None = None  # default: "<agent id>-local"
    keepalive: Annotated[int, Meta(ge=5, le=65535)] = 30


class SimulationTable(Table, frozen=True):
    straggle_seconds: Annotated[float, Meta(ge=0, le=3600)] = 0.0


class CryptoTable(Table, frozen=True):
    obfuscators: Literal["djn", "standard"] = "djn"  # OBFUSCATOR_KINDS (a test checks)
    obfuscator_pool: Annotated[int, Meta(ge=0, le=100_000)] = 0  # 0: one round's worth


class AgentPrivacyTable(Table, frozen=True):
    # This device's own limits (edge_agent.ledger): it refuses to contribute beyond them
    # whatever the aggregator announces. Unset: the run's announced terms are the limit.
    max_epsilon: Annotated[float, Meta(gt=0)] | None = None  # device level, over its runs
    max_sample_epsilon: Annotated[float, Meta(gt=0)] | None = None  # DP-SGD
    # The largest announced quorum (less its colluding devices) it sends a noise share for:
    # the share shrinks as 1/sqrt(that), and a sum of fewer devices would be under-noised.
    max_quorum: Annotated[int, Meta(ge=1, le=1 << 24)] | None = None
    # Device level against a key holder decrypting this device's updates alone.
    max_alone_epsilon: Annotated[float, Meta(gt=0)] | None = None


class PersonalTable(Table, frozen=True):
    # The personal model is local only, so a device may choose its own mode; "fleet" follows
    # the round's signed [training] personal. The evaluation layout stays the fleet's.
    mode: Literal["fleet", "none", "finetune", "ditto", "intercept"] = "fleet"


class AgentFile(Table, frozen=True):
    """Schema of agent.toml."""

    agent: AgentTable
    data: DataTable
    fleet: AgentFleetTable = AgentFleetTable()
    mqtt: MqttTable = MqttTable()
    simulation: SimulationTable = SimulationTable()
    crypto: CryptoTable = CryptoTable()
    privacy: AgentPrivacyTable = AgentPrivacyTable()
    personal: PersonalTable = PersonalTable()
    predictions: PredictionsTable = PredictionsTable()
    local: LocalTable | None = None


@dataclass(frozen=True)
class AgentConfig:
    agent_id: str
    topics: Topics
    data_path: str
    features: tuple[str, ...]
    label: str
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    key_fingerprint: str | None = None
    aggregator_signing_key: str | None = None
    state_dir: str | None = None
    signing_key_file: str | None = None
    delimiter: str = ","
    seed: int | None = None
    exit_when_finished: bool = True
    straggle_seconds: float = 0.0
    obfuscators: str = "djn"
    obfuscator_pool: int = 0  # 0: one round's worth, learned from the model size
    holdout: float = 0.0  # share of the local rows held out from training
    max_epsilon: float | None = None  # [privacy]: this device's own limits
    max_sample_epsilon: float | None = None
    max_quorum: int | None = None
    max_alone_epsilon: float | None = None
    personal_mode: str | None = None  # [personal] mode; None: the round's settings
    predictions: PredictionSettings | None = None  # [predictions] enabled: the local topic
    local: MqttSettings | None = None  # [local]: the device's own broker, if configured
    local_client_id: str | None = None
    stream: StreamConfig | None = None  # [data] source = "mqtt"

    def __post_init__(self) -> None:
        check_name(self.agent_id, "agent id")
        if self.predictions is not None:
            self.predictions.check_off_fleet(self.topics)
            default = MqttSettings()
            if self.local is None and (self.mqtt.host, self.mqtt.port) == (default.host,
                                                                           default.port):
                # Not told to: predictions would reach the fleet's broker by default.
                raise ConfigError(
                    f"[predictions] go to the device's own broker, [local], which defaults "
                    f"to {default.host}:{default.port}, the fleet's broker in [mqtt]: add a "
                    "[local] table (the same host and port only on purpose, with the ACL "
                    "lines of docs/privacy.md)")
        if not self.features:
            raise ConfigError("[data] features must list at least one column")
        if self.key_fingerprint is not None and not re.fullmatch(r"[0-9a-f]{64}",
                                                                 self.key_fingerprint):
            raise ConfigError("fleet.key_fingerprint must be 64 lowercase hex characters "
                              "(SHA-256 of the aggregator's public key)")
        if self.aggregator_signing_key is not None and not re.fullmatch(
                r"[0-9a-f]{64}", self.aggregator_signing_key):
            raise ConfigError("fleet.aggregator_signing_key must be 64 lowercase hex characters "
                              "(the aggregator's Ed25519 public key)")
        if self.straggle_seconds < 0:
            raise ConfigError("simulation.straggle_seconds must not be negative")
        if self.obfuscators not in OBFUSCATOR_KINDS:
            raise ConfigError(f"crypto.obfuscators must be one of {list(OBFUSCATOR_KINDS)}")
        if not 0 <= self.holdout <= 0.5:
            raise ConfigError("data.holdout must lie in [0, 0.5]")
        if not 0 <= self.obfuscator_pool <= 100_000:
            raise ConfigError("crypto.obfuscator_pool must be between 0 (auto) and 100000")
        if self.personal_mode not in (None, "none", "finetune", "ditto", "intercept"):
            raise ConfigError("personal.mode must be fleet, none, finetune, ditto or intercept")

    @property
    def signing_key_path(self) -> str:
        """Where this agent's Ed25519 key lives: explicit, or inside state_dir."""
        if self.signing_key_file:
            return self.signing_key_file
        if self.state_dir:
            return str(Path(self.state_dir) / "signing.key")
        raise ConfigError("set [agent] state_dir or signing_key_file: the agent needs a "
                          "signing key (fedmq agent --show-public-key creates it)")

    @classmethod
    def from_file(cls, path: str | Path) -> AgentConfig:
        return cls.from_dict(load_toml(path), base=Path(path).resolve().parent,
                             source=str(path), config_file=Path(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path = Path("."),
                  source: str = "agent config",
                  config_file: Path | None = None) -> AgentConfig:
        f = convert(doc, AgentFile, source=source)
        with blame(source, "[fleet]"):
            topics = Topics(f.fleet.name, f.fleet.topic_prefix)
        with blame(source, "[agent] id"):
            check_name(f.agent.id, "agent id")
        mqtt = mqtt_settings(f.mqtt, base=base, source=source, config_file=config_file)
        try:
            predictions = prediction_settings(f.predictions, topics, f.agent.id)
        except ConfigError as exc:  # its messages name the key: "[predictions] topic ..."
            raise ConfigError(f"{source}: {exc}") from None
        local = None if f.local is None else local_settings(f.local, base=base,
                                                             source=source)
        stream = _stream(f, base, source, topics.base)
        with blame(source, "agent config"):
            return cls(
                agent_id=f.agent.id,
                topics=topics,
                data_path=resolve(base, f.data.path) or "",
                features=tuple(f.data.features),
                label=f.data.label,
                mqtt=mqtt,
                key_fingerprint=f.fleet.key_fingerprint,
                aggregator_signing_key=f.fleet.aggregator_signing_key,
                state_dir=resolve(base, f.agent.state_dir),
                signing_key_file=resolve(base, f.agent.signing_key_file),
                delimiter=f.data.delimiter,
                seed=f.agent.seed,
                exit_when_finished=f.agent.exit_when_finished,
                straggle_seconds=f.simulation.straggle_seconds,
                obfuscators=f.crypto.obfuscators,
                obfuscator_pool=f.crypto.obfuscator_pool,
                holdout=f.data.holdout,
                max_epsilon=f.privacy.max_epsilon,
                max_sample_epsilon=f.privacy.max_sample_epsilon,
                max_quorum=f.privacy.max_quorum,
                max_alone_epsilon=f.privacy.max_alone_epsilon,
                personal_mode=None if f.personal.mode == "fleet" else f.personal.mode,
                predictions=predictions,
                local=local,
                stream=stream,
                local_client_id=(f.local.client_id if f.local and f.local.client_id
                                 else f"{f.agent.id}-local"),
            )


def _stream(f: AgentFile, base: Path, source: str, fleet_base: str) -> StreamConfig | None:
    data = f.data
    if data.source == "csv":
        if data.path is None:
            raise ConfigError(f"{source}: [data] path is required when source = \"csv\" "
                              "(the default)")
        if data.stream is not None:
            raise ConfigError(f"{source}: [data.stream] is only read with [data] source = "
                              "\"mqtt\"")
        return None
    if data.stream is None:
        raise ConfigError(f"{source}: [data] source = \"mqtt\" needs a [data.stream] table "
                          "with at least one [[data.stream.topics]]")
    state_dir = resolve(base, f.agent.state_dir)
    database = Path(data.stream.database)
    if not database.is_absolute():
        if state_dir is None:
            raise ConfigError(f"{source}: [data.stream] database {database} is relative to "
                              "[agent] state_dir: set state_dir (or an absolute path)")
        database = Path(state_dir) / database
    with blame(source, "[data.stream]"):
        return stream_config(data.stream, tuple(data.features), data.label, str(database),
                             fleet_base)


def local_settings(table: LocalTable, *, base: Path, source: str) -> MqttSettings:
    """``[local]`` as connection settings; errors name ``[local]``, not ``[mqtt]``."""
    doc = msgspec.structs.asdict(table)
    del doc["client_id"]
    if table.ca_file is not None:
        doc["tls"] = True
    mqtt = MqttTable(**doc)
    try:
        return mqtt_settings(mqtt, base=base, source=source)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("[mqtt]", "[local]")) from None
