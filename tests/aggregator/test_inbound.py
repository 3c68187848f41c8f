"""The round loop's handling of statuses (aggregator.inbound)."""

from __future__ import annotations

import json
import logging

from fedmq.aggregator.checkpoint import Checkpoints
from fedmq.aggregator.inbound import Inbound
from fedmq.protocol.messages import StatusMessage
from fedmq.protocol.topics import Topics


def test_a_malformed_status_is_said_once_per_device_at_warning(keypair, tmp_path, caplog):
    """Review of issue 24: a device repeating a malformed status (a bad ``holds``) gave a
    WARNING every time, ~2 lines/s for as long as it kept sending."""
    topics = Topics("test")
    asked: list[object] = []
    inbound = Inbound(topics, keypair[0], Checkpoints(tmp_path), on_ask=asked.append)
    caplog.set_level(logging.DEBUG, "fedmq.aggregator.service")
    good = StatusMessage(agent_id="dev-1", state="online").to_bytes()
    doc = json.loads(good)
    doc["holds"] = {"key": "zz", "round": ""}  # not a 16-hex digest
    bad = json.dumps(doc).encode()
    for _ in range(5):
        inbound.handle(None, topics.status("dev-1"), bad)
    inbound.handle(None, topics.status("dev-2"), b"not json")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and "status/dev-1" in warned[0] and "holds" in warned[0]
    assert "status/dev-2" in warned[1]
    assert sum("ignoring bad status" in r.getMessage() for r in caplog.records) == 6
    assert asked == [] and inbound.online == {}
    # The same device's genuine status is still taken.
    inbound.handle(None, topics.status("dev-1"), good)
    assert inbound.online == {"dev-1": True}
