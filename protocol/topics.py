"""MQTT topic names of one fleet.

``<prefix>/<fleet>/{pubkey, round, update/<id>, status/<id>, notice/<id>, metrics}``
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedmq.protocol.errors import ConfigError, FedmqError

# Agent ids and fleet names end up inside topic levels and file names, so we
# keep them to a conservative alphabet: no wildcards, separators or spaces.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(value: str, what: str, error: type[FedmqError] = ConfigError) -> str:
    """Return ``value`` if it is a legal fleet name or agent id, else raise ``error``.

    Config files get ConfigError; names read off the wire pass ProtocolError.
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise error(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.' or '-'"
        )
    return value


@dataclass(frozen=True)
class Topics:
    """Topic names for one fleet under a configurable prefix."""

    fleet: str
    prefix: str = "fedmq"

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name")
        if not self.prefix or any(c in self.prefix for c in "+#") or self.prefix.endswith("/"):
            raise ConfigError(f"invalid topic prefix {self.prefix!r}")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.fleet}"

    @property
    def pubkey(self) -> str:
        return f"{self.base}/pubkey"

    @property
    def round(self) -> str:
        return f"{self.base}/round"

    @property
    def metrics(self) -> str:
        return f"{self.base}/metrics"

    @property
    def progress(self) -> str:
        """The open round's progress (retained, aggregator only): for dashboards, not agents."""
        return f"{self.base}/progress"

    @property
    def updates_filter(self) -> str:
        return f"{self.base}/update/+"

    @property
    def status_filter(self) -> str:
        return f"{self.base}/status/+"

    @property
    def notices_filter(self) -> str:
        return f"{self.base}/notice/+"

    def notice(self, agent_id: str) -> str:
        """The aggregator's notices to one agent (why its update was rejected)."""
        return f"{self.base}/notice/{check_name(agent_id, 'agent id')}"

    def update(self, agent_id: str) -> str:
        return f"{self.base}/update/{check_name(agent_id, 'agent id')}"

    def status(self, agent_id: str) -> str:
        return f"{self.base}/status/{check_name(agent_id, 'agent id')}"

    @property
    def trustee_request(self) -> str:
        """The aggregator asks the trustees for partial decryptions here (not retained)."""
        return f"{self.base}/trustee/request"

    @property
    def trustee_replies_filter(self) -> str:
        return f"{self.base}/trustee/reply/+"

    def trustee_reply(self, trustee_id: str) -> str:
        """One trustee's partial decryptions (or refusals); only that trustee writes here."""
        return f"{self.base}/trustee/reply/{check_name(trustee_id, 'trustee id')}"

    def agent_of(self, topic: str, kind: str) -> str | None:
        """The agent id in ``<base>/<kind>/<id>``, or None if the topic is not of that shape."""
        head = f"{self.base}/{kind}/"
        if not topic.startswith(head):
            return None
        agent_id = topic[len(head):]
        return agent_id if _NAME.match(agent_id) else None
