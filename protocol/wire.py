"""Binary update messages: a small versioned header, ciphertexts, an Ed25519 signature.

Layout (all integers big-endian)::

    b"FMQU" | version u8 | header length u16 | header (UTF-8 JSON) | ciphertexts | signature

The header names fleet, run, round, agent, key fingerprint and codec digest so
a receiver can reject a payload meant for another key, contract or run before
it touches a single ciphertext. Ciphertexts are ``count`` blocks of exactly
``size`` bytes (the byte length of n^2): no decimal strings, no base64. The
64-byte signature covers everything before it, so neither a header field nor a
re-randomised ciphertext can be changed without the agent's key. The optional
header field ``attest`` is the device's attestation (protocol.attestation), which
a relay forwards upstream; older readers ignore it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fedmq.protocol.attestation import (
    Attestation,
    Statement,
    ciphertext_hash,
    signature_from_hex,
)
from fedmq.protocol.crypto.paillier import (
    PaillierPublicKey,
    ciphertext_size,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    fingerprint,
)
from fedmq.protocol.crypto.signing import (
    SIGNATURE_BYTES,
    UPDATE_DOMAIN,
    Ed25519PublicKey,
    Signer,
    public_key_from_hex,
    verify,
)
from fedmq.protocol.errors import KeyMismatchError, ProtocolError
from fedmq.protocol.topics import check_name

MAGIC = b"FMQU"
VERSION = 2
SCHEMA = "fedmq.update/2"
MAX_HEADER = 4096
MAX_UPDATE_BYTES = 64 * 1024 * 1024
_PREFIX = struct.Struct(">4sBH")
# Header field -> message attribute, alike in updates and partial sums.
_COMMON = {"fleet": "fleet", "run": "run_id", "round": "round_id", "key": "key_fingerprint",
           "codec": "codec_digest", "values": "n_values"}


class Framed(Protocol):
    """An UpdateMessage or a PartialSum: the attributes of _COMMON, and ciphertexts."""

    @property
    def ciphertexts(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class Frame:
    """A decoded signed frame: its checked header, ciphertexts, signed hash and signature."""

    header: dict[str, Any]
    ciphertexts: tuple[int, ...]
    signed_hash: bytes
    signature: bytes

    def common(self) -> dict[str, Any]:
        """The message fields every frame carries, as keyword arguments."""
        return {attr: self.header[name] for name, attr in _COMMON.items()} | {
            "ciphertexts": self.ciphertexts, "signed_hash": self.signed_hash,
            "signature": self.signature}


@dataclass(frozen=True)
class Framing:
    """The signed binary framing of updates and relays' partial sums (protocol.partial)::

        magic | version u8 | header length | header (UTF-8 JSON) | ciphertexts | signature

    Each kind has its own magic, schema and signature domain, so neither passes for the
    other; ``what`` names the kind in errors.
    """

    what: str
    magic: bytes
    version: int
    schema: str
    domain: bytes
    prefix: struct.Struct  # magic, version, header length
    max_header: int
    fields: Mapping[str, type]  # required header fields and their JSON types

    def size(self, body_bytes: int, header_len: int) -> int:
        """Exact wire size of a frame with this header length and ciphertext body."""
        return self.prefix.size + header_len + body_bytes + SIGNATURE_BYTES

    def encode(self, msg: Framed, fields: Mapping[str, object], public_key: PaillierPublicKey,
               signer: Signer,
               body_fields: Callable[[bytes], Mapping[str, object]] | None = None) -> bytes:
        """``msg`` signed by ``signer``; ``fields``: the header fields of its kind;
        ``body_fields``: more header fields made from the ciphertext bytes."""
        ciphertexts = msg.ciphertexts
        cipher_bytes = ciphertexts_to_bytes(public_key, ciphertexts)
        header = json.dumps({
            "schema": self.schema, **{name: getattr(msg, attr) for name, attr in _COMMON.items()},
            **fields, "count": len(ciphertexts),
            "size": ciphertext_size(public_key), "signer": signer.public_hex,
            **(body_fields(cipher_bytes) if body_fields is not None else {}),
        }, separators=(",", ":")).encode()
        if len(header) > self.max_header:
            raise ProtocolError(f"{self.what} header of {len(header)} bytes exceeds "
                                f"{self.max_header}")
        body = self.prefix.pack(self.magic, self.version, len(header)) + header + cipher_bytes
        return body + signer.sign(self.domain, hashlib.sha256(body).digest())

    def decode(self, payload: bytes, public_key: PaillierPublicKey) -> Frame:
        """Check structure, header fields and every ciphertext; ProtocolError otherwise
        (KeyMismatchError for another key). The signature is checked by ``verify``."""
        what, prefix = self.what, self.prefix
        if len(payload) < prefix.size + SIGNATURE_BYTES:
            raise ProtocolError(f"{what} shorter than its fixed prefix and signature")
        magic, version, header_len = prefix.unpack_from(payload)
        if magic != self.magic:
            raise ProtocolError(f"not a fedmq {what} (bad magic)")
        if version != self.version:
            raise ProtocolError(f"unsupported {what} version {version} (this is {self.version})")
        if header_len > self.max_header or \
                prefix.size + header_len + SIGNATURE_BYTES > len(payload):
            raise ProtocolError(f"{what} header length is out of range")
        try:
            header = json.loads(payload[prefix.size:prefix.size + header_len])
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ProtocolError(f"{what} header is not JSON: {exc}") from exc
        if not isinstance(header, dict) or header.get("schema") != self.schema:
            raise ProtocolError(f"{what} header has the wrong schema")
        for name, kind in self.fields.items():
            value = header.get(name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ProtocolError(f"{what} header field {name!r} missing or mistyped")
        if header["key"] != fingerprint(public_key):
            raise KeyMismatchError(f"{what} was encrypted for another public key")
        if header["size"] != ciphertext_size(public_key) or not 0 < header["count"] <= 1 << 20:
            raise KeyMismatchError(f"{what} ciphertext size or count does not fit this key")
        signed, signature = payload[:-SIGNATURE_BYTES], payload[-SIGNATURE_BYTES:]
        ciphertexts = ciphertexts_from_bytes(public_key, signed[prefix.size + header_len:],
                                             header["count"])
        return Frame(header, tuple(ciphertexts), hashlib.sha256(signed).digest(), signature)

    def verify(self, key: Ed25519PublicKey, signed_hash: bytes, signature: bytes) -> None:
        """Raise ProtocolError unless ``key`` signed the frame with this hash."""
        if len(signature) != SIGNATURE_BYTES or len(signed_hash) != 32:
            raise ProtocolError(f"{self.what} is not signed")
        # The signature is over the payload's hash; verify() hashes its input again.
        verify(key, self.domain, signed_hash, signature)


UPDATE = Framing("update", MAGIC, VERSION, SCHEMA, UPDATE_DOMAIN, _PREFIX, MAX_HEADER, {
    "fleet": str, "run": str, "round": int, "agent": str, "key": str, "codec": str,
    "values": int, "count": int, "size": int})


@dataclass(frozen=True)
class UpdateMessage:
    """One agent's encrypted, weighted model update for one round.

    ``signed_hash`` (SHA-256 of the signed bytes) and ``signature`` are filled by
    decode_update; they tell a redelivery (same hash) from a second update.
    """

    fleet: str
    run_id: str
    round_id: int
    agent_id: str
    key_fingerprint: str
    codec_digest: str
    n_values: int
    ciphertexts: tuple[int, ...]
    signed_hash: bytes = b""
    signature: bytes = b""
    # The signer's Ed25519 public key (hex), as the header names it: lets the
    # aggregator tell "signed, but with a key it has not enrolled" from a forgery.
    # Optional (older agents omit it); it grants nothing, the enrolled key decides.
    signer_key: str = ""
    # The device's attestation signature (protocol.attestation), b"" if the header has none.
    attestation: bytes = b""

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        check_name(self.agent_id, "agent id", ProtocolError)
        check_name(self.run_id, "run id", ProtocolError)
        # Round 0 is the statistics round (protocol.layout).
        if self.round_id < 0 or self.n_values < 1 or not self.ciphertexts:
            raise ProtocolError("update needs round >= 0, n_values >= 1 and ciphertexts")

    def signed_by_named_key(self) -> bool:
        """True if the signature verifies with the key the header names."""
        try:
            self.verify(public_key_from_hex(self.signer_key))
        except ProtocolError:
            return False
        return True

    def verify(self, key: Ed25519PublicKey) -> None:
        """Raise ProtocolError unless the agent's key signed exactly this payload."""
        UPDATE.verify(key, self.signed_hash, self.signature)

    def statement(self, digest: bytes) -> Statement:
        """What this update's attestation says, for ciphertext bytes hashing to ``digest``."""
        return Statement(self.fleet, self.run_id, self.round_id, self.agent_id,
                         self.key_fingerprint, self.codec_digest, self.n_values, digest)

    def attested(self, key: Ed25519PublicKey, public_key: PaillierPublicKey) -> Attestation:
        """This update's attestation, checked with the device's enrolled ``key`` against its
        own header and ciphertexts (a relay forwards it); ProtocolError if missing or wrong."""
        if not self.attestation:
            raise ProtocolError("update carries no attestation (the device's fedmq predates "
                                "relayed attestations: upgrade it)")
        digest = ciphertext_hash(ciphertexts_to_bytes(public_key, self.ciphertexts))
        try:
            self.statement(digest).verify(key, self.attestation)
        except ProtocolError as exc:
            raise ProtocolError(f"the update's attestation does not verify: {exc}") from exc
        return Attestation(digest, self.attestation)


def encode_update(msg: UpdateMessage, public_key: PaillierPublicKey, signer: Signer, *,
                  attest: bool = True) -> bytes:
    """The signed frame; with ``attest`` it carries a fresh attestation by ``signer`` (the
    device's key), else ``msg.attestation`` as it is (tests: missing or foreign ones)."""
    def attestation(cipher_bytes: bytes) -> dict[str, str]:
        signature = msg.statement(ciphertext_hash(cipher_bytes)).sign(signer) if attest \
            else msg.attestation
        return {"attest": signature.hex()} if signature else {}
    return UPDATE.encode(msg, {"agent": msg.agent_id}, public_key, signer, attestation)


def decode_update(payload: bytes, public_key: PaillierPublicKey) -> UpdateMessage:
    """Parse and validate an update made for ``public_key``; raise ProtocolError otherwise.

    Checks structure and every ciphertext; the signature is checked by the
    receiver with the sender's key (``UpdateMessage.verify``).
    """
    if len(payload) > MAX_UPDATE_BYTES:
        raise ProtocolError(f"update of {len(payload)} bytes exceeds {MAX_UPDATE_BYTES}")
    frame = UPDATE.decode(payload, public_key)
    header = frame.header
    signer_key = header.get("signer", "")
    if not isinstance(signer_key, str) or len(signer_key) > 64:
        raise ProtocolError("update header field 'signer' is not a public key")
    return UpdateMessage(**frame.common(), agent_id=header["agent"], signer_key=signer_key,
                         attestation=signature_from_hex(header.get("attest")))
