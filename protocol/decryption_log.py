"""A round's decryptions as a log certified by the trustees: one order all honest ones share.

A trustee that judged each request only against its own record could be played: the
gateway runs the broker, so it can send {a..e} to trustees 1 and 2, {a, b} to 2 and
3, {c, d} to 1 and 3; each trustee sees two harmless sets, and the three sums isolate
e. So every decryption is an entry of a hash-chained log per round (per fleet for the
statistics round, whose sums do not change between runs): entry p names its device
set, its updates and the hash of entry p - 1, and counts ("is certified") only with
the votes (signatures) of T trustees, each of which checked it against the log before
it. T is a majority. A trustee adopts the certified entries a request shows it and from then on
refuses any log that differs from them; releasing a partial decryption needs T
trustees that adopted that entry, and two disjoint majorities do not exist, so at each
position at most one entry is ever decrypted: the decrypted log is one sequence, and a
trustee asked to extend it sees, and checks the new set against, every set decrypted
before in that round, whoever decrypted it.

Two phases, so that nothing is decrypted outside that sequence: a trustee first only
votes for an entry (no partial decryption), and releases its partial decryption of an
entry's sum only once it is shown the entry certified in the log, with the very updates
(member -> signed-update hash) the entry names. A vote releases nothing, so a trustee
may vote again at a position whose entry it has not seen certified (a retry with
another set after trustees were away), and a split vote never blocks a log (a first
version released the partial with the vote, and a set voted at a position that
another set then won escaped the log).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedmq.protocol.crypto.signing import Ed25519PublicKey, Signer, verify
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.topics import check_name

LOG_DOMAIN = b"fedmq/decrypt-log/1\x00"
STATISTICS = "statistics"


def chain_of(run_id: str, round_id: int) -> str:
    """The log a round's decryptions extend: the round's own, or the fleet's statistics log."""
    return STATISTICS if round_id == 0 else f"{run_id}/{round_id}"


def entry_hash(fleet: str, chain: str, position: int, prev: bytes, devices: Iterable[str],
               members: Mapping[str, str]) -> bytes:
    """SHA-256 of one canonical JSON document: no two entries share an encoding (ids are
    checked names, and JSON quotes every one of them)."""
    doc = ["fedmq/decrypt-log/2", fleet, chain, position, prev.hex(), sorted(devices),
           sorted(members.items())]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).digest()


@dataclass(frozen=True)
class LogEntry:
    """One device set to be decrypted, the exact updates (member -> signed-update hash)
    whose product it is, and the trustees' votes (signatures over its hash)."""

    devices: tuple[str, ...]
    members: Mapping[str, str]
    votes: Mapping[str, bytes]

    def to_dict(self) -> dict[str, Any]:
        return {"devices": list(self.devices), "members": dict(sorted(self.members.items())),
                "votes": {t: v.hex() for t, v in sorted(self.votes.items())}}

    @classmethod
    def from_dict(cls, doc: Any) -> LogEntry:
        if not isinstance(doc, dict) or not isinstance(doc.get("devices"), list) \
                or not isinstance(doc.get("members"), dict) \
                or not isinstance(doc.get("votes"), dict):
            raise ProtocolError("a log entry needs devices (a list), members and votes")
        try:
            votes = {check_name(str(t), "trustee id", ProtocolError): bytes.fromhex(v)
                     for t, v in doc["votes"].items()}
            members = {check_name(m, "member id", ProtocolError): _hex64(h)
                       for m, h in doc["members"].items()}
            devices = [check_name(d, "device id", ProtocolError) for d in doc["devices"]]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProtocolError(f"log entry: {exc}") from None
        if len(set(devices)) != len(devices) or not members:
            raise ProtocolError("log entry devices must be distinct ids, and members given")
        return cls(tuple(sorted(devices)), members, votes)

    def digest(self, fleet: str, chain: str, position: int, prev: bytes) -> bytes:
        return entry_hash(fleet, chain, position, prev, self.devices, self.members)


def _hex64(value: object) -> str:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("an update hash must be 64 hex characters")
    bytes.fromhex(value)
    return value


def hashes(entries: Sequence[LogEntry], *, fleet: str, chain: str) -> list[bytes]:
    """Each entry's hash, chained (no vote checked)."""
    out: list[bytes] = []
    for position, entry in enumerate(entries):
        out.append(entry.digest(fleet, chain, position, out[-1] if out else b""))
    return out


def vote(signer: Signer, digest: bytes) -> bytes:
    return signer.sign(LOG_DOMAIN, digest)


def certified(entries: Sequence[LogEntry], *, fleet: str, chain: str,
              keys: Mapping[str, Ed25519PublicKey], threshold: int) -> list[bytes]:
    """The entries' hashes; ProtocolError naming the first entry without ``threshold``
    valid votes of distinct trustees (``keys``: trustee id -> signing key)."""
    found = hashes(entries, fleet=fleet, chain=chain)
    for position, (entry, digest) in enumerate(zip(entries, found, strict=True)):
        good = 0
        for trustee, signature in entry.votes.items():
            key = keys.get(trustee)
            if key is None:
                continue
            try:
                verify(key, LOG_DOMAIN, digest, signature)
            except ProtocolError:
                continue
            good += 1
        if good < threshold:
            raise ProtocolError(f"entry {position} of the {chain} log has {good} valid trustee "
                                f"votes, {threshold} needed")
    return found
