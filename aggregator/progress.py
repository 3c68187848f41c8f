"""The open round's progress for dashboards: signed, retained, at most once a second.

Only device ids and counts (``protocol.progress``): expected, reported, skipped with
their codes, updates rejected by reason, relays and their devices. Agents cannot
read the topic (broker ACL); a dashboard checks the aggregator's signature.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fedmq.aggregator.rounds import RoundState
from fedmq.protocol.crypto.signing import Signer
from fedmq.protocol.progress import ProgressMessage
from fedmq.protocol.topics import Topics
from fedmq.runtime.transport import MqttLink

log = logging.getLogger("fedmq.aggregator.service")

EVERY = 1.0  # seconds between two progress messages of one round (open and close: at once)

Publish = Callable[[str, bytes], object]


def snapshot(state: RoundState, *, rounds: int, version: int, enrolled: int, online: int,
             closed: bool = False) -> ProgressMessage:
    relays = {m: devices for m, devices in state.members.items() if devices != (m,)}
    return ProgressMessage(
        fleet=state.fleet, run_id=state.run_id, round_id=state.round_id, phase=state.phase,
        rounds=rounds, model_version=version, opened_at=state.opened_at,
        deadline=state.deadline, expected=tuple(sorted(state.expected)),
        reported=tuple(sorted(state.accepted)),
        skipped={a: s.code for a, s in sorted(state.skipped.items())},
        rejected=dict(sorted(state.rejected_by.items())), relays=relays,
        enrolled=enrolled, online=online, update_bytes=state.update_bytes, closed=closed)


class TappedLink(MqttLink):
    """An MqttLink that shows every message it publishes to ``tap`` first (never raises:
    the tap is the aggregator's own metrics view, which ignores what it cannot fold)."""

    def __init__(self, *args: Any, tap: Callable[[str, bytes], object], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._tap = tap

    def publish(self, topic: str, payload: bytes, **kw: Any) -> bool:
        self._tap(topic, payload)
        return super().publish(topic, payload, **kw)


class ProgressReporter:
    """Publishes a round's progress when it changed, throttled to one message per ``EVERY``."""

    def __init__(self, topics: Topics, signer: Signer, publish: Publish, *, rounds: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._topic, self._signer, self._publish = topics.progress, signer, publish
        self._rounds, self._clock = rounds, clock
        self._last: tuple[object, ...] | None = None
        self._sent_at = float("-inf")

    def report(self, state: RoundState, *, version: int, enrolled: int, online: int,
               closed: bool = False, force: bool = False) -> bool:
        """Publish ``state``'s progress if it changed (and a second passed, unless ``force``)."""
        now = self._clock()
        if not force and now - self._sent_at < EVERY:
            return False
        key = (state.run_id, state.round_id, state.deadline, len(state.accepted),
               len(state.skipped), state.rejected, len(state.expected), enrolled, online, closed)
        if key == self._last:
            return False
        message = snapshot(state, rounds=self._rounds, version=version, enrolled=enrolled,
                           online=online, closed=closed)
        self._publish(self._topic, message.to_bytes(self._signer))
        self._last, self._sent_at = key, now
        return True
