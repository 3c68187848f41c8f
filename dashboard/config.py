"""dashboard.toml -> DashboardConfig: where the page listens, whose fleet it shows, its login.

```toml
[dashboard]
bind = "127.0.0.1"        # another address needs users_file (a login for the page)
port = 8780
# users_file = "dashboard-users.txt"   # fedmq dashboard passwd --users-file ... --user NAME
[fleet]
name = "demo"
aggregator_signing_key = "..."         # messages not signed by it are ignored (and counted)
[mqtt]
username = "dashboard"                 # a read-only login (broker.toml dashboard_users)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta

from fedmq.protocol.errors import ConfigError
from fedmq.protocol.topics import Topics
from fedmq.runtime.config import Table, blame, convert, is_loopback, load_toml, resolve
from fedmq.runtime.mqtt_settings import MqttSettings, MqttTable, NonEmpty, mqtt_settings

Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="64 lowercase hex characters")]
Port = Annotated[int, Meta(ge=0, le=65535)]


class PageTable(Table, frozen=True):
    bind: NonEmpty = "127.0.0.1"
    port: Port = 8780
    users_file: str | None = None


class FleetTable(Table, frozen=True):
    aggregator_signing_key: Hex64
    name: str = "demo"
    topic_prefix: str = "fedmq"


class DashboardFile(Table, frozen=True):
    fleet: FleetTable
    dashboard: PageTable = PageTable()
    mqtt: MqttTable = MqttTable()


@dataclass(frozen=True)
class DashboardConfig:
    topics: Topics
    aggregator_signing_key: str
    mqtt: MqttSettings
    bind: str = "127.0.0.1"
    port: int = 8780
    users_file: str | None = None

    @property
    def client_id(self) -> str:
        # The broker binds client ids to logins: the dashboard's user name is its id.
        return self.mqtt.username or "dashboard"

    @classmethod
    def from_file(cls, path: str | Path) -> DashboardConfig:
        return cls.from_dict(load_toml(path), base=Path(path).resolve().parent,
                             source=str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path = Path("."),
                  source: str = "dashboard config") -> DashboardConfig:
        f = convert(doc, DashboardFile, source=source)
        with blame(source, "[fleet]"):
            topics = Topics(f.fleet.name, f.fleet.topic_prefix)
        page = f.dashboard
        users = resolve(base, page.users_file)
        if not is_loopback(page.bind) and users is None:
            raise ConfigError(f"{source}: [dashboard] bind = {page.bind!r} is not a loopback "
                              "address, so the page needs a login: set [dashboard] users_file "
                              "(fedmq dashboard passwd)")
        if users is not None and not Path(users).is_file():
            raise ConfigError(f"{source}: [dashboard] users_file: {users} does not exist "
                              "(make it with fedmq dashboard passwd)")
        return cls(topics=topics, aggregator_signing_key=f.fleet.aggregator_signing_key,
                   mqtt=mqtt_settings(f.mqtt, base=base, source=source),
                   bind=page.bind, port=page.port, users_file=users)
