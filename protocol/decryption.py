"""Messages between the aggregator and the trustees: decryption requests and partial decryptions.

The aggregator asks on ``trustee/request`` for the sum of named members' updates
(each named with the hash of the signed update it used); every trustee recomputes
that product from updates it verified itself, checks its decryption policy
(protocol.disclosure) and answers on its own ``trustee/reply/<id>`` with a
partial decryption and its proof, a refusal naming the rule, or the members whose
updates it lacks (the aggregator then supplies their signed payloads, which the
trustee verifies like any other). Replies are signed with the trustee's own
Ed25519 key. The proofs are bound to ``context()``, so a partial decryption made
for one request proves nothing about another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer, sign_document, verify_document
from fedmq.protocol.crypto.threshold import PartialDecryption
from fedmq.protocol.decryption_log import LogEntry
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.messages import _get, dumps, loads
from fedmq.protocol.topics import check_name

REPLY_STATES = ("ok", "vote", "refused", "missing", "log")
PHASES = ("vote", "decrypt")
MAX_MEMBERS = 1 << 20
MAX_REASON = 500


def _hash_hex(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64:
        raise ProtocolError("an update hash must be 64 hex characters")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ProtocolError("an update hash must be 64 hex characters") from None
    return value


@dataclass(frozen=True)
class DecryptRequest:
    """Decrypt the product of ``members``' updates (member id -> signed-update hash, hex) of
    one round. ``supply``: signed update payloads of members a trustee said it lacks."""

    fleet: str
    run_id: str
    round_id: int
    members: Mapping[str, str]
    request_id: str = field(default_factory=lambda: secrets.token_hex(16))
    supply: tuple[bytes, ...] = ()
    # The round's certified log (protocol.decryption_log). "vote": approve this sum as
    # entry len(log); "decrypt": this sum is log[-1], certified: the partial decryption.
    log: tuple[LogEntry, ...] = ()
    phase: str = "vote"

    SCHEMA = "fedmq.decrypt-request/2"

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        check_name(self.run_id, "run id", ProtocolError)
        if self.round_id < 0 or not self.members or len(self.members) > MAX_MEMBERS:
            raise ProtocolError("a decryption request needs round >= 0 and 1..2^20 members")
        for member, digest in self.members.items():
            check_name(member, "member id", ProtocolError)
            _hash_hex(digest)
        if not 8 <= len(self.request_id) <= 64 or not self.request_id.isalnum():
            raise ProtocolError("request id must be 8-64 letters or digits")
        if self.phase not in PHASES or (self.phase == "decrypt" and not self.log):
            raise ProtocolError(f"phase must be one of {PHASES}; a decryption names its "
                                "certified entry last in the log")

    def context(self) -> bytes:
        """What the trustees' proofs are bound to: this request's round and exact updates."""
        parts = ["fedmq/decrypt/2", self.fleet, self.run_id, str(self.round_id), self.phase,
                 self.request_id, *(f"{m}={h}" for m, h in sorted(self.members.items()))]
        return hashlib.sha256("\x00".join(parts).encode()).digest()

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"schema": self.SCHEMA, "fleet": self.fleet, "run": self.run_id,
                               "round": self.round_id, "request": self.request_id,
                               "phase": self.phase,
                               "members": dict(sorted(self.members.items()))}
        if self.supply:
            doc["supply"] = [base64.b64encode(p).decode() for p in self.supply]
        if self.log:
            doc["log"] = [e.to_dict() for e in self.log]
        return dumps(doc)

    @classmethod
    def from_bytes(cls, payload: bytes) -> DecryptRequest:
        doc = loads(payload, cls.SCHEMA)
        members = _get(doc, "members", dict)
        supply = doc.get("supply", [])
        if not isinstance(supply, list) or not all(isinstance(s, str) for s in supply):
            raise ProtocolError("supply must be a list of base64 strings")
        try:
            raw = tuple(base64.b64decode(s, validate=True) for s in supply)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"supply is not base64: {exc}") from None
        if not all(isinstance(v, str) for v in members.values()):
            raise ProtocolError("members must map ids to update hashes")
        return cls(fleet=_get(doc, "fleet", str), run_id=_get(doc, "run", str),
                   round_id=_get(doc, "round", int), members=members,
                   request_id=_get(doc, "request", str), supply=raw,
                   log=_log(doc.get("log", [])), phase=_get(doc, "phase", str))


def _log(raw: object) -> tuple[LogEntry, ...]:
    if not isinstance(raw, list):
        raise ProtocolError("log must be a list of entries")
    return tuple(LogEntry.from_dict(e) for e in raw)


@dataclass(frozen=True)
class DecryptReply:
    """One trustee's answer: ``ok`` with a partial decryption and its vote for the log
    entry, ``refused`` with the rule, ``missing`` with the members whose updates it has
    not verified, or ``log`` with the longer certified log the request must extend."""

    fleet: str
    request_id: str
    trustee: str
    status: str
    partial: PartialDecryption | None = None
    reason: str = ""
    missing: tuple[str, ...] = ()
    vote: bytes = b""
    log: tuple[LogEntry, ...] = ()

    SCHEMA = "fedmq.decrypt-reply/2"

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        check_name(self.trustee, "trustee id", ProtocolError)
        if self.status not in REPLY_STATES:
            raise ProtocolError(f"reply status must be one of {REPLY_STATES}")
        if (self.status == "ok") != (self.partial is not None):
            raise ProtocolError("a partial decryption comes with status ok, and only then")
        if self.status == "missing" and not self.missing:
            raise ProtocolError("a 'missing' reply names the members it lacks")
        if (self.status == "vote") != bool(self.vote) or (self.status == "log") != bool(
                self.log):
            raise ProtocolError("a 'vote' reply comes with its vote, a 'log' reply with its "
                                "log, and only then")

    def to_bytes(self, signer: Signer) -> bytes:
        doc: dict[str, Any] = {"schema": self.SCHEMA, "fleet": self.fleet,
                               "request": self.request_id, "trustee": self.trustee,
                               "status": self.status, "reason": self.reason[:MAX_REASON],
                               "missing": list(self.missing)}
        if self.partial is not None:
            doc["partial"] = self.partial.to_dict()
        if self.vote:
            doc["vote"] = self.vote.hex()
        if self.log:
            doc["log"] = [e.to_dict() for e in self.log]
        return sign_document(doc, signer)

    @classmethod
    def from_bytes(cls, payload: bytes, key: Ed25519PublicKey) -> DecryptReply:
        """Parse a reply and check it is signed by ``key`` (the trustee's enrolled key)."""
        doc = loads(payload, cls.SCHEMA)
        verify_document(doc, key)
        missing = doc.get("missing", [])
        if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
            raise ProtocolError("missing must be a list of member ids")
        partial = doc.get("partial")
        if partial is not None and not isinstance(partial, dict):
            raise ProtocolError("partial must be an object")
        try:
            vote = bytes.fromhex(str(doc.get("vote", "")))
        except ValueError:
            raise ProtocolError("vote must be a hex signature") from None
        return cls(fleet=_get(doc, "fleet", str), request_id=_get(doc, "request", str),
                   trustee=_get(doc, "trustee", str), status=_get(doc, "status", str),
                   partial=None if partial is None else PartialDecryption.from_dict(partial),
                   reason=str(doc.get("reason", ""))[:MAX_REASON], missing=tuple(missing),
                   vote=vote, log=_log(doc.get("log", [])))
