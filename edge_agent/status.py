"""This device's retained status on ``status/<id>``: online or offline, its software and
codecs, the round it last sat out with the reason (the gateway counts skips from it), and
when it asks for them, the key and round announcements it holds (protocol.holdings).

Published retained on every (re)connect, when a skip starts or ends, as "offline" on a
clean stop, and as an ask (protocol.holdings.Asks) a little after every (re)connect and
after a new key; the Last Will says "offline" for a device that vanished.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fedmq.edge_agent.health import RoundSkipped, skip_line
from fedmq.protocol.crypto.codec import CODEC_NAMES
from fedmq.protocol.health import Skip
from fedmq.protocol.holdings import Holdings
from fedmq.protocol.messages import RoundMessage, StatusMessage
from fedmq.runtime import __version__

Publish = Callable[..., bool]  # MqttLink.publish(topic, payload, *, retain, wait, timeout)


class DeviceStatus:
    def __init__(self, agent_id: str, topic: str, log: logging.Logger) -> None:
        self.agent_id, self.topic = agent_id, topic
        self._log = log
        self._skipped: Skip | None = None  # the round this device last sat out, and why
        # (run, code, message) skips logged: the same reason every round is said once a run.
        self._said: set[tuple[str, str, str]] = set()
        self._publish: Publish | None = None
        # The run since which this device holds the new rows a scheduled gateway asked for.
        self._ready_for = ""

    def attach(self, publish: Publish) -> None:
        self._publish = publish

    def payload(self, state: str, holds: Holdings | None = None) -> bytes:
        return StatusMessage(agent_id=self.agent_id, state=state,
                             software=f"fedmq/{__version__}", codecs=CODEC_NAMES,
                             skipped=self._skipped if state == "online" else None,
                             holds=holds,
                             ready_for=self._ready_for if state == "online" else "").to_bytes()

    def _send(self, state: str, holds: Holdings | None = None, **kw: object) -> None:
        assert self._publish is not None  # attached before the link connects
        self._publish(self.topic, self.payload(state, holds), retain=True, **kw)

    def online(self) -> None:
        """After every (re)connect, on paho's thread: queued, never waited for."""
        self._send("online", wait=False)

    def ask(self, holds: Holdings) -> None:
        """Online, holding ``holds``: the announcer sends again what this lacks."""
        self._send("online", holds, wait=False)

    def offline(self) -> None:
        self._send("offline", timeout=2)

    def sat_out(self, msg: RoundMessage, exc: RoundSkipped) -> None:
        """Sit the round out: say why in the retained status and in one log line."""
        skip = Skip.make(msg.run_id, msg.round_id, exc.code, exc.detail)
        if skip == self._skipped:
            return  # the same round announced again, failing the same way: said already
        self._skipped = skip
        self._send("online")
        line = skip_line(msg.round_id, exc.code, str(exc))
        said = (msg.run_id, exc.code, str(exc))
        if said in self._said:
            # The status names every round; the log said this reason once this run.
            self._log.debug("%s", line)
            return
        self._said.add(said)
        if exc.refusal:  # the gateway's terms, not a fault of this device
            self._log.warning("%s", line)
        else:
            self._log.error("%s", line)

    def ready(self, run_id: str) -> None:
        """Say "ready since run ``run_id``" (edge_agent.readiness); "" says nothing more."""
        if run_id != self._ready_for:
            self._ready_for = run_id
            if run_id:
                self._send("online")

    def serving(self) -> None:
        """Serving again: the status no longer names a skip."""
        if self._skipped is not None:
            self._skipped = None
            self._send("online")
