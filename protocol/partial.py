"""Binary partial sums: a relay's product of its devices' update ciphertexts, signed by the relay.

Layout (all integers big-endian), like an update (protocol.wire) but with its own magic,
a 32-bit header length (the header lists every contributing device) and its own
signature domain, so neither message can pass for the other::

    b"FMQP" | version u8 | header length u32 | header (UTF-8 JSON) | ciphertexts | signature

Paillier is additively homomorphic position by position, so the product of n
devices' ciphertext vectors is the encryption of the sum of their plaintexts in
every section (training, evaluation, statistics): the top aggregator multiplies a
partial sum into its running product like n updates at once and decodes the grand
total with n_summed = the number of DEVICES. ``contributors`` (sorted, unique) lets it
refuse a device counted twice (directly and via a relay, or via two relays).

Version 2 (``fedmq.partial/2``) adds ``attestations``: per contributor, in the same order,
``[SHA-256 of its update's ciphertext bytes, its attestation signature]`` (hex;
protocol.attestation), so the top aggregator checks with each device's enrolled key that
the device itself sent an update for this round; a relay's signature alone names nobody.
A version 1 partial is refused at the prefix with its version named.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from fedmq.protocol.attestation import Attestation, Statement
from fedmq.protocol.crypto.paillier import PaillierPublicKey
from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.topics import check_name
from fedmq.protocol.wire import Framing

MAGIC = b"FMQP"
VERSION = 2
SCHEMA = "fedmq.partial/2"
PARTIAL_DOMAIN = b"fedmq/partial/2\x00"
# Room for ~15,000 contributors: an id of 64 characters and an attestation (199 bytes).
MAX_HEADER = 1 << 22
PREFIX = struct.Struct(">4sBI")
PARTIAL = Framing("partial sum", MAGIC, VERSION, SCHEMA, PARTIAL_DOMAIN, PREFIX, MAX_HEADER, {
    "fleet": str, "run": str, "round": int, "relay": str, "key": str, "codec": str,
    "values": int, "count": int, "size": int, "summed": int, "contributors": list,
    "attestations": list})
partial_size = PARTIAL.size  # exact wire size for a header length and ciphertext body


@dataclass(frozen=True)
class PartialSum:
    """The encrypted sum of ``len(contributors)`` devices' updates for one round."""

    fleet: str
    run_id: str
    round_id: int
    relay_id: str
    key_fingerprint: str
    codec_digest: str
    n_values: int
    ciphertexts: tuple[int, ...]
    contributors: tuple[str, ...]
    attestations: tuple[Attestation, ...]  # one per contributor, in the same order
    signed_hash: bytes = b""
    signature: bytes = b""

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet name", ProtocolError)
        check_name(self.relay_id, "relay id", ProtocolError)
        check_name(self.run_id, "run id", ProtocolError)
        for device in self.contributors:
            check_name(device, "contributor id", ProtocolError)
        if list(self.contributors) != sorted(set(self.contributors)):
            raise ProtocolError("partial sum contributors must be sorted and unique")
        if self.round_id < 0 or self.n_values < 1 or not self.ciphertexts \
                or not self.contributors:
            raise ProtocolError("partial sum needs round >= 0, n_values >= 1, ciphertexts "
                                "and at least one contributor")
        if len(self.attestations) != len(self.contributors):
            raise ProtocolError(f"partial sum has {len(self.attestations)} attestations for "
                                f"{len(self.contributors)} contributors")

    @property
    def summed(self) -> int:
        return len(self.contributors)

    def verify(self, key: Ed25519PublicKey) -> None:
        """Raise ProtocolError unless the relay's key signed exactly this payload."""
        PARTIAL.verify(key, self.signed_hash, self.signature)

    def unattested(self, keys: Mapping[str, Ed25519PublicKey], *, fleet: str, run_id: str,
                   round_id: int, key_fingerprint: str, codec_digest: str,
                   n_values: int) -> list[str]:
        """The contributors whose attestation ``keys`` (their enrolled keys) do not confirm
        for the given round, key and contract: unenrolled, another round, another signer."""
        bad = []
        for device, att in zip(self.contributors, self.attestations, strict=True):
            key = keys.get(device)
            statement = Statement(fleet, run_id, round_id, device, key_fingerprint,
                                  codec_digest, n_values, att.ciphertext_hash)
            try:
                if key is None:
                    raise ProtocolError("not enrolled")
                statement.verify(key, att.signature)
            except ProtocolError:
                bad.append(device)
        return bad


def encode_partial(msg: PartialSum, public_key: PaillierPublicKey, signer: Signer) -> bytes:
    return PARTIAL.encode(msg, {"relay": msg.relay_id, "summed": msg.summed,
                                "contributors": list(msg.contributors),
                                "attestations": [a.to_json() for a in msg.attestations]},
                          public_key, signer)


def is_partial(payload: bytes) -> bool:
    return payload[:len(MAGIC)] == MAGIC


def decode_partial(payload: bytes, public_key: PaillierPublicKey) -> PartialSum:
    """Parse and validate a partial sum made for ``public_key``; raise ProtocolError otherwise.

    Checks structure and every ciphertext (in Z*_{n^2}); the receiver checks the
    signature with the relay's enrolled key (``PartialSum.verify``).
    """
    frame = PARTIAL.decode(payload, public_key)
    header = frame.header
    contributors = header["contributors"]
    if not all(isinstance(c, str) for c in contributors) or header["summed"] != len(contributors):
        raise ProtocolError("partial sum: 'summed' must equal the number of contributor ids")
    attestations = tuple(Attestation.from_json(a) for a in header["attestations"])
    return PartialSum(**frame.common(), relay_id=header["relay"],
                      contributors=tuple(contributors), attestations=attestations)
