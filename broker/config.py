"""Settings of the embedded broker, as read from ``[broker]`` in broker.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from msgspec import Meta
from msgspec.structs import asdict

from fedmq.broker.acl import FleetAcl, password_file_users
from fedmq.broker.limits import MAX_PENDING_CONNECTIONS, MAX_PENDING_PER_SOURCE, ConnectionLimits
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import MAX_CONTROL_BYTES
from fedmq.protocol.topics import Topics
from fedmq.runtime.config import Table, blame, convert, existing_file, load_toml

# amqtt reads every non-payload field with a 2-byte length, so a cap below 64 KiB
# could not be told apart from a long topic or password (see broker.amqtt_ext).
MIN_PAYLOAD_CAP = 65536
MQTT_MAX_PAYLOAD = 268_435_455  # the largest remaining length MQTT can encode

# Dotted paths of fedmq's amqtt plugins; a string, so that reading a config does
# not import amqtt (a gateway-only dependency).
_ACL_PLUGIN = "fedmq.broker.amqtt_ext.FleetAclPlugin"
_WILL_PLUGIN = "fedmq.broker.amqtt_ext.WillAclPlugin"
_AUTH_PLUGIN = "fedmq.broker.amqtt_auth.ThreadedFileAuthPlugin"


NonEmpty = Annotated[str, Meta(min_length=1)]


class BrokerTable(Table, frozen=True):
    """``[broker]`` as written in broker.toml (paths relative to that file)."""

    host: NonEmpty = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 1883
    password_file: NonEmpty | None = None  # Argon2 hashes, `fedmq broker add-user`
    allow_anonymous: bool = True
    max_connections: Annotated[int, Meta(ge=0)] = 0  # 0: unlimited
    connect_timeout: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    tls_cert_file: NonEmpty | None = None
    tls_key_file: NonEmpty | None = None
    tls_client_ca_file: NonEmpty | None = None
    max_payload_bytes: Annotated[int, Meta(ge=MIN_PAYLOAD_CAP, le=MQTT_MAX_PAYLOAD)] = \
        MAX_CONTROL_BYTES
    acl: bool = False
    fleet: NonEmpty | None = None
    topic_prefix: NonEmpty = "fedmq"
    aggregator_users: tuple[NonEmpty, ...] = ("aggregator",)
    agents: tuple[NonEmpty, ...] | None = None
    trustee_users: tuple[NonEmpty, ...] = ()
    dashboard_users: tuple[NonEmpty, ...] = ()
    max_pending_per_source: Annotated[int, Meta(ge=1)] = MAX_PENDING_PER_SOURCE
    max_pending: Annotated[int, Meta(ge=1)] = MAX_PENDING_CONNECTIONS


class BrokerFile(Table, frozen=True):
    """Schema of broker.toml."""

    broker: BrokerTable = BrokerTable()


_PATHS = ("password_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file")


def _names(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) for v in value):
        raise ConfigError(f"broker.{key} must be a list of user names")
    return tuple(value)


@dataclass(frozen=True)
class BrokerSettings:
    """Where the embedded broker listens, whom it lets in and what each user may do.

    Defaults are for a laptop: loopback only, anonymous clients allowed, no
    ACL. A gateway sets ``host`` to its LAN address, a ``password_file`` and
    ``acl = true`` with its ``fleet``.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    password_file: str | None = None
    allow_anonymous: bool = True
    # Logged-in clients at once (0 = unlimited); sockets still waiting for their
    # CONNECT do not count (they are closed after connect_timeout).
    max_connections: int = 0
    # Seconds a new connection has to complete its TLS handshake and CONNECT.
    connect_timeout: float = 10.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Clients must present a certificate signed by this CA (mutual TLS).
    tls_client_ca_file: str | None = None
    # The largest PUBLISH payload; a client that sends more is disconnected. The
    # default is the largest control message agents accept.
    max_payload_bytes: int = MAX_CONTROL_BYTES
    acl: bool = False
    fleet: str | None = None
    topic_prefix: str = "fedmq"
    aggregator_users: tuple[str, ...] = ("aggregator",)
    # Sockets that may wait for their CONNECT from one address (and in all); over it the
    # oldest is closed. A simulation (every agent on 127.0.0.1) or a NAT needs more.
    max_pending_per_source: int = MAX_PENDING_PER_SOURCE
    max_pending: int = MAX_PENDING_CONNECTIONS
    # None: every user of the password file that is not an aggregator, trustee or
    # dashboard user.
    agents: tuple[str, ...] | None = None
    # Threshold decryption: each holds a key share, reads the updates and the requests
    # and writes only trustee/reply/<its name>. Never agents, even with agents = None.
    trustee_users: tuple[str, ...] = ()
    # Read-only logins (`fedmq dashboard`): pubkey, round, metrics, progress and status/+;
    # they publish nothing. Never agents, even with agents = None.
    dashboard_users: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"broker.port {self.port} is not a TCP port")
        if self.password_file is not None and not Path(self.password_file).is_file():
            raise ConfigError(f"broker.password_file {self.password_file!r} does not exist")
        if self.password_file is None and not self.allow_anonymous:
            raise ConfigError("broker.allow_anonymous = false needs a broker.password_file")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("broker.tls_cert_file and broker.tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("broker.tls_client_ca_file needs broker.tls_cert_file and "
                              "broker.tls_key_file (client certificates are a TLS feature)")
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path!r} does not exist")
        if isinstance(self.max_connections, bool) or not isinstance(
                self.max_connections, int) or self.max_connections < 0:
            raise ConfigError("broker.max_connections must be an integer >= 0 (0 = unlimited)")
        if isinstance(self.connect_timeout, bool) or not isinstance(
                self.connect_timeout, (int, float)) or not 0 < self.connect_timeout <= 3600:
            raise ConfigError("broker.connect_timeout must be a number of seconds in (0, 3600]")
        if not isinstance(self.acl, bool):
            raise ConfigError("broker.acl must be true or false")
        if not isinstance(self.max_payload_bytes, int) or not (
                MIN_PAYLOAD_CAP <= self.max_payload_bytes <= MQTT_MAX_PAYLOAD):
            raise ConfigError(f"broker.max_payload_bytes must be between {MIN_PAYLOAD_CAP} "
                              f"and {MQTT_MAX_PAYLOAD}")
        object.__setattr__(self, "aggregator_users",
                           _names(self.aggregator_users, "aggregator_users"))
        if self.agents is not None:
            object.__setattr__(self, "agents", _names(self.agents, "agents"))
        object.__setattr__(self, "trustee_users", _names(self.trustee_users, "trustee_users"))
        object.__setattr__(self, "dashboard_users",
                           _names(self.dashboard_users, "dashboard_users"))
        self.fleet_acl()  # validate the ACL settings now, not on the first CONNECT

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: Path = Path("."),
                  source: str = "broker config") -> BrokerSettings:
        """Settings from a ``[broker]`` table; its paths are relative to ``base``."""
        return cls.from_doc({"broker": data}, base=base, source=source)

    @classmethod
    def from_doc(cls, doc: dict[str, Any], *, base: Path, source: str) -> BrokerSettings:
        table = asdict(convert(doc, BrokerFile, source=source).broker)
        for key in _PATHS:
            table[key] = existing_file(base, table[key], source=source, key=f"[broker] {key}")
        with blame(source, "[broker]"):
            return cls(**table)

    @classmethod
    def from_file(cls, path: str | Path) -> BrokerSettings:
        return cls.from_doc(load_toml(path), base=Path(path).resolve().parent, source=str(path))

    def fleet_acl(self) -> FleetAcl | None:
        """The topic ACL (None when ``acl`` is off), checked against the password file."""
        if not self.acl:
            if self.fleet is not None or self.agents is not None or self.trustee_users \
                    or self.dashboard_users:
                raise ConfigError("broker.fleet, broker.agents, broker.trustee_users and "
                                  "broker.dashboard_users only apply with broker.acl = true: "
                                  "turn it on or remove them")
            return None
        if self.password_file is None:
            raise ConfigError("broker.acl = true needs a broker.password_file: "
                              "ACL rules are per user name")
        if self.fleet is None:
            raise ConfigError("broker.acl = true needs broker.fleet (the [fleet] name in "
                              "the agent and aggregator configs)")
        topics = Topics(self.fleet, self.topic_prefix)
        users = password_file_users(self.password_file)
        missing = [u for u in (*self.aggregator_users, *(self.agents or ()), *self.trustee_users,
                               *self.dashboard_users) if u not in users]
        if missing:
            raise ConfigError(f"user(s) {', '.join(missing)} of the broker ACL are not in "
                              f"{self.password_file}: add them with `fedmq broker add-user`")
        if self.agents is None:
            return FleetAcl.from_users(topics, self.aggregator_users, users, self.trustee_users,
                                       self.dashboard_users)
        return FleetAcl(topics, self.aggregator_users, self.agents, self.trustee_users,
                        self.dashboard_users)

    def limits(self) -> ConnectionLimits:
        """The per-connection caps ``broker.amqtt_broker.FedmqBroker`` enforces."""
        return ConnectionLimits(max_payload_bytes=self.max_payload_bytes,
                                connect_timeout=float(self.connect_timeout),
                                bind_client_id=self.password_file is not None,
                                max_pending_per_source=self.max_pending_per_source,
                                max_pending=self.max_pending)

    def amqtt_config(self) -> dict[str, Any]:
        """The configuration dictionary amqtt's Broker expects."""
        listener: dict[str, Any] = {
            "type": "tcp",
            "bind": f"{self.host}:{self.port}",
            "max_connections": self.max_connections,
        }
        if self.tls_cert_file:
            listener.update(ssl=True, certfile=self.tls_cert_file, keyfile=self.tls_key_file)
        if self.tls_client_ca_file:
            listener["cafile"] = self.tls_client_ca_file
        plugins: dict[str, Any] = {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {
                "allow_anonymous": self.allow_anonymous,
            },
        }
        if self.password_file:
            plugins[_AUTH_PLUGIN] = {
                "password_file": self.password_file,
            }
        acl = self.fleet_acl()
        if acl is not None:
            publish, subscribe = acl.publish_lists(), acl.subscribe_lists()
            plugins[_ACL_PLUGIN] = {"publish_acl": publish, "subscribe_acl": subscribe,
                                    "receive_acl": subscribe}
            plugins[_WILL_PLUGIN] = {"publish_acl": publish}
        return {"listeners": {"default": listener}, "plugins": plugins}
