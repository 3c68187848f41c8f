"""Decryption by trustees: ask, check each partial decryption's proof, combine T of them.

With ``[keys] trustees_file`` the aggregator holds no private key. To decrypt a
group's sum it publishes a request naming the group's members and the signed
hash of each member's update; each trustee recomputes the product itself and
answers with a partial decryption and its proof (or a refusal, or the members it
lacks, whose signed payloads the aggregator then supplies). A partial whose
signature or proof fails names its trustee and is not used. T valid partials are
combined; when the trustees stay silent through the round's extensions, or too
many refuse, the decryption fails with one line naming them, and the round ends
with the model kept.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedmq.aggregator.rounds import RoundState
from fedmq.protocol.crypto.paillier import PaillierPublicKey
from fedmq.protocol.crypto.signing import Ed25519PublicKey, public_key_from_hex, verify
from fedmq.protocol.crypto.threshold import (
    PartialDecryption,
    ProofError,
    ThresholdPublic,
    combine,
    verify_partial,
)
from fedmq.protocol.decryption import DecryptReply, DecryptRequest
from fedmq.protocol.decryption_log import (
    LOG_DOMAIN,
    LogEntry,
    certified,
    chain_of,
    hashes,
)
from fedmq.protocol.errors import ConfigError, DecryptionUnavailable, ProtocolError
from fedmq.protocol.topics import Topics, check_name
from fedmq.runtime.files import read_json

log = logging.getLogger("fedmq.aggregator.service")
SCHEMA = "fedmq.trustees/1"
SUPPLY_BYTES = 1 << 20  # signed payloads per supply message (the broker caps payloads)
RESEND = 2.0  # seconds between copies of an unanswered request
LOG_CATCH_UPS = 5  # longer logs adopted for one decryption before giving up


@dataclass(frozen=True)
class TrusteeInfo:
    index: int  # its share's index (1..k)
    signing_key: Ed25519PublicKey


@dataclass(frozen=True)
class TrusteeSet:
    """The public side of the key ceremony: the threshold key and who holds which share."""

    public: ThresholdPublic
    trustees: Mapping[str, TrusteeInfo]

    def to_dict(self) -> dict[str, object]:
        from fedmq.protocol.crypto.signing import public_key_hex
        return {"schema": SCHEMA, "key": self.public.to_dict(),
                "trustees": {t: {"index": i.index, "signing_key": public_key_hex(i.signing_key)}
                             for t, i in sorted(self.trustees.items())}}

    @classmethod
    def load(cls, path: str | Path) -> TrusteeSet:
        p = Path(path)
        doc = read_json(p, "trustees file")
        try:
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                raise ProtocolError(f"not a fedmq trustees file ({SCHEMA})")
            public = ThresholdPublic.from_dict(doc.get("key") or {})
            raw = doc.get("trustees")
            if not isinstance(raw, dict):
                raise ProtocolError("'trustees' must map trustee ids to index and signing_key")
            trustees = {check_name(t, "trustee id", ProtocolError): TrusteeInfo(
                int(v["index"]), public_key_from_hex(str(v["signing_key"])))
                for t, v in raw.items()}
        except KeyError as exc:
            raise ConfigError(f"trustees file {p}: a trustee lacks {exc}") from None
        except (ProtocolError, TypeError, ValueError) as exc:
            raise ConfigError(f"trustees file {p}: {exc}") from None
        if 2 * public.threshold <= public.trustees or public.threshold < 2:
            raise ConfigError(f"trustees file {p}: a {public.threshold}-of-{public.trustees} "
                              "key; the threshold must be a majority and at least 2")
        if sorted(i.index for i in trustees.values()) != list(range(1, public.trustees + 1)):
            raise ConfigError(f"trustees file {p}: the trustees' indices must be "
                              f"1..{public.trustees}")
        return cls(public, trustees)


@dataclass
class _Answers:
    """What the trustees answered one request so far."""

    partials: dict[str, PartialDecryption] = field(default_factory=dict)
    votes: dict[str, bytes] = field(default_factory=dict)  # for the log entry
    refused: dict[str, str] = field(default_factory=dict)
    unusable: set[str] = field(default_factory=set)  # their partial failed its proof
    supplied: dict[str, set[str]] = field(default_factory=dict)  # members sent to each
    lacking: dict[str, tuple[str, ...]] = field(default_factory=dict)  # "missing" answers
    longer: tuple[LogEntry, ...] = ()  # a certified log longer than the request's

    def silent(self, trustees: Iterable[str]) -> list[str]:
        return sorted(set(trustees) - set(self.partials) - set(self.votes) - set(self.refused)
                      - self.unusable - set(self.lacking))


class TrusteePanel:
    """The aggregator's side of threshold decryption: requests, proofs, the log, combination.

    Every decryption is the next entry of its round's certified log
    (protocol.decryption_log); the panel keeps the logs it has seen and, when a trustee
    answers with a longer one (after a restart of this process, or another aggregator's
    entries), adopts it and asks again.
    """

    def __init__(self, trustees: TrusteeSet, topics: Topics,
                 publish: Callable[[str, bytes], object], *, timeout: float,
                 attempts: int) -> None:
        self.set = trustees
        self.topics = topics
        self._publish = publish
        self.timeout = timeout
        self.attempts = attempts
        self._replies: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=10_000)
        self.bad: dict[str, str] = {}  # trustee -> why its last partial was not used
        self._keys = {t: i.signing_key for t, i in trustees.trustees.items()}
        self.logs: dict[str, list[LogEntry]] = {}  # chain -> its certified entries

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.set.public.public_key

    def for_round(self, state: RoundState) -> RoundDecryptor:
        return RoundDecryptor(self, state)

    def deliver(self, topic: str, payload: bytes) -> bool:
        """paho's thread: keep a reply for the waiting decryption; False if not a reply."""
        if self.topics.agent_of(topic, "trustee/reply") is None:
            return False
        # A flood fills the queue: the request is sent again and answered from the cache.
        with contextlib.suppress(queue.Full):
            self._replies.put_nowait((topic, payload))
        return True

    def decrypt(self, state: RoundState, group: frozenset[str],
                ciphertexts: Sequence[int]) -> list[int]:
        """The plaintexts of ``ciphertexts`` (the product of ``group``'s updates): T votes
        make the sum the next entry of the round's log, then T partial decryptions of it."""
        chain = chain_of(state.run_id, state.round_id)
        for _ in range(LOG_CATCH_UPS):
            got = self._ask(state, group, ciphertexts, chain, "vote")
            if not got.longer:
                got = self._ask(state, group, ciphertexts, chain, "decrypt")
            if not got.longer:
                return combine(self.set.public, ciphertexts, list(got.partials.values()))
            self.logs[chain] = list(got.longer)
            log.info("round %d: the trustees' %s log has %d entries; asking again after it",
                     state.round_id, chain, len(got.longer))
        raise DecryptionUnavailable(f"round {state.round_id}: the trustees' {chain} log kept "
                                    "growing under this aggregator (another one running?)")

    def _ask(self, state: RoundState, group: frozenset[str], ciphertexts: Sequence[int],
             chain: str, phase: str) -> _Answers:
        """T valid votes (the entry is then appended to the log), T valid partial
        decryptions of the log's last entry, or a longer log."""
        own = self.logs.setdefault(chain, [])
        members = {m: state.hashes[m].hex() for m in group}
        req = DecryptRequest(fleet=state.fleet, run_id=state.run_id, round_id=state.round_id,
                             members=members, log=tuple(own), phase=phase)
        devices = tuple(sorted({d for m in group for d in state.members.get(m, (m,))}))
        prev = hashes(own, fleet=state.fleet, chain=chain)
        digest = LogEntry(devices, members, {}).digest(state.fleet, chain, len(own),
                                                       prev[-1] if prev else b"")
        got = _Answers()
        public = self.set.public
        # A request reaches only trustees subscribed when it is sent (a trustee that is
        # starting or reconnecting misses it): asked again every RESEND seconds, answered
        # from the trustees' cache; WARNING once per round_timeout without enough answers.
        start = time.monotonic()
        end = start + self.timeout * (self.attempts + 1)
        next_send = warned = 0.0
        while (now := time.monotonic()) < end:
            if now >= next_send:
                self._publish(self.topics.trustee_request, req.to_bytes())
                next_send = now + min(RESEND, self.timeout)
            if now - start >= self.timeout * (warned + 1):
                warned += 1
                log.warning("round %d: waiting for trustee(s) %s (%d of %d needed to %s) for "
                            "%.0f s", state.round_id, ", ".join(got.silent(self.set.trustees)),
                            public.threshold, public.trustees, phase, now - start)
            try:
                topic, payload = self._replies.get(timeout=max(0.0, min(next_send, end) - now))
            except queue.Empty:
                continue
            if (reply := self._reply(topic, payload, req)) is None:
                continue
            self._take(state, req, ciphertexts, digest, *reply, got)
            if got.longer:
                return got
            if phase == "vote" and len(got.votes) >= public.threshold:
                own.append(LogEntry(devices, members, dict(got.votes)))
                return got
            if phase == "decrypt" and len(got.partials) >= public.threshold:
                return got
            if len(got.refused) + len(got.unusable) > public.trustees - public.threshold:
                raise DecryptionUnavailable(
                    f"round {state.round_id}: decryption needs {public.threshold} of "
                    f"{public.trustees} trustees; refused by "
                    f"{', '.join(sorted(got.refused)) or 'none'}" + (
                        f"; proof failed: {', '.join(sorted(got.unusable))}"
                        if got.unusable else ""))
        done = len(got.votes if phase == "vote" else got.partials)
        raise DecryptionUnavailable(
            f"round {state.round_id}: decryption needs {public.threshold} of {public.trustees} "
            f"trustees, got {done}; silent: "
            f"{', '.join(got.silent(self.set.trustees)) or 'none'}"
            + (f"; refused: {', '.join(sorted(got.refused))}" if got.refused else "")
            + "".join(f"; {t} cannot verify the updates of {', '.join(m[:5])}"
                      f"{' and more' if len(m) > 5 else ''} (not on its allow-list? fedmq "
                      "trustee enroll)" for t, m in sorted(got.lacking.items())
                      if t not in got.partials and t not in got.votes))

    def _take(self, state: RoundState, req: DecryptRequest, ciphertexts: Sequence[int],
              digest: bytes, trustee: str, answer: DecryptReply, got: _Answers) -> None:
        if answer.status == "missing":
            got.lacking[trustee] = answer.missing
            self._supply(state, req, answer, got.supplied.setdefault(trustee, set()))
        elif answer.status == "log":
            self._catch_up(state, req, trustee, answer, got)
        elif answer.status == "refused":
            if trustee not in got.refused:
                log.error("round %d: trustee %s refused to decrypt a sum of %d member(s): %s",
                          state.round_id, trustee, len(req.members), answer.reason)
            got.refused[trustee] = answer.reason
        elif answer.status == "vote" and req.phase == "vote" and trustee not in got.votes:
            try:
                verify(self._keys[trustee], LOG_DOMAIN, digest, answer.vote)
            except ProtocolError:
                got.unusable.add(trustee)
                log.error("trustee %s voted for another log entry than this request's: not "
                          "used", trustee)
                return
            got.votes[trustee] = answer.vote
        elif answer.partial is not None and req.phase == "decrypt" \
                and trustee not in got.partials:
            if self._valid(trustee, answer.partial, ciphertexts, req):
                got.partials[trustee] = answer.partial
            else:
                got.unusable.add(trustee)

    def _catch_up(self, state: RoundState, req: DecryptRequest, trustee: str,
                  answer: DecryptReply, got: _Answers) -> None:
        """A trustee knows a longer certified log: adopt it if it extends the request's."""
        chain = chain_of(state.run_id, state.round_id)
        try:
            theirs = certified(answer.log, fleet=state.fleet, chain=chain, keys=self._keys,
                               threshold=self.set.public.threshold)
        except ProtocolError as exc:
            log.error("trustee %s sent a %s log that is not certified: %s", trustee, chain, exc)
            return
        ours = hashes(req.log, fleet=state.fleet, chain=chain)
        if theirs[:len(ours)] != ours[:len(theirs)]:
            log.error("trustee %s sent a %s log that does not extend this aggregator's",
                      trustee, chain)
            return
        if len(theirs) > len(ours):
            got.longer = answer.log

    def _reply(self, topic: str, payload: bytes, req: DecryptRequest
               ) -> tuple[str, DecryptReply] | None:
        trustee = self.topics.agent_of(topic, "trustee/reply")
        info = self.set.trustees.get(trustee or "")
        if trustee is None or info is None:
            log.warning("ignoring a reply on %s: not a trustee of this fleet", topic)
            return None
        try:
            reply = DecryptReply.from_bytes(payload, info.signing_key)
        except ProtocolError as exc:
            log.warning("ignoring a reply of trustee %s: %s", trustee, exc)
            return None
        if reply.request_id != req.request_id or reply.trustee != trustee:
            return None  # an answer to an earlier request (already decrypted or given up)
        return trustee, reply

    def _valid(self, trustee: str, partial: PartialDecryption, ciphertexts: Sequence[int],
               req: DecryptRequest) -> bool:
        index = self.set.trustees[trustee].index
        try:
            if partial.index != index:
                raise ProofError(f"partial decryption carries share index {partial.index}, "
                                 f"not the trustee's {index}", index=partial.index)
            verify_partial(self.set.public, ciphertexts, partial, context=req.context())
        except ProtocolError as exc:
            self.bad[trustee] = str(exc)
            log.error("trustee %s returned a partial decryption that fails its proof (%s): "
                      "not used", trustee, exc)
            return False
        self.bad.pop(trustee, None)
        return True

    def _supply(self, state: RoundState, req: DecryptRequest, answer: DecryptReply,
                given: set[str]) -> None:
        """Send the signed payloads a trustee lacks (it verifies them as any other)."""
        wanted = [m for m in answer.missing if m in req.members and m not in given
                  and m in state.payloads]
        given.update(wanted)
        batch: list[bytes] = []
        for member in wanted:
            batch.append(state.payloads[member])
            if sum(map(len, batch)) >= SUPPLY_BYTES:
                self._send_supply(req, batch)
                batch = []
        if batch:
            self._send_supply(req, batch)

    def _send_supply(self, req: DecryptRequest, batch: list[bytes]) -> None:
        msg = DecryptRequest(fleet=req.fleet, run_id=req.run_id, round_id=req.round_id,
                             members=req.members, request_id=req.request_id,
                             supply=tuple(batch))
        self._publish(self.topics.trustee_request, msg.to_bytes())


@dataclass(frozen=True)
class RoundDecryptor:
    """aggregator.culprits.Decryptor for one round: its members' hashes name the updates."""

    panel: TrusteePanel
    state: RoundState

    @property
    def public_key(self) -> PaillierPublicKey:
        return self.panel.public_key

    def decrypt(self, group: frozenset[str], ciphertexts: Sequence[int]) -> list[int]:
        return self.panel.decrypt(self.state, group, ciphertexts)
