"""Notices: the aggregator tells one agent why its update was rejected.

Published on ``<prefix>/<fleet>/notice/<agent_id>`` (QoS 1, not retained; under
the broker ACL only that agent may read it) and signed with the aggregator's
Ed25519 key like pubkey and round, so a notice an agent acts on comes from the
aggregator it trusts. Only for reasons the device can act on; replays,
malformed payloads and the like get none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer, sign_document, verify_document
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.messages import _get, _number, loads
from fedmq.protocol.topics import check_name

# Codes an agent knows how to explain; an unknown code is logged with its text.
NOT_ENROLLED = "not-enrolled"  # the agent id is not in the allow-list
OTHER_KEY = "other-key"  # enrolled, but with another signing key than the update's
WRONG_MODEL = "wrong-model"  # values that do not fit the model (features, classes)
KEY_MISMATCH = "key-mismatch"  # made for another Paillier key or codec contract
NOTICE_CODES = (NOT_ENROLLED, OTHER_KEY, WRONG_MODEL, KEY_MISMATCH)

MAX_TEXT = 500
_HEX64 = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class NoticeMessage:
    """Why the aggregator rejected ``agent_id``'s update of ``round_id`` in run ``run_id``.

    ``update_key``: the Ed25519 public key (hex) the rejected update was signed
    with, when the aggregator could check the update carries a valid signature
    by it; "" otherwise. The agent compares it with its own key: a notice about
    an update it did not sign (another device configured with its id) says so.
    """

    fleet: str
    agent_id: str
    run_id: str
    round_id: int
    code: str
    text: str
    update_key: str = ""
    issued_at: float = field(default_factory=time.time)

    SCHEMA = "fedmq.notice/1"

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        check_name(self.agent_id, "agent id", ProtocolError)
        check_name(self.run_id, "run id", ProtocolError)
        if self.round_id < 1:
            raise ProtocolError("a notice's round must be >= 1")
        if not self.code or len(self.code) > 64 or not self.code.isascii():
            raise ProtocolError("a notice needs a short ASCII code")
        if len(self.text) > MAX_TEXT:
            raise ProtocolError(f"notice text longer than {MAX_TEXT} characters")
        if self.update_key and (len(self.update_key) != 64 or not set(self.update_key) <= _HEX64):
            raise ProtocolError("a notice's update_key must be 64 lowercase hex characters")

    def to_bytes(self, signer: Signer) -> bytes:
        return sign_document({
            "schema": self.SCHEMA, "fleet": self.fleet, "agent": self.agent_id,
            "run": self.run_id, "round": self.round_id, "code": self.code, "text": self.text,
            "update_key": self.update_key, "issued_at": self.issued_at,
        }, signer)

    @classmethod
    def from_bytes(cls, payload: bytes, *, verify_with: Ed25519PublicKey) -> NoticeMessage:
        """Parse a notice; only one signed by ``verify_with`` (the pinned aggregator key)."""
        doc = loads(payload, cls.SCHEMA)
        verify_document(doc, verify_with)
        return cls(
            fleet=_get(doc, "fleet", str), agent_id=_get(doc, "agent", str),
            run_id=_get(doc, "run", str), round_id=_get(doc, "round", int),
            code=_get(doc, "code", str), text=_get(doc, "text", str),
            update_key=_get(doc, "update_key", str), issued_at=_number(doc, "issued_at"),
        )
