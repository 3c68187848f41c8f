"""The open round's progress, signed by the aggregator, for dashboards (``fedmq.progress/1``).

Retained on ``<prefix>/<fleet>/progress`` and readable by the aggregator and the
dashboard's read-only login only (agents never receive it). It carries device ids
and counts, never a value of one device's data: who is expected, who has reported,
who skips and why, updates rejected by reason, and the relays with the devices
they summed. Participation is not protected in fedmq (DESIGN.md, threat model);
this topic tells nothing the aggregator's log does not already say.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from fedmq.protocol.crypto.signing import (
    Ed25519PublicKey,
    Signer,
    sign_document,
    verify_document,
)
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.layout import PHASES
from fedmq.protocol.messages import loads
from fedmq.protocol.topics import check_name

MAX_IDS = 20_000  # devices listed per field: beyond it a dashboard sees counts only
MAX_REASONS = 64  # distinct rejection reasons


def _ids(doc: dict[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_IDS or \
            not all(isinstance(v, str) for v in value):
        raise ProtocolError(f"progress: {key} must be a list of at most {MAX_IDS} device ids")
    for v in value:
        check_name(v, "device id", ProtocolError)
    return tuple(value)


def _counts(doc: dict[str, Any], key: str) -> dict[str, int]:
    value = doc.get(key, {})
    if not isinstance(value, dict) or len(value) > MAX_REASONS or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(n, int)
            and not isinstance(n, bool) and n >= 0 for k, n in value.items()):
        raise ProtocolError(f"progress: {key} must map at most {MAX_REASONS} short names to "
                            "counts")
    return dict(value)


def _int(doc: dict[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"progress: {key} must be a non-negative integer")
    return value


def _float(doc: dict[str, Any], key: str) -> float:
    value = doc.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value):
        raise ProtocolError(f"progress: {key} must be a finite number")
    return float(value)


@dataclass(frozen=True)
class ProgressMessage:
    """Where the open round stands; published when it opens, changes (at most once a
    second) and closes."""

    fleet: str
    run_id: str
    round_id: int
    phase: str  # statistics | training | evaluation
    rounds: int  # training rounds the run has in all
    model_version: int
    opened_at: float
    deadline: float
    expected: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()  # devices counted so far (directly or through a relay)
    skipped: dict[str, str] = field(default_factory=dict)  # device -> skip code
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> updates this round
    relays: dict[str, tuple[str, ...]] = field(default_factory=dict)  # relay -> its devices
    enrolled: int = 0
    online: int = 0
    update_bytes: int = 0
    closed: bool = False
    issued_at: float = field(default_factory=time.time)

    SCHEMA = "fedmq.progress/1"

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        check_name(self.run_id, "run id", ProtocolError)
        if self.phase not in PHASES:
            raise ProtocolError(f"progress: phase must be one of {PHASES}")

    def to_bytes(self, signer: Signer) -> bytes:
        return sign_document({
            "schema": self.SCHEMA, "fleet": self.fleet, "run": self.run_id,
            "round": self.round_id, "phase": self.phase, "rounds": self.rounds,
            "model_version": self.model_version, "opened_at": self.opened_at,
            "deadline": self.deadline, "expected": list(self.expected),
            "reported": list(self.reported), "skipped": dict(self.skipped),
            "rejected": dict(self.rejected),
            "relays": {r: list(d) for r, d in self.relays.items()},
            "enrolled": self.enrolled, "online": self.online,
            "update_bytes": self.update_bytes, "closed": self.closed,
            "issued_at": self.issued_at,
        }, signer)

    @classmethod
    def from_bytes(cls, payload: bytes, *,
                   verify_with: Ed25519PublicKey | None = None) -> ProgressMessage:
        doc = loads(payload, cls.SCHEMA)
        if verify_with is not None:
            verify_document(doc, verify_with)
        skipped = doc.get("skipped", {})
        if not isinstance(skipped, dict) or len(skipped) > MAX_IDS or not all(
                isinstance(a, str) and isinstance(c, str) and len(c) <= 64
                for a, c in skipped.items()):
            raise ProtocolError("progress: skipped must map device ids to skip codes")
        relays = doc.get("relays", {})
        if not isinstance(relays, dict) or len(relays) > MAX_IDS:
            raise ProtocolError("progress: relays must map relay ids to device lists")
        for relay in (*skipped, *relays):
            check_name(relay, "device id", ProtocolError)
        fleet, run = doc.get("fleet"), doc.get("run")
        phase = doc.get("phase")
        if not isinstance(fleet, str) or not isinstance(run, str) or not isinstance(phase, str):
            raise ProtocolError("progress: fleet, run and phase must be strings")
        return cls(
            fleet=fleet, run_id=run, round_id=_int(doc, "round"), phase=phase,
            rounds=_int(doc, "rounds"), model_version=_int(doc, "model_version"),
            opened_at=_float(doc, "opened_at"), deadline=_float(doc, "deadline"),
            expected=_ids(doc, "expected"), reported=_ids(doc, "reported"),
            skipped=dict(skipped), rejected=_counts(doc, "rejected"),
            relays={r: _ids(relays, r) for r in relays},
            enrolled=_int(doc, "enrolled", 0), online=_int(doc, "online", 0),
            update_bytes=_int(doc, "update_bytes", 0), closed=doc.get("closed") is True,
            issued_at=_float(doc, "issued_at"),
        )
