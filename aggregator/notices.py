"""Tell a device why its update was rejected, and take it in once it is enrolled.

Two jobs, both about updates rejected for a reason the device (or its operator)
can fix:

- ``Notifier`` publishes a signed ``fedmq.notice/1`` on the agent's own notice
  topic: at most one per agent, round and code, and at most ``MAX_NOTICES`` per
  round in all, so a sender flooding updates (or inventing agent ids on an
  unauthenticated broker) cannot make the aggregator flood, and its memory stays
  bounded.
- It remembers, for the open round, the agents rejected as not enrolled or
  enrolled with another key. Without that, enrolling such a device mid-run did
  nothing: the round held the allow-list it opened with, and nobody asked the
  device for its update again, so a fleet of unenrolled devices failed its
  first round after every deadline extension. ``newly_enrolled`` reports the ones
  the allow-list now holds with the key they signed with; the service then
  swaps the round's allow-list and announces the round again, which makes every
  agent re-send its signed update (counted once).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping

from fedmq.aggregator.rounds import Rejected, RoundState
from fedmq.protocol.crypto.signing import (
    SIGNATURE_BYTES,
    UPDATE_DOMAIN,
    Ed25519PublicKey,
    Signer,
    public_key_hex,
    verify,
)
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.notices import KEY_MISMATCH, NOT_ENROLLED, OTHER_KEY, NoticeMessage
from fedmq.protocol.topics import Topics

log = logging.getLogger("fedmq.aggregator.service")

MAX_NOTICES = 4096  # per round; beyond it the round sends none (and says so once)
RECHECK_SECONDS = 2.0  # how often the allow-list is re-read while rejected agents wait
_ENROLLABLE = (NOT_ENROLLED, OTHER_KEY)

Publish = Callable[[str, bytes], None]


def signed_by(payload: bytes, key: Ed25519PublicKey) -> bool:
    """True if ``payload`` is an update (of any Paillier key) that ``key`` signed.

    For updates ``decode_update`` refuses before their signature is checked (made
    for another Paillier key): a notice goes out only for the device's own update.
    """
    if len(payload) <= SIGNATURE_BYTES:
        return False
    body, signature = payload[:-SIGNATURE_BYTES], payload[-SIGNATURE_BYTES:]
    try:
        verify(key, UPDATE_DOMAIN, hashlib.sha256(body).digest(), signature)
    except ProtocolError:
        return False
    return True


class Notifier:
    """Signed notices to agents, deduplicated per round; the open round's waiting agents."""

    def __init__(self, topics: Topics, signer: Signer, publish: Publish, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._topics, self._signer, self._publish, self._clock = topics, signer, publish, clock
        self._round: tuple[str, int] | None = None
        self._sent: set[tuple[str, str]] = set()
        self._full_logged = False
        self.waiting: dict[str, str] = {}  # agent -> the key its rejected update was signed with
        self._checked = 0.0

    def _for_round(self, state: RoundState) -> None:
        if self._round != (state.run_id, state.round_id):
            self._round = (state.run_id, state.round_id)
            self._sent.clear()
            self.waiting.clear()
            self._full_logged = False

    def rejected(self, state: RoundState, agent: str, exc: Rejected) -> None:
        """An update of the open round was rejected: notify the agent if it can act on it."""
        if exc.code is None:
            return
        self._for_round(state)
        if exc.code in _ENROLLABLE and (agent in self.waiting or len(self.waiting) < MAX_NOTICES):
            self.waiting[agent] = exc.update_key
        self.notify(state, agent, exc.code, str(exc), exc.update_key)

    def key_mismatch(self, state: RoundState, agent: str, payload: bytes, reason: str) -> None:
        """An update made for another Paillier key: notify only if the agent really sent it."""
        key = state.allow_list.get(agent)
        if key is not None and signed_by(payload, key):
            self._for_round(state)
            self.notify(state, agent, KEY_MISMATCH, reason, public_key_hex(key))

    def notify(self, state: RoundState, agent: str, code: str, text: str,
               update_key: str = "") -> bool:
        """Publish one notice unless this agent already got one with this code this round."""
        self._for_round(state)
        if (agent, code) in self._sent:
            return False
        if len(self._sent) >= MAX_NOTICES:
            if not self._full_logged:
                self._full_logged = True
                log.warning("round %d: %d notices sent, no more this round", state.round_id,
                            MAX_NOTICES)
            return False
        self._sent.add((agent, code))
        try:
            notice = NoticeMessage(fleet=self._topics.fleet, agent_id=agent, run_id=state.run_id,
                                   round_id=state.round_id, code=code, text=text[:500],
                                   update_key=update_key)
        except ProtocolError as exc:  # a name the topic parser let through but we cannot sign
            log.debug("no notice for %s: %s", agent, exc)
            return False
        self._publish(self._topics.notice(agent), notice.to_bytes(self._signer))
        log.info("notice %s sent to %s for round %d", code, agent, state.round_id)
        return True

    def newly_enrolled(self, state: RoundState,
                       read_allow_list: Callable[[], Mapping[str, Ed25519PublicKey]]
                       ) -> list[str]:
        """Waiting agents the allow-list now holds with the key they signed with.

        Re-reads the allow-list at most every ``RECHECK_SECONDS`` and only while
        some rejected agent waits; on a hit the round takes the new list.
        """
        self._for_round(state)
        now = self._clock()
        if not self.waiting or now - self._checked < RECHECK_SECONDS:
            return []
        self._checked = now
        fresh = read_allow_list()
        taken = []
        for agent, signed_with in self.waiting.items():
            key = fresh.get(agent)
            if key is None:
                continue
            hex_key = public_key_hex(key)
            old = state.allow_list.get(agent)
            if (hex_key == signed_with if signed_with
                    else old is None or public_key_hex(old) != hex_key):
                taken.append(agent)
        if taken:
            state.allow_list = fresh
            for agent in taken:
                del self.waiting[agent]
        return sorted(taken)
