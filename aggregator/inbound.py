"""Inbound messages of the aggregator: agent status, and updates offered to the open round.

Every payload from the broker is untrusted: it is parsed, checked and either
held for its batch's commit or logged with its reason; nothing here can raise
into the round loop. A held update counts once its batch is durable (``flush``,
aggregator.commit), never before.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from fedmq.aggregator.checkpoint import Checkpoints
from fedmq.aggregator.commit import Batch
from fedmq.aggregator.config import Limits
from fedmq.aggregator.notices import Notifier
from fedmq.aggregator.rounds import Redelivered, Rejected, RoundState
from fedmq.aggregator.verifier import CHUNK, HASH, SIG, Verifier, record
from fedmq.protocol.crypto.paillier import PaillierPublicKey
from fedmq.protocol.crypto.signing import Ed25519PublicKey, raw_key
from fedmq.protocol.errors import KeyMismatchError, ProtocolError
from fedmq.protocol.health import Skip
from fedmq.protocol.holdings import Holdings
from fedmq.protocol.messages import StatusMessage
from fedmq.protocol.partial import PartialSum, decode_partial, is_partial
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import UpdateMessage, decode_update

log = logging.getLogger("fedmq.aggregator.service")
# A message decoded off the round loop's state: the update or partial sum, why it is
# undecodable, or None (not an update, or its agent is quarantined).
_Decoded: TypeAlias = UpdateMessage | PartialSum | ProtocolError | None


@dataclass(frozen=True)
class _Chunk:
    start: int  # position of its first message in the backlog
    decoded: list[_Decoded]
    keys: list[tuple[int, Ed25519PublicKey]]  # (position in the chunk, enrolled key) per record
    sent: bool  # its records went to the worker, whose verdicts are to be collected


def offer_payload(state: RoundState, agent: str, payload: bytes, public_key: PaillierPublicKey,
                  commit: Callable[[object], None] | None = None) -> None:
    """Decode an update, or a relay's partial sum (on the relay's update topic), and offer
    it to ``state``; raise ProtocolError (undecodable) or Rejected (not counted)."""
    if is_partial(payload):
        state.offer_partial(decode_partial(payload, public_key), agent, commit)
    else:
        state.offer(decode_update(payload, public_key), agent, commit)


class Inbound:
    def __init__(self, topics: Topics, public_key: PaillierPublicKey,
                 checkpoints: Checkpoints, notifier: Notifier | None = None,
                 on_skip: Callable[[int, str, Skip], None] | None = None,
                 on_ask: Callable[[Holdings], None] | None = None,
                 limits: Limits | None = None, verifier: Verifier | None = None) -> None:
        self.topics = topics
        self.on_ask = on_ask  # a device's status says what it holds of key and round
        self._bad_status: set[str] = set()  # devices whose malformed status was said once
        limits = limits or Limits()
        self.batch = Batch(max_updates=limits.commit_updates, max_seconds=limits.commit_seconds)
        self.batches = 0  # batches committed (each one fsync)
        self.on_skip = on_skip  # an expected agent said why it skips the open round
        self.notifier = notifier
        self.public_key = public_key
        self.checkpoints = checkpoints
        self.online: dict[str, bool] = {}
        # Agent -> the run since which it says it holds enough new rows (aggregator.schedule).
        self.ready: dict[str, str] = {}
        self.quarantined: dict[str, tuple[int, ...]] = {}  # culprit -> rounds it voided
        # Its worker starts on the first backlog (handle_many); close() stops it.
        self.verifier = verifier or Verifier()

    def quarantine(self, agent: str, rounds: tuple[int, ...]) -> None:
        """Reject ``agent``'s updates for the rest of the run; no round waits for it."""
        self.quarantined[agent] = rounds
        self.online[agent] = False

    def handle(self, state: RoundState | None, topic: str, payload: bytes) -> None:
        self._settle(state, topic, payload, self._decode(topic, payload))

    def handle_many(self, state: RoundState | None, items: Sequence[tuple[str, bytes]],
                    stop: Callable[[], bool] | None = None) -> list[tuple[str, bytes]]:
        """Handle a backlog in order, exactly as ``handle`` one by one (each followed by
        the round loop's commit check), but with the updates' Ed25519 verifications done
        by a second process (aggregator.verifier) while this one decodes the next chunk.
        ``stop`` is asked after each message; the messages not handled are returned.

        A signature is still verified before its update is held: the worker's verdict
        only spares the inline verification of what it found genuine; anything else
        (forged, another key, the worker lost) goes through ``hold``'s own verification
        and its rejection path unchanged.
        """
        if len(items) < 2 or state is None:  # nothing to overlap: no latency added
            for at, (topic, payload) in enumerate(items):
                self.handle(state, topic, payload)
                if self.due():
                    self.flush(state)
                if stop is not None and stop():
                    return list(items[at + 1:])
            return []
        # Chunk k+1 is decoded and sent while the worker verifies chunk k.
        chunks: deque[_Chunk] = deque()
        for start in range(0, len(items), CHUNK):
            decoded = [self._decode(t, p) for t, p in items[start:start + CHUNK]]
            keys, records = self._signers(state, decoded)
            sent = bool(records) and self.verifier.submit(records)
            chunks.append(_Chunk(start, decoded, keys, sent))
            if len(chunks) > 1 and (left := self._settle_chunk(state, items, chunks.popleft(),
                                                               stop)) is not None:
                return self._stopped(left, chunks)
        while chunks:
            if (left := self._settle_chunk(state, items, chunks.popleft(), stop)) is not None:
                return self._stopped(left, chunks)
        return []

    def _stopped(self, left: list[tuple[str, bytes]], chunks: deque[_Chunk]
                 ) -> list[tuple[str, bytes]]:
        # The worker answers in order: verdicts nobody collects would answer the next chunk.
        for chunk in chunks:
            if chunk.sent:
                self.verifier.collect()
        return left

    def _signers(self, state: RoundState, decoded: list[_Decoded]
                 ) -> tuple[list[tuple[int, Ed25519PublicKey]], list[bytes]]:
        """(position, enrolled key) of the updates the worker is to verify, and their
        records: those with an enrolled key and a signature of the right size (the rest
        are rejected, or verified, inline). One on another agent's topic is verified
        too, in vain: hold rejects it (wrong-topic) before it looks at the verdict."""
        keys, records = [], []
        for i, msg in enumerate(decoded):
            if not isinstance(msg, UpdateMessage) or len(msg.signature) != SIG \
                    or len(msg.signed_hash) != HASH:
                continue
            if (key := state.allow_list.get(msg.agent_id)) is not None:
                keys.append((i, key))
                records.append(record(raw_key(key), msg.signed_hash, msg.signature))
        return keys, records

    def _settle_chunk(self, state: RoundState, items: Sequence[tuple[str, bytes]],
                      chunk: _Chunk, stop: Callable[[], bool] | None
                      ) -> list[tuple[str, bytes]] | None:
        """Settle one chunk in order; the messages after ``stop`` said so, else None."""
        verdicts = self.verifier.collect() if chunk.sent else None
        # Only a genuine verdict spares an inline verification; a 0 (forged, another
        # key) is verified again inline, for the very rejection handle gives it.
        verified = {} if verdicts is None else {
            i: key for (i, key), ok in zip(chunk.keys, verdicts, strict=True) if ok == 1}
        for i, msg in enumerate(chunk.decoded):
            topic, payload = items[chunk.start + i]
            self._settle(state, topic, payload, msg, verified.get(i))
            if self.due():
                self.flush(state)
            if stop is not None and stop():
                return list(items[chunk.start + i + 1:])
        return None

    def close(self) -> None:
        """Stop the signature worker, if one runs."""
        self.verifier.close()

    def _decode(self, topic: str, payload: bytes) -> _Decoded:
        """The update or partial sum in ``payload`` (no round state involved), its
        ProtocolError, or None for a message that is not an update."""
        agent = self.topics.agent_of(topic, "update")
        if agent is None or agent in self.quarantined:
            return None
        try:
            return decode_partial(payload, self.public_key) if is_partial(payload) \
                else decode_update(payload, self.public_key)
        except ProtocolError as exc:
            return exc

    def _settle(self, state: RoundState | None, topic: str, payload: bytes, decoded: _Decoded,
                verified_by: Ed25519PublicKey | None = None) -> None:
        topics = self.topics
        if (agent := topics.agent_of(topic, "status")) is not None:
            self._on_status(agent, topic, payload, state)
            return
        if (agent := topics.agent_of(topic, "update")) is None:
            # Our own pubkey and round go to the announcer, never here.
            log.warning("ignoring message on unexpected topic %s", topic)
            return
        if agent in self.quarantined:
            rounds = ", ".join(map(str, self.quarantined[agent])) or "before a restart"
            log.warning("rejected update from %s: quarantined as the culprit of rounds %s",
                        agent, rounds)
            if state is not None:
                state.reject("quarantined")
            return
        if decoded is None:  # not decoded: quarantined then (a quarantine is never lifted)
            return
        if isinstance(decoded, ProtocolError):
            exc = decoded
            log.warning("rejected payload on %s: %s", topic, exc)
            if state is not None:
                state.reject("key-mismatch" if isinstance(exc, KeyMismatchError) else "malformed")
                if isinstance(exc, KeyMismatchError) and self.notifier is not None:
                    self.notifier.key_mismatch(state, agent, payload, str(exc))
            return
        update = decoded
        if state is None:
            log.info("dropping update from %s for round %d: no round is open", agent,
                     update.round_id)
            return
        try:
            state.hold(update, agent, verified_by)
        except Redelivered:
            log.debug("redelivery of %s's update ignored", agent)
            return
        except Rejected as exc:
            log.warning("rejected update from %s: %s", agent, exc)
            if self.notifier is not None:
                self.notifier.rejected(state, agent, exc)
            return
        self.batch.add(agent, payload)
        if len(self.batch) >= self.batch.max_updates:
            self.flush(state)

    def due(self) -> bool:
        """The held batch is full or its oldest update waited long enough."""
        return self.batch.due()

    def flush(self, state: RoundState | None) -> None:
        """Commit the held batch in one transaction, then count it; if it cannot be
        made durable, none of it counts (each is rejected "not-persisted", and its
        agent's re-send on the next announcement is judged anew)."""
        if not self.batch:
            return
        batch = self.batch.take()
        if state is None:  # cannot happen: a round never closes with a batch held
            log.error("%d held updates had no open round; dropped uncounted", len(batch))
            return
        try:
            self.checkpoints.save_updates(batch)
        except OSError as exc:
            state.drop_held("not-persisted")
            log.error("round %d: %d accepted updates not counted: cannot persist them: %s",
                      state.round_id, len(batch), exc)
            if self.notifier is not None:
                for agent, _ in batch:
                    self.notifier.rejected(state, agent, Rejected(
                        f"cannot persist: {exc}", kind="not-persisted"))
            return
        members = state.count_held()
        self.batches += 1
        for agent, payload in batch:
            state.update_bytes += len(payload)
            state.payloads[agent] = payload
            devices = state.members[agent]
            if devices != (agent,):
                log.info("accepted relay %s's partial sum of %d devices (%d devices counted)",
                         agent, len(devices), len(state.accepted))
        log.debug("round %d: committed %d updates in one transaction (%d/%d counted)",
                  state.round_id, len(members), len(state.accepted), len(state.expected))

    def _on_status(self, agent: str, topic: str, payload: bytes,
                   state: RoundState | None) -> None:
        try:
            status = StatusMessage.from_bytes(payload)
        except ProtocolError as exc:
            # Once per device at WARNING: a broken or hostile device repeats it every few
            # seconds, and the log must stay readable (later ones at DEBUG).
            level = logging.DEBUG if agent in self._bad_status else logging.WARNING
            self._bad_status.add(agent)
            log.log(level, "ignoring bad status on %s: %s", topic, exc)
            return
        if status.agent_id == agent:
            if self.online.get(agent) != (status.state == "online"):
                log.info("agent %s is %s", agent, status.state)
            self.online[agent] = status.state == "online" and agent not in self.quarantined
            self.ready[agent] = status.ready_for if self.online[agent] else ""
            if status.holds is not None and self.online[agent] and self.on_ask is not None:
                self.on_ask(status.holds)
            skip = status.skipped
            if skip is not None and state is not None and state.skip(agent, skip) \
                    and self.on_skip is not None:
                self.on_skip(state.round_id, agent, skip)
