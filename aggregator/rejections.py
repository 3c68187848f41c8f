"""Why an update is not counted (Rejected, Redelivered) and the checks shared with trustees."""

from __future__ import annotations

from collections.abc import Mapping

from fedmq.protocol.partial import PartialSum
from fedmq.protocol.wire import UpdateMessage


class Rejected(Exception):
    """An update that is not counted, with the reason for the log.

    ``code`` (a ``protocol.notices`` code) when the device can act on the reason,
    so the aggregator tells it; None for reasons it cannot (replays, duplicates).
    ``update_key``: the key a validly self-signed update was signed with, or "".
    ``kind``: a short, stable name of the reason for counters (dashboards, Prometheus):
    the code when there is one.
    """

    def __init__(self, reason: str, *, code: str | None = None, update_key: str = "",
                 kind: str = "") -> None:
        super().__init__(reason)
        self.code, self.update_key = code, update_key
        self.kind = kind or code or "other"


def own_key(u: UpdateMessage) -> str:
    """The key a validly self-signed update was signed with, or ""."""
    return u.signer_key if u.signed_by_named_key() else ""


def names(devices: list[str], shown: int = 10) -> str:
    more = f" and {len(devices) - shown} more" if len(devices) > shown else ""
    return ", ".join(devices[:shown]) + more


def outside_assignment(p: PartialSum, relay_devices: Mapping[str, frozenset[str]]
                       ) -> tuple[list[str], str]:
    """The contributors ``p``'s relay may not list, and why: a relay enrolled with an
    assignment lists only its devices; an open relay none assigned to a relay."""
    own = relay_devices.get(p.relay_id)
    if own is not None:
        return [d for d in p.contributors if d not in own], "outside its assignment"
    assigned = frozenset().union(*relay_devices.values())
    return [d for d in p.contributors if d in assigned], "assigned to another relay"


class Redelivered(Rejected):
    """The very same signed payload again (QoS 1 redelivery): already counted, not an attack."""
