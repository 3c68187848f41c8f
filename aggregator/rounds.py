"""One open round: which updates are accepted, their running ciphertext sum, when it closes.

Pure bookkeeping, clock passed in: the service feeds it decoded updates and
the current time and asks whether the round is done. A rejected update leaves
the state exactly as it was, so a bad payload can never cost accepted data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from fedmq.aggregator.rejections import Redelivered, Rejected, names, outside_assignment, own_key
from fedmq.protocol.crypto.paillier import PaillierPublicKey, add_ciphertexts
from fedmq.protocol.crypto.signing import Ed25519PublicKey, public_key_hex
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.health import Skip
from fedmq.protocol.layout import UpdateLayout
from fedmq.protocol.notices import KEY_MISMATCH, NOT_ENROLLED, OTHER_KEY, WRONG_MODEL
from fedmq.protocol.partial import PartialSum
from fedmq.protocol.wire import UpdateMessage

_Offered = TypeVar("_Offered", UpdateMessage, PartialSum)
__all__ = ["Redelivered", "Rejected", "RoundState", "outside_assignment"]


@dataclass
class RoundState:
    """The open round: closes once all expected agents reported, or at the deadline with quorum."""

    fleet: str
    run_id: str
    round_id: int
    expected: frozenset[str]
    deadline: float
    quorum: int
    layout: UpdateLayout  # what an update of this round's phase holds
    key_fingerprint: str
    codec_digest: str
    max_agents: int
    public_key: PaillierPublicKey
    allow_list: Mapping[str, Ed25519PublicKey]
    opened_at: float
    sampled: bool = False  # only the expected (selected) agents may contribute
    # Enrolled relays (fedmq relay): their signed partial sums count as all their devices.
    relays: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    # Relay -> the devices it serves, for relays enrolled with an assignment.
    relay_devices: Mapping[str, frozenset[str]] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)  # DEVICES counted, direct or via a relay
    # Member (a device, or a relay) -> the devices its ciphertexts sum: the culprit
    # search splits members, never a relay's partial sum (it cannot see inside it).
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _counted: dict[str, str] = field(default_factory=dict)  # device -> member that brought it
    rejected: int = 0
    rejected_by: dict[str, int] = field(default_factory=dict)  # Rejected.kind -> updates
    update_bytes: int = 0  # payload bytes of the accepted updates
    ciphertext_sum: list[int] | None = None
    # Each accepted member's ciphertexts, for the culprit search when the sum fails
    # (bounded: at most max_agents members of the one size the round takes).
    vectors: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _hashes: dict[str, bytes] = field(default_factory=dict)
    # Each accepted member's signed payload, for trustees that missed it (aggregator.trustees).
    payloads: dict[str, bytes] = field(default_factory=dict)
    # Expected agents that said (in their status) why they skip this round: the round
    # does not wait for them, and the gateway counts the reasons.
    skipped: dict[str, Skip] = field(default_factory=dict)
    # Checked, but waiting for their batch's commit (aggregator.commit): not counted yet,
    # yet a second update of the same member or device is judged against them.
    _held: dict[str, tuple[UpdateMessage | PartialSum, tuple[str, ...]]] = field(
        default_factory=dict)
    _held_by: dict[str, str] = field(default_factory=dict)  # device -> held member

    @property
    def hashes(self) -> Mapping[str, bytes]:
        """Member -> the signed hash of the update (or partial sum) the round accepted."""
        return self._hashes

    @property
    def phase(self) -> str:
        return self.layout.phase

    @property
    def n_values(self) -> int:
        return self.layout.n_values

    def skip(self, agent: str, skip: Skip) -> bool:
        """Note an expected agent's skip of this round; True if it is news."""
        if (skip.run_id, skip.round_id) != (self.run_id, self.round_id) \
                or agent not in self.expected or agent in self.accepted \
                or self.skipped.get(agent) == skip:
            return False
        self.skipped[agent] = skip
        return True

    def offer(self, update: UpdateMessage, topic_agent: str,
              commit: Callable[[UpdateMessage], None] | None = None) -> None:
        """Add ``update`` to the sum or raise Rejected; never half-applies.

        ``commit`` (persisting the payload) runs after every check and before
        the update counts: if it raises, the update is rejected, not half-kept.
        """
        self._offer(update, topic_agent, self._check, commit, "update")
        self._add(update.agent_id, (update.agent_id,), update.ciphertexts, update.signed_hash)

    def offer_partial(self, partial: PartialSum, topic_agent: str,
                      commit: Callable[[PartialSum], None] | None = None) -> None:
        """Add a relay's partial sum (all its contributors at once) or raise Rejected."""
        self._offer(partial, topic_agent, self._check_partial, commit, "partial sum")
        self._add(partial.relay_id, partial.contributors, partial.ciphertexts,
                  partial.signed_hash)

    def hold(self, msg: UpdateMessage | PartialSum, topic_agent: str,
             verified_by: Ed25519PublicKey | None = None) -> None:
        """Every check of offer, then hold ``msg`` for its batch's commit: not counted
        until ``count_held``; raise Rejected (or Redelivered) as offer does.

        ``verified_by``: the enrolled key (the allow-list's very object) that the signature
        worker (aggregator.verifier) found to have signed this update; it spares the inline
        verification only if it is still the agent's enrolled key.
        """
        if isinstance(msg, PartialSum):
            self._offer(msg, topic_agent, self._check_partial, None, "partial sum")
            member, devices = msg.relay_id, msg.contributors
        else:
            self._offer(msg, topic_agent, partial(self._check, verified_by=verified_by), None,
                        "update")
            member, devices = msg.agent_id, (msg.agent_id,)
        self._held[member] = (msg, devices)
        self._held_by.update(dict.fromkeys(devices, member))

    @property
    def held(self) -> int:
        """Devices held for a commit, not yet counted."""
        return len(self._held_by)

    @property
    def waits_only_for_held(self) -> bool:
        """Something is held, and every expected agent is either counted or held."""
        return bool(self._held) and self.missing <= self._held.keys() | self._held_by.keys()

    def count_held(self) -> list[str]:
        """The held members' batch is durable: count them, in arrival order."""
        members = list(self._held)
        for member, (msg, devices) in self._held.items():
            self._add(member, devices, msg.ciphertexts, msg.signed_hash)
        self._held.clear()
        self._held_by.clear()
        return members

    def drop_held(self, kind: str) -> list[str]:
        """The held members' batch could not be made durable: reject them all (``kind``)."""
        members = list(self._held)
        self.reject(kind, len(members))
        self._held.clear()
        self._held_by.clear()
        return members

    def _hash_of(self, member: str) -> bytes | None:
        if member in self._hashes:
            return self._hashes[member]
        held = self._held.get(member)
        return None if held is None else held[0].signed_hash

    def _offer(self, msg: _Offered, topic_agent: str, check: Callable[[_Offered, str], None],
               commit: Callable[[_Offered], None] | None, what: str) -> None:
        """Every check, then ``commit``; a rejection (not a redelivery) is counted."""
        try:
            check(msg, topic_agent)
            if commit is not None:
                try:
                    commit(msg)
                except OSError as exc:
                    raise Rejected(f"cannot persist the {what}: {exc}",
                                   kind="not-persisted") from exc
        except Redelivered:
            raise
        except Rejected as exc:
            self.reject(exc.kind)
            raise

    def reject(self, kind: str, count: int = 1) -> None:
        """Count ``count`` updates rejected for ``kind`` (also those refused before decoding)."""
        self.rejected += count
        self.rejected_by[kind] = self.rejected_by.get(kind, 0) + count

    def _add(self, member: str, devices: tuple[str, ...], ciphertexts: tuple[int, ...],
             signed_hash: bytes) -> None:
        if self.ciphertext_sum is None:
            self.ciphertext_sum = list(ciphertexts)
        else:
            self.ciphertext_sum = add_ciphertexts(self.public_key, self.ciphertext_sum,
                                                  ciphertexts)
        self.accepted.extend(devices)
        for device in (member, *devices):
            self.skipped.pop(device, None)  # an update after all: it counts
        self.members[member] = devices
        self._counted.update(dict.fromkeys(devices, member))
        self.vectors[member] = ciphertexts
        self._hashes[member] = signed_hash

    def _check_partial(self, p: PartialSum, topic_agent: str) -> None:
        if p.relay_id != topic_agent:
            raise Rejected(f"partial sum names relay {p.relay_id!r} but came on "
                           f"{topic_agent!r}'s topic", kind="wrong-topic")
        key = self.relays.get(p.relay_id)
        if key is None:
            raise Rejected(f"{p.relay_id!r} is not an enrolled relay (not in the allow-list's "
                           "relays)", kind="not-enrolled")
        try:
            p.verify(key)
        except ProtocolError as exc:
            raise Rejected(f"{exc} from relay {p.relay_id!r}: forged or tampered partial "
                           "sum", kind="forged") from exc
        if (p.fleet, p.run_id, p.round_id) != (self.fleet, self.run_id, self.round_id):
            raise Rejected(f"partial sum is for fleet {p.fleet!r} run {p.run_id!r} round "
                           f"{p.round_id}, not the open round", kind="wrong-round")
        if p.key_fingerprint != self.key_fingerprint or p.codec_digest != self.codec_digest:
            raise Rejected("partial sum made for another key or codec contract",
                           kind="key-mismatch")
        if p.n_values != self.n_values or len(p.ciphertexts) != self.layout.plaintext_count():
            raise Rejected(f"partial sum carries {p.n_values} values in {len(p.ciphertexts)} "
                           "ciphertexts, not this round's layout", kind="wrong-model")
        if (known := self._hash_of(p.relay_id)) is not None:
            if known == p.signed_hash:
                raise Redelivered("duplicate delivery of an accepted partial sum, counted once")
            raise Rejected("second, different partial sum from this relay in this round",
                           kind="conflicting")
        self._check_contributors(p)
        by = {**self._counted, **self._held_by}
        twice = sorted(d for d in p.contributors if d in by or d in self.relays)
        if twice:
            shown = ", ".join(f"{d} (via {by.get(d, 'a relay id')})" for d in twice[:5])
            raise Rejected(f"partial sum counts {len(twice)} device(s) already counted: {shown}",
                           kind="counted-twice")
        if self.sampled and p.relay_id not in self.expected:
            raise Rejected("relay was not selected for this round", kind="not-selected")
        if len(self.accepted) + self.held + p.summed > self.max_agents:
            raise Rejected(f"partial sum of {p.summed} devices would exceed max_agents="
                           f"{self.max_agents} (holding {len(self.accepted)})", kind="full")

    def _check_contributors(self, p: PartialSum) -> None:
        """Each contributor is the relay's to list and attested this very round itself: the
        relay's signature alone would let it count stale sums under other devices' ids."""
        outside, where = outside_assignment(p, self.relay_devices)
        if outside:
            raise Rejected(f"partial sum from relay {p.relay_id!r} lists device(s) {where}: "
                           f"{names(outside)}; refused whole", kind="relay-contributors")
        bad = p.unattested(self.allow_list, fleet=self.fleet, run_id=self.run_id,
                           round_id=self.round_id, key_fingerprint=self.key_fingerprint,
                           codec_digest=self.codec_digest, n_values=self.n_values)
        if bad:
            raise Rejected(f"partial sum from relay {p.relay_id!r} lists device(s) "
                           f"{names(bad)} without their valid attestation of round "
                           f"{self.round_id} (missing, of another round, key or contract, or "
                           "not signed by the device's enrolled key); refused whole",
                           kind="relay-contributors")

    def _check(self, u: UpdateMessage, topic_agent: str,
               verified_by: Ed25519PublicKey | None = None) -> None:
        if u.agent_id != topic_agent:
            raise Rejected(f"update names agent {u.agent_id!r} but came on {topic_agent!r}'s topic",
                           kind="wrong-topic")
        key = self.allow_list.get(u.agent_id)
        if key is None:
            raise Rejected(f"agent {u.agent_id!r} is not enrolled (not in the allow-list)",
                           code=NOT_ENROLLED, update_key=own_key(u))
        try:
            if verified_by is not key:
                u.verify(key)
        except ProtocolError as exc:
            # Only a rejection asks whether the header's key signed it: an accepted
            # update pays one Ed25519 verification, not two (the costliest check).
            if signer_key := own_key(u):
                # Validly signed, by a key the allow-list does not hold for this agent:
                # a device whose key changed (new SD card, state_dir wiped), not a forgery
                # of its enrolled key.
                raise Rejected(f"{u.agent_id!r} is not enrolled with this key (signed with "
                               f"{signer_key[:16]}..., enrolled {public_key_hex(key)[:16]}...)",
                               code=OTHER_KEY, update_key=signer_key) from exc
            raise Rejected(f"{exc} from {u.agent_id!r}: forged or tampered update",
                           kind="forged") from exc
        if u.fleet != self.fleet or u.run_id != self.run_id:
            raise Rejected(f"update is for fleet {u.fleet!r} run {u.run_id!r}, not this run",
                           kind="wrong-run")
        if u.round_id < self.round_id:
            raise Rejected(f"late or replayed update for closed round {u.round_id}", kind="late")
        if u.round_id > self.round_id:
            raise Rejected(f"update for round {u.round_id}, which is not open", kind="not-open")
        if u.key_fingerprint != self.key_fingerprint or u.codec_digest != self.codec_digest:
            raise Rejected("update made for another key or codec contract", code=KEY_MISMATCH)
        if u.n_values != self.n_values:
            raise Rejected(f"update carries {u.n_values} values, the model needs {self.n_values}",
                           code=WRONG_MODEL)
        if len(u.ciphertexts) != self.layout.plaintext_count():
            raise Rejected(f"update has {len(u.ciphertexts)} ciphertexts", kind="wrong-model")
        via = self._counted.get(u.agent_id) or self._held_by.get(u.agent_id, u.agent_id)
        if via != u.agent_id:
            raise Rejected(f"device already counted in relay {via!r}'s "
                           "partial sum this round", kind="counted-twice")
        if (known := self._hash_of(u.agent_id)) is not None:
            if known == u.signed_hash:
                raise Redelivered("duplicate delivery of an accepted update, counted once")
            raise Rejected("second, different update from this agent in this round",
                           kind="conflicting")
        if self.sampled and u.agent_id not in self.expected:
            raise Rejected("agent was not selected for this round", kind="not-selected")
        if len(self.accepted) + self.held >= self.max_agents:
            raise Rejected(f"round already holds max_agents={self.max_agents} updates", kind="full")

    @property
    def missing(self) -> frozenset[str]:
        """Expected agents that neither reported nor said why they skip."""
        return self.expected - set(self.accepted) - set(self.members) - set(self.skipped)

    def close_reason(self, now: float) -> str | None:
        """'all' once every expected agent reported, 'deadline' past it with quorum, else None."""
        if self.expected and not self.missing and len(self.accepted) >= self.quorum:
            return "all"
        if now >= self.deadline and len(self.accepted) >= self.quorum:
            return "deadline"
        return None
