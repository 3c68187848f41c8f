"""Binary update messages: a small versioned header, then fixed-length ciphertexts.

Layout (all integers big-endian)::

    b"FMQU" | version u8 | header length u16 | header (UTF-8 JSON) | ciphertexts

The header names fleet, round, agent, key fingerprint and codec digest so a
receiver can reject a payload meant for another key or contract before it
touches a single ciphertext. Ciphertexts are ``count`` blocks of exactly
``size`` bytes (the byte length of n^2): no decimal strings, no base64.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from protocol.errors import KeyMismatchError, ProtocolError
from protocol.paillier import (
    PaillierPublicKey,
    ciphertext_size,
    ciphertexts_from_bytes,
    ciphertexts_to_bytes,
    fingerprint,
)
from protocol.topics import check_name

MAGIC = b"FMQU"
VERSION = 1
MAX_HEADER = 4096
MAX_UPDATE_BYTES = 64 * 1024 * 1024
_PREFIX = struct.Struct(">4sBH")


@dataclass(frozen=True)
class UpdateMessage:
    """One agent's encrypted, weighted model update for one round."""

    fleet: str
    round_id: int
    agent_id: str
    key_fingerprint: str
    codec_digest: str
    n_values: int
    ciphertexts: tuple[int, ...]

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        check_name(self.agent_id, "agent id", ProtocolError)
        if self.round_id < 1 or self.n_values < 1 or not self.ciphertexts:
            raise ProtocolError("update needs round >= 1, n_values >= 1 and ciphertexts")


def encode_update(msg: UpdateMessage, public_key: PaillierPublicKey) -> bytes:
    header = json.dumps({
        "schema": "fedmq.update/1", "fleet": msg.fleet, "round": msg.round_id,
        "agent": msg.agent_id, "key": msg.key_fingerprint, "codec": msg.codec_digest,
        "values": msg.n_values, "count": len(msg.ciphertexts),
        "size": ciphertext_size(public_key),
    }, separators=(",", ":")).encode()
    body = ciphertexts_to_bytes(public_key, msg.ciphertexts)
    return _PREFIX.pack(MAGIC, VERSION, len(header)) + header + body


def decode_update(payload: bytes, public_key: PaillierPublicKey) -> UpdateMessage:
    """Parse and validate an update made for ``public_key``; raise ProtocolError otherwise."""
    if len(payload) > MAX_UPDATE_BYTES:
        raise ProtocolError(f"update of {len(payload)} bytes exceeds {MAX_UPDATE_BYTES}")
    if len(payload) < _PREFIX.size:
        raise ProtocolError("update shorter than its fixed prefix")
    magic, version, header_len = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise ProtocolError("not a fedmq update (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"unsupported update version {version}")
    if header_len > MAX_HEADER or _PREFIX.size + header_len > len(payload):
        raise ProtocolError("update header length is out of range")
    try:
        header = json.loads(payload[_PREFIX.size:_PREFIX.size + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"update header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("schema") != "fedmq.update/1":
        raise ProtocolError("update header has the wrong schema")
    fields = {"fleet": str, "round": int, "agent": str, "key": str, "codec": str,
              "values": int, "count": int, "size": int}
    for name, kind in fields.items():
        value = header.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProtocolError(f"update header field {name!r} missing or mistyped")
    if header["key"] != fingerprint(public_key):
        raise KeyMismatchError("update was encrypted for another public key")
    if header["size"] != ciphertext_size(public_key) or not 0 < header["count"] <= 1 << 20:
        raise KeyMismatchError("update ciphertext size or count does not fit this key")
    body = payload[_PREFIX.size + header_len:]
    ciphertexts = ciphertexts_from_bytes(public_key, body, header["count"])
    return UpdateMessage(
        fleet=header["fleet"], round_id=header["round"], agent_id=header["agent"],
        key_fingerprint=header["key"], codec_digest=header["codec"],
        n_values=header["values"], ciphertexts=tuple(ciphertexts),
    )
