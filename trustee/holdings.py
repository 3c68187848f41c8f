"""The signed updates a trustee has verified itself, per round: what its decryptions are made of.

A trustee never takes the aggregator's word for a ciphertext. Every update (or
relay's partial sum) it sees on the fleet's update topics, or that the aggregator
supplies with a request, is decoded and checked against the trustee's OWN
allow-list: the device's (or relay's) enrolled Ed25519 key, the fleet, the key
fingerprint, and for a partial sum every contributor's attestation of that very
round with its enrolled key. Only then is it kept, under its signed hash, for
the few most recent rounds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from fedmq.aggregator.rounds import outside_assignment
from fedmq.protocol.crypto.paillier import PaillierPublicKey, fingerprint
from fedmq.protocol.crypto.signing import Ed25519PublicKey
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.partial import PartialSum, decode_partial, is_partial
from fedmq.protocol.wire import UpdateMessage, decode_update

RoundKey = tuple[str, int]  # (run id, round id)
MAX_VERSIONS = 4  # different validly signed updates of one member in one round (a liar's)


@dataclass(frozen=True)
class Verified:
    """One verified update or partial sum: who brought it and which devices it sums."""

    member: str  # the device, or the relay whose partial sum it is
    devices: tuple[str, ...]
    run_id: str
    round_id: int
    codec_digest: str
    n_values: int
    ciphertexts: tuple[int, ...]
    signed_hash: str  # hex


@dataclass(frozen=True)
class Enrolled:
    """The trustee's own allow-list: devices, relays, and the devices each relay serves."""

    agents: Mapping[str, Ed25519PublicKey]
    relays: Mapping[str, Ed25519PublicKey]
    relay_devices: Mapping[str, frozenset[str]]


class Holdings:
    def __init__(self, fleet: str, public_key: PaillierPublicKey, keep_rounds: int = 4) -> None:
        self.fleet = fleet
        self.public_key = public_key
        self.fingerprint = fingerprint(public_key)
        self.keep_rounds = keep_rounds
        self._rounds: OrderedDict[RoundKey, dict[str, dict[str, Verified]]] = OrderedDict()

    def verify(self, payload: bytes, enrolled: Enrolled, topic_member: str | None = None
               ) -> Verified:
        """Decode and check ``payload``; raise ProtocolError naming what is wrong."""
        if is_partial(payload):
            return self._partial(decode_partial(payload, self.public_key), enrolled,
                                 topic_member)
        return self._update(decode_update(payload, self.public_key), enrolled, topic_member)

    def offer(self, payload: bytes, enrolled: Enrolled, topic_member: str | None = None
              ) -> Verified:
        """Verify and keep ``payload``; raise ProtocolError when it is not kept."""
        found = self.verify(payload, enrolled, topic_member)
        key = (found.run_id, found.round_id)
        if key not in self._rounds:
            self._rounds[key] = {}
            while len(self._rounds) > self.keep_rounds:
                self._rounds.popitem(last=False)
        versions = self._rounds[key].setdefault(found.member, {})
        if found.signed_hash not in versions and len(versions) >= MAX_VERSIONS:
            raise ProtocolError(f"{found.member} sent more than {MAX_VERSIONS} different "
                                f"updates in round {found.round_id}; not kept")
        versions[found.signed_hash] = found
        return found

    def get(self, run_id: str, round_id: int, member: str, signed_hash: str) -> Verified | None:
        return self._rounds.get((run_id, round_id), {}).get(member, {}).get(signed_hash)

    def _common(self, fleet: str, fp: str, who: str) -> None:
        if fleet != self.fleet:
            raise ProtocolError(f"{who} is for fleet {fleet!r}, not {self.fleet!r}")
        if fp != self.fingerprint:
            raise ProtocolError(f"{who} is made for another Paillier key")

    def _update(self, u: UpdateMessage, enrolled: Enrolled, topic_member: str | None
                ) -> Verified:
        who = f"update from {u.agent_id!r}"
        if topic_member is not None and u.agent_id != topic_member:
            raise ProtocolError(f"{who} came on {topic_member!r}'s topic")
        key = enrolled.agents.get(u.agent_id)
        if key is None:
            raise ProtocolError(f"{who}: not on this trustee's allow-list")
        u.verify(key)  # ProtocolError: forged or tampered
        self._common(u.fleet, u.key_fingerprint, who)
        return Verified(u.agent_id, (u.agent_id,), u.run_id, u.round_id, u.codec_digest,
                        u.n_values, u.ciphertexts, u.signed_hash.hex())

    def _partial(self, p: PartialSum, enrolled: Enrolled, topic_member: str | None
                 ) -> Verified:
        who = f"partial sum from relay {p.relay_id!r}"
        if topic_member is not None and p.relay_id != topic_member:
            raise ProtocolError(f"{who} came on {topic_member!r}'s topic")
        key = enrolled.relays.get(p.relay_id)
        if key is None:
            raise ProtocolError(f"{who}: not a relay on this trustee's allow-list")
        p.verify(key)
        self._common(p.fleet, p.key_fingerprint, who)
        outside, _ = outside_assignment(p, enrolled.relay_devices)
        outside += [d for d in p.contributors if d in enrolled.relays]
        if outside:
            raise ProtocolError(f"{who} lists device(s) it does not serve: "
                                f"{', '.join(sorted(outside)[:5])}")
        bad = p.unattested(enrolled.agents, fleet=p.fleet, run_id=p.run_id,
                           round_id=p.round_id, key_fingerprint=p.key_fingerprint,
                           codec_digest=p.codec_digest, n_values=p.n_values)
        if bad:
            raise ProtocolError(f"{who} lists device(s) without their valid attestation of "
                                f"round {p.round_id} by a key on this trustee's allow-list: "
                                f"{', '.join(sorted(bad)[:5])}")
        return Verified(p.relay_id, tuple(p.contributors), p.run_id, p.round_id,
                        p.codec_digest, p.n_values, p.ciphertexts, p.signed_hash.hex())
