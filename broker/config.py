"""Settings of the embedded broker, as read from ``[broker]`` in broker.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmq.config import from_table
from protocol.errors import ConfigError


@dataclass(frozen=True)
class BrokerSettings:
    """Where the embedded broker listens and whom it lets in.

    Defaults are for a laptop: loopback only, anonymous clients allowed. A
    gateway sets ``host`` to its LAN address and a ``password_file``.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    password_file: str | None = None
    allow_anonymous: bool = True
    max_connections: int = 0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"broker.port {self.port} is not a TCP port")
        if self.password_file is not None and not Path(self.password_file).is_file():
            raise ConfigError(f"broker.password_file {self.password_file!r} does not exist")
        if self.password_file is None and not self.allow_anonymous:
            raise ConfigError("broker.allow_anonymous = false needs a broker.password_file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("broker.tls_cert_file and broker.tls_key_file go together")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path!r} does not exist")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrokerSettings:
        return from_table(cls, data, "broker")

    def amqtt_config(self) -> dict[str, Any]:
        """The configuration dictionary amqtt's Broker expects."""
        listener: dict[str, Any] = {
            "type": "tcp",
            "bind": f"{self.host}:{self.port}",
            "max_connections": self.max_connections,
        }
        if self.tls_cert_file:
            listener.update(ssl=True, certfile=self.tls_cert_file, keyfile=self.tls_key_file)
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                "allow_anonymous": self.allow_anonymous,
            },
        }
        if self.password_file:
            plugins["amqtt.plugins.authentication.FileAuthPlugin"] = {
                "password_file": self.password_file,
            }
        return {"listeners": {"default": listener}, "plugins": plugins}
