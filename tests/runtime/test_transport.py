"""The Inbox (bounded, drops logged at a limited rate) and the first connection (retried)."""

from __future__ import annotations

import logging
import random
import re
import threading

import pytest
from support import agent_config, local_data, run_in_thread, wait_until

from fedmq.broker.cli import add_user
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.runtime.droplog import MAX_KEYS, DropLog
from fedmq.runtime.transport import Backoff, BrokerUnavailable, Inbox, MqttLink, MqttSettings


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


def test_drops_keyed_by_reason_name_the_reason_not_a_sender(caplog):
    drops = DropLog(logging.getLogger("t"), about="({})")  # as the sensor stream keys them
    with caplog.at_level(logging.WARNING):
        drops.drop("not-json", "z2m/wine: expected value")
    assert caplog.records[0].getMessage() == \
        "dropped a message (not-json): z2m/wine: expected value"


def test_senders_inventing_keys_cannot_grow_the_table(caplog):
    drops = DropLog(logging.getLogger("t"), clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING):
        for i in range(MAX_KEYS + 50):
            drops.drop(f"dev-{i}", "x")
    assert len(drops._last) <= MAX_KEYS + 1
    assert drops.total == MAX_KEYS + 50


# --- the first connection: retried with backoff, each failure named -----------------------

def test_backoff_doubles_from_one_second_to_sixty_with_twenty_percent_jitter():
    rng = random.Random(7)
    backoff = Backoff()
    for attempt, base in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert base * 0.8 <= min(delays) and max(delays) <= base * 1.2
        assert max(delays) - min(delays) > base * 0.2  # really jittered
    assert 48 <= backoff.delay(1, rng, slow=True) <= 72


@pytest.mark.slow
def test_agent_and_aggregator_started_before_their_broker_join_once_it_is_up(
        caplog, make_aggregator):
    port = free_port()  # nothing listens yet: the gateway is still booting
    refused = f"broker 127.0.0.1:{port} refused the connection (nothing listening); retry 2 in"
    agent = EdgeAgent(agent_config(port, "agent-early"), data=local_data(0, 40))
    aggregator = make_aggregator(port, rounds=1, quorum=1, min_agents=1)
    with caplog.at_level(logging.INFO):
        agent_thread, agent_out = run_in_thread(agent.run)
        thread, out = run_in_thread(aggregator.run)
        try:
            wait_until(lambda: caplog.text.count(refused) == 2, "both first attempts to fail")
            assert agent_thread.is_alive() and thread.is_alive()  # the old roles exited here
            with EmbeddedBroker(BrokerSettings(port=port)):
                thread.join(30)
                assert not thread.is_alive() and "error" not in out, out
        finally:
            aggregator.stop()
            agent.stop()
            agent_thread.join(10)
    assert aggregator.results[0].reported == ("agent-early",)
    assert "error" not in agent_out, agent_out


def test_a_wrong_password_is_reported_as_such_and_retried_slowly(tmp_path, caplog):
    passwords = tmp_path / "passwords.txt"
    add_user(passwords, "pi-1", "right password")
    port = free_port()
    settings = MqttSettings(port=port, username="pi-1", password="wrong", connect_timeout=5)
    link = MqttLink(settings, client_id="pi-1", on_message=lambda t, p: None,
                    backoff=Backoff(first=0.01, slow=0.5))
    stop = threading.Event()
    with EmbeddedBroker(BrokerSettings(port=port, password_file=str(passwords),
                                       allow_anonymous=False)):
        thread, out = run_in_thread(lambda: link.connect_retrying(stop))
        with caplog.at_level(logging.INFO):
            wait_until(lambda: "retry 3 in" in caplog.text, "two refused logins", timeout=20)
        stop.set()
        thread.join(10)
    assert out == {"result": False}
    refused = [r for r in caplog.records if "refused the login" in r.getMessage()]
    assert refused and all(r.levelno == logging.ERROR for r in refused)
    first = refused[0].getMessage()
    assert f"broker 127.0.0.1:{port} refused the login of user 'pi-1'" in first
    assert "check [mqtt] username and password" in first
    # slowly: the slow delay (0.5 s here, 60 s by default), not the 0.01 s of the fast one
    assert re.search(r"retry 2 in 0\.[4-6] s", first), first


def test_connect_attempts_gives_up_with_the_reason(caplog):
    port = free_port()
    link = MqttLink(MqttSettings(port=port, connect_attempts=2), client_id="x",
                    on_message=lambda t, p: None, backoff=Backoff(first=0.05))
    with pytest.raises(BrokerUnavailable, match=(
            rf"cannot reach MQTT broker 127.0.0.1:{port} after 2 attempts: broker "
            rf"127.0.0.1:{port} refused the connection \(nothing listening\)")):
        link.connect_retrying(threading.Event())


def _hang_ups(tmp_path, name: str, close) -> int:
    """Mosquitto's "disconnected due to out of memory" lines after 40 clients each publish
    a QoS 1 status and hang up (``close``) while the broker writes a stream to them."""
    from mqtt_support import running_mosquitto

    port, log = free_port(), tmp_path / f"{name}.log"
    conf = tmp_path / f"{name}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    with running_mosquitto(conf, port, log):
        links = [MqttLink(MqttSettings(port=port), client_id=f"{name}-{i}",
                          on_message=lambda _t, _p: None, subscriptions=[("x/#", 1)])
                 for i in range(40)]
        for link in links:
            link.connect()
        feed = MqttLink(MqttSettings(port=port), client_id=f"{name}-feed",
                        on_message=lambda _t, _p: None)
        feed.connect()
        for _ in range(200):  # the broker is busy writing to every client ...
            feed.publish("x/metrics", b"m" * 2000, wait=False)
        for i, link in enumerate(links):  # ... as each says "offline" and hangs up
            link.publish(f"x/status/{i}", b"offline", wait=False)
            close(link)
        feed.close()
    return log.read_text().count("disconnected due to out of memory")


def test_a_graceful_close_waits_for_the_pubacks_so_mosquitto_logs_no_out_of_memory(tmp_path):
    def hang_up(link: MqttLink) -> None:  # the close before: DISCONNECT at once
        link._client.disconnect()
        link._stop_loop()

    before = _hang_ups(tmp_path, "before", hang_up)
    assert _hang_ups(tmp_path, "after", MqttLink.close) == 0
    if before == 0:
        pytest.skip("Mosquitto showed no bogus out-of-memory disconnect this time (a race)")
