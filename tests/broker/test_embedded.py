from __future__ import annotations

import io
import logging
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from mqtt_support import Probe
from support import wait_until

from fedmq.broker import amqtt_logging
from fedmq.broker.amqtt_logging import OneLineHandler
from fedmq.broker.cli import add_user, load_settings
from fedmq.broker.config import BrokerSettings
from fedmq.broker.embedded import BrokerStartError, EmbeddedBroker, free_port, wait_listening
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.transport import BrokerUnavailable, MqttLink, MqttSettings


def link(port: int, name: str, **kw) -> MqttLink:
    got: list[tuple[str, bytes]] = []
    lk = MqttLink(MqttSettings(port=port, connect_timeout=5, **kw), client_id=name,
                  on_message=lambda t, p: got.append((t, p)), subscriptions=[("t/#", 1)])
    lk.received = got  # type: ignore[attr-defined]
    return lk


def test_publish_subscribe_and_retained(broker_port):
    a = link(broker_port, "a")
    a.connect()
    assert a.publish("t/keep", b"v1", retain=True)
    b = link(broker_port, "b")
    b.connect()
    end = time.monotonic() + 5
    while not b.received and time.monotonic() < end:
        time.sleep(0.02)
    assert ("t/keep", b"v1") in b.received
    a.close()
    b.close()


def test_password_file_lets_in_only_known_users(tmp_path):
    pw = tmp_path / "passwords.txt"
    add_user(pw, "pi-001", "correct horse")
    add_user(pw, "pi-002", "battery staple")
    assert pw.read_text().count("$argon2") == 2
    port = free_port()
    settings = BrokerSettings(port=port, password_file=str(pw), allow_anonymous=False)
    with EmbeddedBroker(settings):
        ok = link(port, "ok", username="pi-001", password="correct horse")
        ok.connect()
        ok.close()
        for kw in ({"username": "pi-001", "password": "wrong password"}, {}):
            with pytest.raises(BrokerUnavailable):
                link(port, "bad", **kw).connect()


def test_port_in_use_is_a_clear_error(broker_port):
    with pytest.raises(BrokerStartError, match="cannot start broker"):
        EmbeddedBroker(BrokerSettings(port=broker_port)).start()


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="password_file"):
        BrokerSettings(allow_anonymous=False)
    with pytest.raises(ConfigError, match="does not exist"):
        BrokerSettings(password_file=str(tmp_path / "missing"))
    cfg = tmp_path / "b.toml"
    cfg.write_text("[broker]\nport = 1884\nbogus = 1\n")
    with pytest.raises(ConfigError, match="unknown"):
        load_settings(cfg)


def test_example_configs_load():
    assert load_settings("configs/broker.toml").host == "127.0.0.1"


def test_short_passwords_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="8 characters"):
        add_user(tmp_path / "p", "pi", "short")


def test_subscription_table_survives_subscribes_during_a_connect():
    """amqtt walks this table across awaits on CONNECT while others subscribe."""
    from fedmq.broker.amqtt_broker import _SnapshotDict

    table = _SnapshotDict({"fedmq/demo/round": []})
    for topic in table:
        table[topic + "/new"] = []  # a plain dict raises "changed size during iteration"
    assert len(table) == 2


def _mqtt_str(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


def _never_acking_subscriber(port: int, topic: str) -> socket.socket:
    """A raw MQTT 3.1.1 client subscribed at QoS 1 that never answers a PUBLISH."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = _mqtt_str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _mqtt_str("mute")
    s.sendall(bytes([0x10, len(body)]) + body)
    assert s.recv(4) == b"\x20\x02\x00\x00"
    body = struct.pack("!H", 1) + _mqtt_str(topic) + b"\x01"
    s.sendall(bytes([0x82, len(body)]) + body)
    assert s.recv(5)[:1] == b"\x90"
    return s


@pytest.fixture
def console(monkeypatch) -> Iterator[io.StringIO]:
    """What the console shows: a stream handler on the root logger, as the CLI sets up."""
    # The rate limit is per process: an earlier test's PUBACK timeout in the last 30 s
    # would hold this test's line back. Start from a handler that has said nothing.
    handler_state = amqtt_logging.install()
    monkeypatch.setattr(handler_state, "_last", {})
    monkeypatch.setattr(handler_state, "_held", {})
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    yield out
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.mark.slow
def test_amqtt_tracebacks_become_one_rate_limited_line(broker_port, console):
    """amqtt waits 5 s for a PUBACK, then logs the failed delivery task with its
    traceback; 100 slow agents made 1,500 lines of that before round 1."""
    mute = _never_acking_subscriber(broker_port, "t/x")
    sender = Probe(broker_port, "sender")
    assert sender.connect()
    for i in range(3):
        sender.publish("t/x", f"m{i}".encode(), qos=1)
    wait_until(lambda: "PUBACK" in console.getvalue(), "amqtt's PUBACK timeout", timeout=20)
    time.sleep(0.5)  # the other two deliveries time out together with the first
    # amqtt reports its failed delivery tasks when it broadcasts the next message.
    sender.publish("elsewhere", b"next")
    wait_until(lambda: "skipped" in console.getvalue(), "amqtt's failed delivery")
    sender.close()
    mute.close()
    lines = console.getvalue().splitlines()
    assert "Traceback" not in console.getvalue()
    assert not [ln for ln in lines if " amqtt." in ln], "amqtt's records must be re-routed"
    # Three deliveries failed; one line says so, naming the exception, not a <Task> repr.
    assert [ln for ln in lines if "skipped" in ln] == [
        "ERROR fedmq.broker.amqtt: Task failed and will be skipped: TimeoutError: Timeout waiting "
        "for PUBACK for packet ID 1"], lines
    assert [ln for ln in lines if "Timeout waiting" in ln and "skipped" not in ln] == [
        "WARNING fedmq.broker.amqtt: Timeout waiting for PUBACK for packet ID 1"], lines


def test_one_line_handler_counts_what_it_holds_back(caplog):
    now = [0.0]
    handler = OneLineHandler(interval=10, clock=lambda: now[0])
    caplog.set_level(logging.WARNING)

    def fail(packet: int) -> None:
        try:
            raise TimeoutError(f"Timeout waiting for PUBACK for packet ID {packet}")
        except TimeoutError:
            record = logging.getLogger("amqtt.broker").makeRecord(
                "amqtt.broker", logging.ERROR, __file__, 1,
                "Task failed and will be skipped: %s", ("<Task finished name='Task-9' "
                "coro=<Broker._deliver() done> exception=TimeoutError('x')>",), None)
            import sys
            record.exc_info = sys.exc_info()
            handler.handle(record)

    for packet in range(50):
        fail(packet)
    now[0] = 11.0
    fail(99)
    fail(100)
    handler.flush_held()
    got = [r.getMessage() for r in caplog.records]
    assert got == [
        "Task failed and will be skipped: TimeoutError: Timeout waiting for PUBACK for packet "
        "ID 0",
        "Task failed and will be skipped: TimeoutError: Timeout waiting for PUBACK for packet "
        "ID 99 (and 49 more like it in the last 10 s)",
        "1 more amqtt messages like: Task failed and will be skipped: TimeoutError: Timeout "
        "waiting for PUBACK for packet ID #"]
    assert handler.suppressed == 50
    assert "Traceback" not in caplog.text



def test_the_broker_drains_its_broadcast_queue_before_shutting_down():
    """At the end of a 1,000-agent simulation amqtt's shutdown dropped ~1,000 queued
    statuses ("993 messages not broadcasted"); serve() now waits for the queue (bounded)."""
    import asyncio

    from fedmq.broker.amqtt_broker import FedmqBroker

    async def scenario() -> tuple[int, int]:
        settings = BrokerSettings(port=free_port())
        broker = FedmqBroker(settings.amqtt_config(), limits=settings.limits())
        queue = broker._broadcast_queue
        for _ in range(5):
            queue.put_nowait({})
        stuck = await broker.drain(timeout=0.1)  # nobody consumes: it gives up in time

        async def broadcast_loop() -> None:
            while not queue.empty():
                await asyncio.sleep(0.01)
                queue.get_nowait()

        task = asyncio.create_task(broadcast_loop())
        left = await broker.drain(timeout=5.0)
        await task
        return stuck, left

    assert asyncio.run(scenario()) == (5, 0)


def test_wait_listening_sees_a_server_and_gives_up_when_its_process_ended() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert wait_listening(port, 5.0, lambda: True)
    t0 = time.monotonic()
    assert not wait_listening(port, 30.0, lambda: False)  # ended: no waiting out the timeout
    assert time.monotonic() - t0 < 1.0
    assert not wait_listening(free_port(), 0.3, lambda: True)  # nobody listens
