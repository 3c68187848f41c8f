"""The ``[mqtt]`` table of agent and aggregator configs: schema and resolved settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta

from fedmq.protocol.errors import ConfigError
from fedmq.runtime.config import Table, convert, existing_file, warn_if_exposed

NonEmpty = Annotated[str, Meta(min_length=1)]
EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                              description="an environment variable name")]


class MqttTable(Table, frozen=True):
    """``[mqtt]`` as written in a config file (paths relative to that file)."""

    host: NonEmpty = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    username: NonEmpty | None = None
    # At most one of the three; a file or the environment keeps it out of the config.
    password: NonEmpty | None = None
    password_file: NonEmpty | None = None
    password_env: EnvName | None = None
    keepalive: Annotated[int, Meta(ge=5, le=65535)] = 30
    tls: bool = False
    ca_file: NonEmpty | None = None
    cert_file: NonEmpty | None = None
    key_file: NonEmpty | None = None
    connect_timeout: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    # First connection: give up after this many failed attempts; 0 = keep trying
    # (with backoff), so a device that boots before its gateway still joins.
    connect_attempts: Annotated[int, Meta(ge=0)] = 0


class _MqttDoc(Table, frozen=True):
    mqtt: MqttTable = MqttTable()


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker; the same table in agent and aggregator configs."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    connect_timeout: float = 10.0
    connect_attempts: int = 0  # 0: retry the first connection for ever

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("mqtt.host must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"mqtt.port {self.port} is not a TCP port")
        if self.keepalive < 5:
            raise ConfigError("mqtt.keepalive must be at least 5 seconds")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("mqtt.cert_file and mqtt.key_file go together")
        if self.connect_attempts < 0:
            raise ConfigError("mqtt.connect_attempts must be >= 0 (0: keep trying)")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: Path = Path("."),
                  source: str = "mqtt settings") -> MqttSettings:
        return mqtt_settings(convert({"mqtt": data}, _MqttDoc, source=source).mqtt,
                             base=base, source=source)


def _password(table: MqttTable, base: Path, source: str, config_file: Path | None) -> str | None:
    given = [k for k in ("password", "password_file", "password_env") if getattr(table, k)]
    if len(given) > 1:
        raise ConfigError(f"{source}: [mqtt]: set only one of {', '.join(given)}")
    if given and table.username is None:
        raise ConfigError(f"{source}: [mqtt] {given[0]}: a password needs [mqtt] username")
    if table.password is not None:
        if config_file is not None:
            warn_if_exposed(config_file, "the MQTT password")
        return table.password
    if table.password_file is not None:
        path = existing_file(base, table.password_file, source=source,
                             key="[mqtt] password_file")
        assert path is not None
        try:
            secret = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: [mqtt] password_file: cannot read {path}: "
                              f"{exc}") from None
        if not secret or "\n" in secret:
            raise ConfigError(f"{source}: [mqtt] password_file: {path} must hold the password "
                              f"alone on one line")
        warn_if_exposed(path, "the MQTT password")
        return secret
    if table.password_env is not None:
        secret = os.environ.get(table.password_env, "")
        if not secret:
            raise ConfigError(f"{source}: [mqtt] password_env: environment variable "
                              f"{table.password_env} is not set or empty")
        return secret
    return None


def mqtt_settings(table: MqttTable, *, base: Path, source: str,
                  config_file: Path | None = None) -> MqttSettings:
    """Settings from a checked ``[mqtt]`` table: paths resolved, password fetched."""
    if not table.tls:
        stray = [k for k in ("ca_file", "cert_file", "key_file") if getattr(table, k)]
        if stray:
            raise ConfigError(f"{source}: [mqtt] {stray[0]}: only used with tls = true "
                              f"(set tls = true or remove it)")
    if (table.cert_file is None) != (table.key_file is None):
        raise ConfigError(f"{source}: [mqtt]: cert_file and key_file go together")
    files = {k: existing_file(base, getattr(table, k), source=source, key=f"[mqtt] {k}")
             for k in ("ca_file", "cert_file", "key_file")}
    return MqttSettings(host=table.host, port=table.port, username=table.username,
                        password=_password(table, base, source, config_file),
                        keepalive=table.keepalive, tls=table.tls,
                        connect_timeout=table.connect_timeout,
                        connect_attempts=table.connect_attempts, **files)
