"""Inbound messages of the aggregator: agent status, and updates offered to the open round.

Every payload from the broker is untrusted: it is parsed, checked and either
held for its batch's commit or logged with its reason; nothing here can raise
into the round loop. A held update counts once its batch is durable (``flush``,
aggregator.commit), never before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedmq.aggregator.checkpoint import Checkpoints
from fedmq.aggregator.commit import Batch
from fedmq.aggregator.config import Limits
from fedmq.aggregator.notices import Notifier
from fedmq.aggregator.rounds import Redelivered, Rejected, RoundState
from fedmq.protocol.crypto.paillier import PaillierPublicKey
from fedmq.protocol.errors import KeyMismatchError, ProtocolError
from fedmq.protocol.health import Skip
from fedmq.protocol.holdings import Holdings
from fedmq.protocol.messages import StatusMessage
from fedmq.protocol.partial import decode_partial, is_partial
from fedmq.protocol.topics import Topics
from fedmq.protocol.wire import decode_update

log = logging.getLogger("fedmq.aggregator.service")


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
                 limits: Limits | None = None) -> None:
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
        self.quarantined: dict[str, tuple[int, ...]] = {}  # culprit -> rounds it voided

    def quarantine(self, agent: str, rounds: tuple[int, ...]) -> None:
        """Reject ``agent``'s updates for the rest of the run; no round waits for it."""
        self.quarantined[agent] = rounds
        self.online[agent] = False

    def handle(self, state: RoundState | None, topic: str, payload: bytes) -> None:
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
        try:
            update = decode_partial(payload, self.public_key) if is_partial(payload) \
                else decode_update(payload, self.public_key)
        except ProtocolError as exc:
            log.warning("rejected payload on %s: %s", topic, exc)
            if state is not None:
                state.reject("key-mismatch" if isinstance(exc, KeyMismatchError) else "malformed")
                if isinstance(exc, KeyMismatchError) and self.notifier is not None:
                    self.notifier.key_mismatch(state, agent, payload, str(exc))
            return
        if state is None:
            log.info("dropping update from %s for round %d: no round is open", agent,
                     update.round_id)
            return
        try:
            state.hold(update, agent)
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
            if status.holds is not None and self.online[agent] and self.on_ask is not None:
                self.on_ask(status.holds)
            skip = status.skipped
            if skip is not None and state is not None and state.skip(agent, skip) \
                    and self.on_skip is not None:
                self.on_skip(state.round_id, agent, skip)
