"""Device attestations: a device's signed word that it sent these ciphertexts in this round.

A relay forwards one partial sum signed with its own key, so the device signatures stop at
the relay; the top aggregator would otherwise have only the relay's word for who took part.
Each update therefore carries, in its header (``protocol.wire``, field ``attest``), the
device's Ed25519 signature over one statement::

    fleet, run, round, agent, key fingerprint, codec digest, values, SHA-256(ciphertext bytes)

under its own domain (never valid as an update, partial or control signature). The relay
checks it and forwards, per contributor, the ciphertext hash and the signature
(``protocol.partial``); the top aggregator rebuilds the statement from ITS open round and
checks it with the device's ENROLLED key. A relay can thus only list devices that sent it
an update for this very round, key and contract; that the hashes are the ciphertexts it
multiplied is still the relay's word (docs/security.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fedmq.protocol.crypto.signing import (
    ATTEST_DOMAIN,
    SIGNATURE_BYTES,
    Ed25519PublicKey,
    Signer,
    canonical_json,
    verify,
)
from fedmq.protocol.errors import ProtocolError

SCHEMA = "fedmq.attest/1"
HASH_BYTES = 32


def ciphertext_hash(body: bytes) -> bytes:
    """SHA-256 of the ciphertext bytes exactly as they travel (``ciphertexts_to_bytes``)."""
    return hashlib.sha256(body).digest()


@dataclass(frozen=True)
class Statement:
    """What a device attests; the receiver builds it from its own round, never the sender's."""

    fleet: str
    run_id: str
    round_id: int
    agent_id: str
    key_fingerprint: str
    codec_digest: str
    n_values: int
    ciphertext_hash: bytes

    def to_bytes(self) -> bytes:
        return canonical_json({
            "schema": SCHEMA, "fleet": self.fleet, "run": self.run_id, "round": self.round_id,
            "agent": self.agent_id, "key": self.key_fingerprint, "codec": self.codec_digest,
            "values": self.n_values, "ct": self.ciphertext_hash.hex()})

    def sign(self, signer: Signer) -> bytes:
        return signer.sign(ATTEST_DOMAIN, self.to_bytes())

    def verify(self, key: Ed25519PublicKey, signature: bytes) -> None:
        """Raise ProtocolError unless ``key`` attested exactly this statement."""
        if len(signature) != SIGNATURE_BYTES or len(self.ciphertext_hash) != HASH_BYTES:
            raise ProtocolError("attestation is missing or malformed")
        verify(key, ATTEST_DOMAIN, self.to_bytes(), signature)


@dataclass(frozen=True)
class Attestation:
    """One contributor's attestation as a partial sum carries it: hash and signature."""

    ciphertext_hash: bytes
    signature: bytes

    def to_json(self) -> list[str]:
        return [self.ciphertext_hash.hex(), self.signature.hex()]

    @classmethod
    def from_json(cls, value: object) -> Attestation:
        """From ``[hash hex, signature hex]``; ProtocolError for anything else."""
        if not (isinstance(value, list) and len(value) == 2
                and all(isinstance(v, str) for v in value)):
            raise ProtocolError("an attestation is [ciphertext hash hex, signature hex]")
        try:
            digest, signature = bytes.fromhex(value[0]), bytes.fromhex(value[1])
        except ValueError as exc:
            raise ProtocolError(f"attestation is not hex: {exc}") from exc
        if len(digest) != HASH_BYTES or len(signature) != SIGNATURE_BYTES:
            raise ProtocolError(f"an attestation holds a {HASH_BYTES}-byte hash and a "
                                f"{SIGNATURE_BYTES}-byte signature")
        return cls(digest, signature)


def signature_from_hex(value: object) -> bytes:
    """The ``attest`` header field of an update: b"" when absent; ProtocolError if malformed."""
    if value is None:
        return b""
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != SIGNATURE_BYTES:
        raise ProtocolError("update header field 'attest' is not a signature")
    return raw
