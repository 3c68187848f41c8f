"""relay.toml -> RelayConfig: the relay's identity, its two brokers, its devices' allow-list.

```toml
[relay]
id = "relay-a"
signing_key_file = "relay-a.key"      # created if missing; enroll its public key upstream
allow_list_file = "devices.json"      # this relay's devices (fedmq enroll --allow-list ...)
[fleet]
name = "demo"
aggregator_signing_key = "..."        # REQUIRED: the top aggregator's Ed25519 key (pinned)
[upstream]                            # the top aggregator's broker ([mqtt] keys)
port = 1883
[local]                               # this relay's devices' broker ([mqtt] keys)
port = 1884
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta

from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics, check_name
from fedmq.runtime.config import Table, blame, convert, load_toml, resolve
from fedmq.runtime.mqtt_settings import MqttSettings, MqttTable, NonEmpty, mqtt_settings

Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="64 lowercase hex characters")]


class RelayTable(Table, frozen=True):
    id: str
    signing_key_file: NonEmpty
    allow_list_file: NonEmpty
    # Devices online before the relay says it is online upstream (the top aggregator's
    # min_agents counts a relay as one member).
    min_devices: Annotated[int, Meta(ge=1)] = 1
    # The partial sum leaves this long before the round's deadline at the latest.
    margin_seconds: Annotated[float, Meta(gt=0, le=3600)] = 2.0


class RelayFleetTable(Table, frozen=True):
    aggregator_signing_key: Hex64
    name: str = "demo"
    upstream_prefix: str = "fedmq"
    local_prefix: str = "fedmq"


class RelayFile(Table, frozen=True):
    relay: RelayTable
    fleet: RelayFleetTable
    upstream: MqttTable = MqttTable()
    local: MqttTable = MqttTable()


@dataclass(frozen=True)
class RelayConfig:
    relay_id: str
    aggregator_signing_key: str
    signing_key_file: str
    allow_list_file: str
    upstream: MqttSettings
    local: MqttSettings
    upstream_topics: Topics
    local_topics: Topics
    min_devices: int = 1
    margin_seconds: float = 2.0

    def __post_init__(self) -> None:
        check_name(self.relay_id, "relay id")
        if self.upstream_topics.fleet != self.local_topics.fleet:
            raise ConfigError("a relay serves one fleet: upstream and local fleet names differ")
        same_broker = (self.upstream.host, self.upstream.port) == (self.local.host,
                                                                    self.local.port)
        if same_broker and self.upstream_topics.prefix == self.local_topics.prefix:
            raise ConfigError("[fleet] upstream_prefix and local_prefix must differ when "
                              "[upstream] and [local] are the same broker")

    @property
    def client_id(self) -> str:
        return self.relay_id

    @classmethod
    def from_file(cls, path: str | Path) -> RelayConfig:
        return cls.from_dict(load_toml(path), base=Path(path).resolve().parent,
                             source=str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path = Path("."),
                  source: str = "relay config") -> RelayConfig:
        f = convert(doc, RelayFile, source=source)
        with blame(source, "[fleet]"):
            up = Topics(f.fleet.name, f.fleet.upstream_prefix)
            local = Topics(f.fleet.name, f.fleet.local_prefix)
        with blame(source, "[relay] id"):
            check_name(f.relay.id, "relay id")
        with blame(source, "relay config"):
            return cls(
                relay_id=f.relay.id, aggregator_signing_key=f.fleet.aggregator_signing_key,
                signing_key_file=resolve(base, f.relay.signing_key_file) or "",
                allow_list_file=resolve(base, f.relay.allow_list_file) or "",
                upstream=mqtt_settings(f.upstream, base=base, source=f"{source} [upstream]"),
                local=mqtt_settings(f.local, base=base, source=f"{source} [local]"),
                upstream_topics=up, local_topics=local, min_devices=f.relay.min_devices,
                margin_seconds=f.relay.margin_seconds)
