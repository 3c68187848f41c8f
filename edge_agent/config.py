"""agent.toml -> AgentConfig."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError
from protocol.obfuscation import OBFUSCATOR_KINDS
from protocol.topics import Topics, check_name
from runtime.config import load_toml, reject_unknown, resolve, section
from runtime.transport import MqttSettings


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

    def __post_init__(self) -> None:
        check_name(self.agent_id, "agent id")
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
        if not 0 <= self.obfuscator_pool <= 100_000:
            raise ConfigError("crypto.obfuscator_pool must be between 0 (auto) and 100000")

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
        return cls.from_dict(load_toml(path), base=Path(path).resolve().parent)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path = Path(".")) -> AgentConfig:
        reject_unknown(doc, {"agent", "fleet", "mqtt", "data", "simulation", "crypto"},
                       "top level")
        agent, fleet = section(doc, "agent", required=True), section(doc, "fleet")
        data, sim = section(doc, "data", required=True), section(doc, "simulation")
        reject_unknown(agent, {"id", "state_dir", "seed", "exit_when_finished",
                               "signing_key_file"}, "agent")
        reject_unknown(fleet, {"name", "topic_prefix", "key_fingerprint",
                               "aggregator_signing_key"}, "fleet")
        reject_unknown(data, {"path", "features", "label", "delimiter"}, "data")
        reject_unknown(sim, {"straggle_seconds"}, "simulation")
        crypto = section(doc, "crypto")
        reject_unknown(crypto, {"obfuscators", "obfuscator_pool"}, "crypto")
        for key, table in (("id", agent), ("path", data), ("label", data)):
            if not isinstance(table.get(key), str):
                raise ConfigError(f"agent config needs a string '{key}'")
        features = data.get("features")
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ConfigError("[data] features must be a list of column names")
        return cls(
            agent_id=agent["id"],
            topics=Topics(fleet.get("name", "demo"), fleet.get("topic_prefix", "fedmq")),
            data_path=resolve(base, data["path"]) or "",
            features=tuple(features),
            label=data["label"],
            mqtt=MqttSettings.from_dict(section(doc, "mqtt")),
            key_fingerprint=fleet.get("key_fingerprint") or None,
            aggregator_signing_key=fleet.get("aggregator_signing_key") or None,
            state_dir=resolve(base, agent.get("state_dir")),
            signing_key_file=resolve(base, agent.get("signing_key_file")),
            delimiter=data.get("delimiter", ","),
            seed=agent.get("seed"),
            exit_when_finished=bool(agent.get("exit_when_finished", True)),
            straggle_seconds=float(sim.get("straggle_seconds", 0.0)),
            obfuscators=str(crypto.get("obfuscators", "djn")),
            obfuscator_pool=int(crypto.get("obfuscator_pool", 0)),
        )
