"""Configuration for a Mosquitto 2.x broker with the fleet's users, topic ACL and payload cap.

Pure text generation plus one function that writes the files. Mosquitto 2.0
loads it without a warning: what differs per agent (its update, status and
notice topics) are ``pattern`` lines with ``%u`` (the MQTT user name, which is
the agent id); the topics every agent reads are ``topic`` lines in each user's
section, because a pattern without ``%u``/``%c`` draws a warning per line.
``%c`` (the client id) is not used to grant anything: a client picks its own
id, and the listener sets ``use_username_as_clientid`` so that one user cannot
take over another user's session either. Adding a device means running the
generator again with it (it keeps every existing password).

Patterns apply to every user, so they would also let a trustee, a dashboard or an
aggregator write ``update/<its name>`` and ``status/<its name>`` (which the aggregator
reads). Mosquitto has no way to exempt a user from a pattern, but a ``topic
deny`` line in a user's section is checked before any pattern (Mosquitto 2.0's
acl_file: the user's own entries first, denials among them first, then the
patterns), so the section of every user that is not an agent denies what the
patterns would grant it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedmq.broker.acl import FleetAcl
from fedmq.broker.config import MIN_PAYLOAD_CAP, MQTT_MAX_PAYLOAD
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.messages import MAX_CONTROL_BYTES
from fedmq.protocol.topics import check_name
from fedmq.runtime.files import write_atomic

# What mosquitto_passwd 2.0 writes: PBKDF2-HMAC-SHA512, 101 iterations, 12-byte
# salt. The passwords we generate are random 144-bit tokens, so more iterations
# would add connect latency on a small gateway and no real protection.
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
# Mosquitto 2.0 refuses a packet whose remaining length plus one byte exceeds
# max_packet_size (lib/packet_mosq.c; checked with 2.0.11). The fewest bytes a payload
# can travel with are a QoS 0 MQTT 3.1.1 PUBLISH: topic length (2) and topic; QoS 1
# adds a packet id (2), MQTT 5 at least a properties byte, and topic aliases are off.
_MIN_OVERHEAD = 2 + 1
_PACKET_ID = 2

# Per-client queue bounds (see config_text).
MAX_QUEUED_MESSAGES = 1000
MAX_QUEUED_BYTES = 64 * 1024 * 1024
MEMORY_LIMIT = 512 * 1024 * 1024

# The per-agent rights of the ACL file, as (access, kind): ``pattern <access>
# <base>/<kind>/%u``. They apply to every user: aggregators, trustees and dashboards deny
# each.
_PATTERNS = (("write", "update"), ("write", "status"), ("read", "notice"))

CONF_FILE, PASSWORD_FILE, ACL_FILE, CREDENTIALS_FILE = (
    "mosquitto.conf", "passwords", "acl", "credentials.txt")


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """A Mosquitto 2.x password hash: ``$7$<iterations>$<base64 salt>$<base64 hash>``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def new_password() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class MosquittoSetup:
    """One listener for one fleet; ``port`` defaults to 8883 with TLS, else 1883."""

    acl: FleetAcl
    host: str = "0.0.0.0"
    port: int | None = None
    max_payload_bytes: int = MAX_CONTROL_BYTES
    # Mosquitto's hard heap cap: an incoming message that would exceed it is dropped
    # and its publisher disconnected.
    memory_limit_bytes: int = MEMORY_LIMIT
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None
    # Sockets at once on the listener, counted from accept (CONNECT done or not);
    # 0: no cap. Not by default: Mosquitto 2.0.11 miscounts it (see config_text).
    max_connections: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.max_connections, bool) or not isinstance(
                self.max_connections, int) or self.max_connections < 0:
            raise ConfigError("--max-connections must be 0 (no cap) or a positive count")
        if not self.acl.agents:
            raise ConfigError("no agents: pass --agent ID (repeatable) or --agents-file FILE")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is not a TCP port")
        if not self.host or any(c.isspace() for c in self.host):
            raise ConfigError(f"invalid listen address {self.host!r}")
        if not MIN_PAYLOAD_CAP <= self.max_payload_bytes <= MQTT_MAX_PAYLOAD:
            raise ConfigError(f"the payload cap must be between {MIN_PAYLOAD_CAP} and "
                              f"{MQTT_MAX_PAYLOAD} bytes")
        if not 16 * self.max_payload_bytes <= self.memory_limit_bytes:
            raise ConfigError("the memory limit must hold at least 16 payloads of the cap "
                              f"({16 * self.max_payload_bytes} bytes)")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        for path in (self.tls_cert_file, self.tls_key_file, self.tls_client_ca_file):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"TLS file {path!r} does not exist")

    @property
    def listen_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls_cert_file else 1883

    @property
    def max_packet_size(self) -> int:
        """The cap on the shortest topic a fleet user may publish to, as a packet size.

        Mosquitto 2 caps packets, not payloads (``message_size_limit`` is deprecated
        and draws a warning), and a packet counts its topic. Sized for the shortest
        topic (``round``), no payload over the cap fits in a packet on any topic; on
        longer topics the largest payload is a few dozen bytes under the cap
        (``largest_payload``), far above any real fedmq message.
        """
        t, acl = self.acl.topics, self.acl
        topics = [*acl.broadcast(), t.trustee_request, t.progress,
                  *(topic for agent in acl.agents
                    for topic in (t.update(agent), t.status(agent), t.notice(agent))),
                  *(t.trustee_reply(trustee) for trustee in acl.trustee_users)]
        shortest = min(len(topic.encode()) for topic in topics)
        return self.max_payload_bytes + shortest + _MIN_OVERHEAD

    def largest_payload(self, topic: str, qos: int = 1) -> int:
        """The largest payload Mosquitto takes on ``topic`` (MQTT 3.1.1, no properties)."""
        return (self.max_packet_size - _MIN_OVERHEAD - len(topic.encode())
                - (_PACKET_ID if qos else 0))

    @property
    def max_queued_messages(self) -> int:
        """Per-client queue: the aggregator receives one update (and a status) from every
        agent at once, so a fleet above 500 needs more than the 1000 (5,000 agents:
        "Outgoing messages are being dropped for client aggregator", a round short)."""
        return max(MAX_QUEUED_MESSAGES, 2 * len(self.acl.agents) + 100)

    def users(self) -> tuple[str, ...]:
        return (*self.acl.aggregator_users, *self.acl.agents, *self.acl.trustee_users,
                *self.acl.dashboard_users)


def acl_text(acl: FleetAcl) -> str:
    t = acl.topics
    lines = [
        f"# Topic ACL of fedmq fleet {t.fleet!r}, written by `fedmq broker mosquitto-config`.",
        "# Every agent may write only the update and status topics named after its user",
        "# name (%u: the agent id), read only the notices to it, and read the",
        "# aggregator's broadcasts (one section per user: Mosquitto warns about patterns",
        "# without %u). The patterns apply to every user: the aggregator, trustee and",
        "# dashboard sections deny them (Mosquitto checks a user's own lines, denials first,",
        "# before any pattern). A dashboard only reads (no write line: it writes nothing).",
        *(f"pattern {access} {t.base}/{kind}/%u" for access, kind in _PATTERNS),
    ]
    for agent in acl.agents:
        lines += ["", f"user {agent}"]
        lines += [f"topic read {topic}" for topic in acl.broadcast()]
    for user in acl.aggregator_users:
        lines += ["", f"user {user}", *_deny_patterns(acl, user)]
        lines += [f"topic write {topic}" for topic in acl.aggregator_publish()]
        lines += [f"topic read {topic}" for topic in acl.aggregator_subscribe()]
    for user in acl.trustee_users:
        lines += ["", f"user {user}", *_deny_patterns(acl, user)]
        lines += [f"topic write {topic}" for topic in acl.trustee_publish(user)]
        lines += [f"topic read {topic}" for topic in acl.trustee_subscribe()]
    for user in acl.dashboard_users:
        lines += ["", f"user {user}", *_deny_patterns(acl, user)]
        lines += [f"topic read {topic}" for topic in acl.dashboard_subscribe()]
    return "\n".join(lines) + "\n"


def _deny_patterns(acl: FleetAcl, user: str) -> list[str]:
    """Take back what the patterns grant every user: ``user`` is not an agent."""
    return [f"topic deny {acl.topics.base}/{kind}/{user}" for _access, kind in _PATTERNS]


def password_file_text(credentials: Mapping[str, str]) -> str:
    return "".join(f"{user}:{hash_password(pw)}\n" for user, pw in credentials.items())


def config_text(setup: MosquittoSetup, *, password_file: Path, acl_file: Path) -> str:
    lines = [
        f"# Mosquitto 2.x for fedmq fleet {setup.acl.topics.fleet!r}, written by "
        "`fedmq broker mosquitto-config`;",
        "# regenerate rather than edit. Run: mosquitto -c <this file>",
        "",
        f"listener {setup.listen_port} {setup.host}",
        "use_username_as_clientid true",
        "# A socket that never completes CONNECT is dropped after 90-95 s (the 60 s",
        "# keep-alive Mosquitto 2.0 assumes before CONNECT, times 1.5, checked every 5 s);",
        "# no option shortens it. Filter in front of Mosquitto (fedmq docs/deployment.md).",
    ]
    if setup.max_connections:
        lines += ["# Sockets at once, counted from accept. Mosquitto 2.0.11 (Debian 12) counts",
                  "# every close twice, so the cap loosens by one per closed connection;",
                  "# 2.0.12 fixed it.",
                  f"max_connections {setup.max_connections}"]
    if setup.tls_cert_file:
        lines += [f"certfile {Path(setup.tls_cert_file).resolve()}",
                  f"keyfile {Path(setup.tls_key_file or '').resolve()}"]
    if setup.tls_client_ca_file:
        lines += [f"cafile {Path(setup.tls_client_ca_file).resolve()}",
                  "require_certificate true"]
    lines += [
        "",
        "allow_anonymous false",
        f"password_file {password_file.resolve()}",
        f"acl_file {acl_file.resolve()}",
        "",
        "# Payload cap: a PUBLISH whose payload is over the cap disconnects its client",
        "# before the packet is read. max_packet_size counts the topic too, so it is the",
        "# cap on the shortest fleet topic (see fedmq's broker/mosquitto.py). No topic",
        "# aliases (MQTT 5), which would let a packet drop its topic and carry more payload.",
        f"max_packet_size {setup.max_packet_size}",
        "max_topic_alias 0",
        "",
        "# Memory: messages queued for a client that reads slower than others publish",
        "# (one agent flooding the aggregator) are dropped beyond these, and the heap is",
        "# capped: a message that would exceed memory_limit is dropped and its publisher",
        "# disconnected. Without them a flood of 4 MiB QoS 0 payloads grew Mosquitto",
        "# 2.0.11 to 8 GB (QoS 0 to an online client is bounded only by count). The count",
        "# holds a round of the whole fleet for the aggregator (2 per agent, at least 1000).",
        f"max_queued_messages {setup.max_queued_messages}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
        f"memory_limit {setup.memory_limit_bytes}",
        "# fedmq uses QoS 0 and 1; a client publishing QoS 2 is disconnected.",
        "max_qos 1",
    ]
    return "\n".join(lines) + "\n"


def read_credentials(path: Path) -> dict[str, str]:
    """``user:password`` lines, as written by ``write_files``."""
    creds: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or len(password) < 8:
            raise ConfigError(f"{path}:{n}: expected user:password (8 characters or more)")
        creds[check_name(user, "user name")] = password
    return creds


def _write(path: Path, text: str, mode: int) -> None:
    # Atomic, and a secret file never exists with looser permissions than ``mode``.
    write_atomic(path, text.encode("utf-8"), private=mode == 0o600)


@dataclass(frozen=True)
class Written:
    conf: Path
    credentials: Path
    new_users: tuple[str, ...]
    dropped_users: tuple[str, ...]


def write_files(out_dir: Path, setup: MosquittoSetup) -> Written:
    """Write mosquitto.conf, acl, passwords and credentials.txt into ``out_dir``.

    Users already in credentials.txt keep their passwords, so re-running with
    one more ``--agent`` does not lock the rest of the fleet out.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cred_path = out_dir / CREDENTIALS_FILE
    old = read_credentials(cred_path) if cred_path.exists() else {}
    creds = {user: old.get(user) or new_password() for user in setup.users()}
    _write(cred_path, "# user:password of each MQTT user; copy each into its device's "
           "[mqtt] password\n" + "".join(f"{u}:{p}\n" for u, p in creds.items()), 0o600)
    _write(out_dir / PASSWORD_FILE, password_file_text(creds), 0o600)
    _write(out_dir / ACL_FILE, acl_text(setup.acl), 0o644)
    conf = out_dir / CONF_FILE
    _write(conf, config_text(setup, password_file=out_dir / PASSWORD_FILE,
                             acl_file=out_dir / ACL_FILE), 0o644)
    return Written(conf=conf, credentials=cred_path,
                   new_users=tuple(u for u in creds if u not in old),
                   dropped_users=tuple(u for u in old if u not in creds))

