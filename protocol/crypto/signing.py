"""Ed25519 signatures: who sent an update, and that the aggregator sent an announcement.

Paillier hides an update but does not say who made it: anyone who can publish
on the broker could encrypt garbage under the public key. Each agent therefore
signs its update with its own Ed25519 key (listed in the aggregator's
allow-list at enrollment), and the aggregator signs every pubkey, round and
metrics message with a key the agents pin. Each signature is domain-separated
so a signature made for one kind of message can never be replayed as another.

Pure: keys come in and go out as bytes; the roles decide where files live.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from fedmq.protocol.errors import ProtocolError

__all__ = [
    "ATTEST_DOMAIN", "CONTROL_DOMAIN", "SIGNATURE_BYTES", "UPDATE_DOMAIN", "Ed25519PublicKey",
    "Signer", "canonical_json", "public_key_from_hex", "public_key_hex", "raw_key", "sign_document",
    "verify",
    "verify_document",
]

SIGNATURE_BYTES = 64
UPDATE_DOMAIN = b"fedmq/update/2\x00"
CONTROL_DOMAIN = b"fedmq/control/1\x00"
# A device's attestation of its update for a relay's partial sum (protocol.attestation).
ATTEST_DOMAIN = b"fedmq/attest/1\x00"


class Signer:
    """A private Ed25519 key that signs domain-separated SHA-256 digests."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.public_hex = public_key_hex(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Signer:
        """Deterministic key from 32 bytes (tests and reproducible simulations only)."""
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))

    @classmethod
    def from_pem(cls, pem: bytes) -> Signer:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"not a PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ProtocolError("signing key is not an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def sign(self, domain: bytes, data: bytes) -> bytes:
        return self._key.sign(domain + hashlib.sha256(data).digest())


def raw_key(key: Ed25519PublicKey) -> bytes:
    """The key's 32 raw bytes."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_hex(key: Ed25519PublicKey) -> str:
    return raw_key(key).hex()


def public_key_from_hex(value: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(value)
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key has 32 bytes")
        return Ed25519PublicKey.from_public_bytes(raw)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad Ed25519 public key: {exc}") from exc


def verify(key: Ed25519PublicKey, domain: bytes, data: bytes, signature: bytes) -> None:
    """Raise ProtocolError unless ``signature`` is key's signature over (domain, data)."""
    try:
        key.verify(signature, domain + hashlib.sha256(data).digest())
    except InvalidSignature as exc:
        raise ProtocolError("bad signature") from exc


def canonical_json(doc: dict[str, Any]) -> bytes:
    """One byte string per document: sorted keys, no spaces, no NaN.

    Python's float repr round-trips exactly, so a parsed document re-serializes
    to the bytes that were signed.
    """
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def sign_document(doc: dict[str, Any], signer: Signer) -> bytes:
    """The JSON payload of ``doc`` with a ``sig`` field over all other fields."""
    body = {k: v for k, v in doc.items() if k != "sig"}
    return canonical_json({**body, "sig": signer.sign(CONTROL_DOMAIN,
                                                      canonical_json(body)).hex()})


def verify_document(doc: dict[str, Any], key: Ed25519PublicKey) -> None:
    """Raise ProtocolError unless ``doc["sig"]`` is key's signature over the rest of doc."""
    sig = doc.get("sig")
    if not isinstance(sig, str):
        raise ProtocolError("announcement is not signed")
    try:
        raw = bytes.fromhex(sig)
    except ValueError as exc:
        raise ProtocolError("announcement signature is not hex") from exc
    try:
        body = canonical_json({k: v for k, v in doc.items() if k != "sig"})
    except ValueError as exc:
        raise ProtocolError(f"announcement cannot be canonicalized: {exc}") from exc
    verify(key, CONTROL_DOMAIN, body, raw)


def signed_by(payload: bytes, key: Ed25519PublicKey) -> bool:
    """True if ``payload`` is a signed JSON document (``sign_document``) that ``key`` signed.

    Anything else (not JSON, not a document, unsigned, another key) is simply False.
    """
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON (nor UTF-8), or nested to exhaustion
        return False
    if not isinstance(doc, dict):
        return False
    try:
        verify_document(doc, key)
    except ProtocolError:
        return False
    return True
