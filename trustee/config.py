"""trustee.toml -> TrusteeConfig: the trustee's identity, key share, allow-list and broker.

```toml
[trustee]
id = "trustee-1"
share_file = "share.json"              # this trustee's key share (0600; made by fedmq init)
signing_key_file = "signing.key"       # signs its replies (the aggregator holds its public key)
allow_list_file = "allow_list.json"    # fedmq trustee enroll --from-file keys.csv
trustees_file = "trustees.json"        # every trustee's signing key (from the dealer)
state_dir = "state"                    # the ledger of device sets it has decrypted
min_group = 2                          # fewest devices a decrypted sum may span
[fleet]
name = "demo"
aggregator_signing_key = "..."         # the aggregator's Ed25519 key (its DP terms are read)
[mqtt]
username = "trustee-1"
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta

from fedmq.protocol.topics import Topics, check_name
from fedmq.runtime.config import Table, blame, convert, load_toml, resolve
from fedmq.runtime.mqtt_settings import MqttSettings, MqttTable, NonEmpty, mqtt_settings

Hex64 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="64 lowercase hex characters")]


class TrusteeTable(Table, frozen=True):
    id: str
    share_file: NonEmpty
    signing_key_file: NonEmpty
    allow_list_file: NonEmpty
    # Every trustee's index and signing key (the dealer's trustees.json): the votes of the
    # others on the decryption log are checked with them.
    trustees_file: NonEmpty = "trustees.json"
    state_dir: NonEmpty = "state"
    min_group: Annotated[int, Meta(ge=2, le=1 << 20)] = 2
    # Signed updates kept per round, for this many most recent rounds.
    keep_rounds: Annotated[int, Meta(ge=2, le=1000)] = 4


class TrusteeFleetTable(Table, frozen=True):
    aggregator_signing_key: Hex64
    name: str = "demo"
    topic_prefix: str = "fedmq"


class TrusteeFile(Table, frozen=True):
    trustee: TrusteeTable
    fleet: TrusteeFleetTable
    mqtt: MqttTable = MqttTable()


@dataclass(frozen=True)
class TrusteeConfig:
    trustee_id: str
    share_file: str
    signing_key_file: str
    allow_list_file: str
    state_dir: str
    aggregator_signing_key: str
    mqtt: MqttSettings
    topics: Topics
    min_group: int = 2
    keep_rounds: int = 4
    trustees_file: str = ""

    @property
    def client_id(self) -> str:
        return self.trustee_id

    @property
    def ledger_file(self) -> Path:
        return Path(self.state_dir) / "ledger.jsonl"

    @classmethod
    def from_file(cls, path: str | Path) -> TrusteeConfig:
        return cls.from_dict(load_toml(path), base=Path(path).resolve().parent,
                             source=str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], *, base: Path = Path("."),
                  source: str = "trustee config") -> TrusteeConfig:
        f = convert(doc, TrusteeFile, source=source)
        with blame(source, "[fleet]"):
            topics = Topics(f.fleet.name, f.fleet.topic_prefix)
        with blame(source, "[trustee] id"):
            check_name(f.trustee.id, "trustee id")
        t = f.trustee
        return cls(
            trustee_id=t.id, share_file=resolve(base, t.share_file) or "",
            signing_key_file=resolve(base, t.signing_key_file) or "",
            allow_list_file=resolve(base, t.allow_list_file) or "",
            trustees_file=resolve(base, t.trustees_file) or "",
            state_dir=resolve(base, t.state_dir) or "",
            aggregator_signing_key=f.fleet.aggregator_signing_key,
            mqtt=mqtt_settings(f.mqtt, base=base, source=f"{source} [mqtt]"),
            topics=topics, min_group=t.min_group, keep_rounds=t.keep_rounds)
