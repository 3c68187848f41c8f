"""Who takes part: the devices online now, waiting for enough of them, and each round's pick.

The aggregator's view of its fleet's presence comes from the devices' retained status and
Last Will (``aggregator.inbound``); the allow-list names who should be there. This module
turns the two into the decisions a run makes before a round opens: start now, wait, or give
up (``RoundFailed``), and which devices a round expects.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping

from fedmq.aggregator.closing import RoundFailed
from fedmq.aggregator.config import RoundPolicy

log = logging.getLogger("fedmq.aggregator.service")
WAIT_LOG_EVERY = 10.0  # seconds between two "waiting for agents" lines
NAMED_MISSING = 20  # devices named in the waiting line; the rest are counted


class Attendance:
    """Presence of the enrolled devices, read from ``online`` (agent id -> online now)."""

    def __init__(self, policy: RoundPolicy, online: Mapping[str, bool],
                 enrolled: Callable[[], Mapping[str, object]], *, rng: random.Random,
                 relays: Callable[[], Mapping[str, object]] = dict) -> None:
        self._policy = policy
        self._online = online  # updated in place by the inbound handler
        self._enrolled = enrolled  # re-read every time: devices enrol during a run
        self._relays = relays  # enrolled relays: each stands for its subtree
        self._rng = rng  # a SystemRandom: who is sampled must not be predictable
        self._told: set[str] = set()  # unenrolled ids already logged

    def online(self) -> frozenset[str]:
        """The enrolled agents and relays online now. Any login may say "online" on its
        status topic; an id that is neither must not delay rounds nor count toward
        ``min_agents`` (its updates would be refused anyway)."""
        enrolled, relays = self._enrolled(), self._relays()
        up = {a for a, is_up in self._online.items() if is_up}
        counted = frozenset(a for a in up if a in enrolled or a in relays)
        for agent in sorted(up - counted - self._told):
            self._told.add(agent)
            log.warning("%s says it is online but is neither an enrolled agent nor an "
                        "enrolled relay: not counted, no round waits for it", agent)
        return counted

    def not_online(self) -> str:
        """'; enrolled, not online: a, b' for the waiting line (names from the allow-list)."""
        missing = sorted(set(self._enrolled()) - self.online())
        if not missing:
            return ""
        more = f" and {len(missing) - NAMED_MISSING} more" if len(missing) > NAMED_MISSING \
            else ""
        return f"; enrolled, not online: {', '.join(missing[:NAMED_MISSING])}{more}"

    def never_online(self) -> set[str]:
        """Enrolled devices that this aggregator has not seen online at all."""
        return set(self._enrolled()) - set(self._online)

    def wait(self, stop: threading.Event, drain: Callable[[float], None]) -> None:
        """Until ``min_agents`` are online; after ``start_timeout`` start with the quorum or
        fail. ``drain`` handles incoming messages (statuses among them) for up to its
        argument's seconds."""
        policy = self._policy
        deadline = time.monotonic() + policy.start_timeout
        last_log = 0.0
        # One allow-list read per pass: the file is re-read at every call.
        while (online := len(self.online())) < policy.min_agents and not stop.is_set():
            if time.monotonic() > deadline:
                if online >= policy.quorum:
                    log.warning("only %d of %d agents online after %.0f s; starting with "
                                "quorum%s", online, policy.min_agents,
                                policy.start_timeout, self.not_online())
                    return
                raise RoundFailed(f"only {online} agents online after "
                                  f"{policy.start_timeout:g} s, quorum is {policy.quorum}")
            if time.monotonic() - last_log > WAIT_LOG_EVERY:
                log.info("waiting for agents: %d of %d online%s", online,
                         policy.min_agents, self.not_online())
                last_log = time.monotonic()
            drain(0.1)

    def select(self, phase: str) -> tuple[frozenset[str], bool]:
        """The devices a new round expects, and whether they are a sample of those online.

        Statistics and evaluation rounds want every online device and all its rows; a
        training round samples when ``[rounds]`` asks for it.
        """
        online = sorted(self.online())
        if phase != "training" or not self._policy.samples:
            return frozenset(online), False
        return frozenset(self._rng.sample(online, self._policy.sample_size(len(online)))), True

    def quorum(self, phase: str) -> int:
        """The final evaluation only measures: it closes at its deadline with what came,
        but with at least two devices (one device's metric is never decrypted), unless the
        fleet's quorum is 1 anyway."""
        quorum = self._policy.quorum
        return min(quorum, 2) if phase == "evaluation" else quorum
