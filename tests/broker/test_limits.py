"""The embedded broker's pure bookkeeping: failed-login limiter, pending connections, keys."""

from __future__ import annotations

import pytest

from fedmq.broker.config import BrokerSettings
from fedmq.broker.limits import ConnectionLimits, FailedLogins, PendingConnections, session_key
from fedmq.protocol.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_logins_block_only_their_source_and_only_within_the_window():
    clock = Clock()
    limiter = FailedLogins(max_failures=5, window=60.0, clock=clock)
    for _ in range(4):
        limiter.failed("10.0.0.9")
    assert not limiter.blocked("10.0.0.9")  # 4 failures: a typo or two is fine
    limiter.failed("10.0.0.9")
    assert limiter.blocked("10.0.0.9")
    assert not limiter.blocked("10.0.0.7")  # another device is never affected
    clock.now += 59.0
    assert limiter.blocked("10.0.0.9")
    clock.now += 1.5  # the first failures age out of the window
    assert not limiter.blocked("10.0.0.9")


def test_failures_spread_over_time_never_block():
    clock = Clock()
    limiter = FailedLogins(max_failures=3, window=10.0, clock=clock)
    for _ in range(20):
        limiter.failed("a")
        clock.now += 5.0  # at most 2 in any 10 s
        assert not limiter.blocked("a")


def test_pending_connections_evict_the_oldest_idle_one():
    pending = PendingConnections(max_pending=4, max_per_source=2)
    assert pending.admit("a1", "A") == [] and pending.admit("a2", "A") == []
    assert pending.admit("a3", "A") == ["a1"]  # per source: A's oldest goes, not B's
    assert pending.admit("b1", "B") == [] and pending.admit("c1", "C") == []
    assert len(pending) == 4
    assert pending.admit("d1", "D") == ["a2"]  # in all: the oldest of everyone
    pending.release("a3")
    pending.release("a3")  # releasing twice (evicted, then its CONNECT failed) is harmless
    assert pending.admit("a4", "A") == [] and len(pending) == 4


def test_session_keys_separate_users_and_anonymous_clients():
    assert session_key("dev-b", "fedmq-aggregator") != session_key("aggregator",
                                                                   "fedmq-aggregator")
    assert session_key(None, "fedmq-aggregator") != session_key("aggregator",
                                                                "fedmq-aggregator")
    # No choice of names makes one user's key another's.
    assert session_key("a:b", "c") != session_key("a", "b:c")
    assert session_key(None, session_key("x", "y")) != session_key("x", "y")


@pytest.mark.parametrize(("kw", "match"), [
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"connect_timeout": "soon"}, "connect_timeout"),
    ({"connect_timeout": True}, "connect_timeout"),
    ({"max_connections": -1}, "max_connections"),
    ({"max_connections": "500"}, "max_connections"),
])
def test_connection_settings_are_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        BrokerSettings(**kw)


def test_limits_follow_the_settings(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("dev-a:x\n")
    assert not BrokerSettings().limits().bind_client_id  # demo: anonymous ids as sent
    limits = BrokerSettings(password_file=str(pw), connect_timeout=2.5).limits()
    assert limits.bind_client_id and limits.connect_timeout == 2.5
    with pytest.raises(ConfigError, match="max_filters_per_subscribe"):
        ConnectionLimits(max_payload_bytes=65536, max_filters_per_subscribe=0)
