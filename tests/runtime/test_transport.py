"""The Inbox: bounded in messages and in bytes, drops counted and logged at a limited rate."""

from __future__ import annotations

import logging

import pytest

from runtime.droplog import MAX_KEYS, DropLog
from runtime.transport import Inbox


def test_inbox_bounds_payload_bytes_not_only_messages(caplog):
    inbox = Inbox(maxsize=100, max_bytes=10_000)
    for _ in range(3):
        inbox.put("t/a", bytes(4_000))  # the third would make 12,000 bytes
    assert inbox.queued_bytes == 8_000
    assert inbox.drops.total == 1
    assert "inbox holds 8000 of 10000 bytes" in caplog.text
    assert inbox.get(0) == ("t/a", bytes(4_000))
    assert inbox.queued_bytes == 4_000
    inbox.put("t/a", bytes(4_000))  # room again once the role took one
    assert inbox.queued_bytes == 8_000 and inbox.drops.total == 1


def test_inbox_bounds_messages():
    inbox = Inbox(maxsize=2)
    for i in range(5):
        inbox.put("t", bytes([i]))
    assert inbox.drops.total == 3
    assert [inbox.get(0), inbox.get(0), inbox.get(0)] == [("t", b"\x00"), ("t", b"\x01"), None]


def test_inbox_rejects_a_useless_size():
    with pytest.raises(ValueError):
        Inbox(maxsize=0)
    with pytest.raises(ValueError):
        Inbox(maxsize=1, max_bytes=0)


def test_a_flood_of_drops_logs_once_per_interval_per_key_with_the_count(caplog):
    now = [0.0]
    drops = DropLog(logging.getLogger("t"), interval=5.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for i in range(1000):
            now[0] = i * 0.01  # 1,000 drops in 10 s from one sender
            drops.drop("dev-x", "too big")
        drops.drop("dev-y", "too big")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines  # dev-x at 0 s and 5 s, dev-y once
    assert lines[0] == "dropped a message from dev-x: too big"
    assert lines[1] == "dropped 500 messages from dev-x in 5 s, latest: too big"
    assert drops.total == 1001


def test_senders_inventing_keys_cannot_grow_the_table(caplog):
    drops = DropLog(logging.getLogger("t"), clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING):
        for i in range(MAX_KEYS + 50):
            drops.drop(f"dev-{i}", "x")
    assert len(drops._last) <= MAX_KEYS + 1
    assert drops.total == MAX_KEYS + 50
