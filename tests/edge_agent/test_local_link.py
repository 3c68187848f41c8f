from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_support import Probe, running_mosquitto
from support import wait_until

from fedmq.broker.embedded import free_port
from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.local_link import Delivery, LocalLink
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.transport import MqttSettings

BASE = "[agent]\nid='pi-1'\n[data]\npath='d.csv'\nfeatures=['a']\nlabel='y'\n"


def load(tmp_path: Path, text: str) -> AgentConfig:
    path = tmp_path / "a.toml"
    path.write_text(text)
    return AgentConfig.from_file(path)


def test_local_table_is_optional_and_separate_from_mqtt(tmp_path):
    cfg = load(tmp_path, BASE)
    assert cfg.local is None and cfg.local_client_id == "pi-1-local"
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "pw").chmod(0o600)
    cfg = load(tmp_path, BASE + "[mqtt]\nhost='gw'\nport=8883\n[local]\nport=1884\n"
               "username='reader'\npassword_file='pw'\nclient_id='pi-1-sensors'\n")
    assert cfg.local is not None
    assert (cfg.local.host, cfg.local.port, cfg.local.username) == ("127.0.0.1", 1884, "reader")
    assert cfg.local.password == "secret" and cfg.local_client_id == "pi-1-sensors"
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.username) == ("gw", 8883, None)


def test_local_table_errors_name_local(tmp_path):
    with pytest.raises(ConfigError, match=r"\[local\] password_file"):
        load(tmp_path, BASE + "[local]\npassword_file='missing'\n")
    with pytest.raises(ConfigError, match="local"):
        load(tmp_path, BASE + "[local]\nport=0\n")


def test_ca_file_implies_tls(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    cfg = load(tmp_path, BASE + "[local]\nca_file='ca.pem'\n")
    assert cfg.local is not None and cfg.local.tls and cfg.local.ca_file


def test_subscribe_publish_and_manual_ack(broker_port):
    got: list[Delivery] = []
    held: list[Delivery] = []
    link = LocalLink(MqttSettings(port=broker_port), client_id="dev-local")
    link.subscribe("sensors/+/state", got.append)
    link.subscribe("held/#", held.append, manual_ack=True)
    link.connect()
    try:
        link.subscribe("late/topic", got.append)  # after connecting: subscribed at once
        probe = Probe(broker_port, "pub")
        assert probe.connect()
        assert probe.subscribe("out/#")
        for topic in ("sensors/a/state", "late/topic", "other/x"):
            probe.client.publish(topic, b"1", qos=1).wait_for_publish(5)
        wait_until(lambda: len(got) == 2, "two routed messages")
        assert [d.topic for d in got] == ["sensors/a/state", "late/topic"]
        probe.client.publish("held/1", b"kept", qos=1).wait_for_publish(5)
        wait_until(lambda: held, "the held message")
        held[0].ack()
        held[0].ack()  # idempotent
        assert link.publish("out/p", b"{}", retain=False, qos=1, wait=True)
        assert probe.wait(lambda: ("out/p", b"{}") in probe.received)
    finally:
        link.close()


@pytest.fixture
def mosquitto_port(tmp_path: Path) -> Iterator[int]:
    """A device's plain local Mosquitto (anonymous, loopback). amqtt cannot serve here: it
    discards an unacknowledged QoS 1 message when its subscriber disconnects."""
    port = free_port()
    conf = tmp_path / "local.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    with running_mosquitto(conf, port, tmp_path / "mosquitto.log"):
        yield port


def test_unacked_message_is_redelivered_after_reconnect(mosquitto_port):
    """The promise the stream source builds on: a message never acked comes back."""
    broker_port = mosquitto_port
    held: list[Delivery] = []
    settings = MqttSettings(port=broker_port)
    link = LocalLink(settings, client_id="dev-redeliver")
    link.subscribe("held/#", held.append, manual_ack=True)
    link.connect()
    probe = Probe(broker_port, "pub2")
    assert probe.connect()
    probe.client.publish("held/1", b"r1", qos=1).wait_for_publish(5)
    wait_until(lambda: held, "first delivery")
    link.kill()  # a crash: no ack was sent
    again: list[Delivery] = []
    link2 = LocalLink(settings, client_id="dev-redeliver")
    link2.subscribe("held/#", again.append, manual_ack=True)
    link2.connect()
    try:
        wait_until(lambda: again, "redelivery of the unacknowledged message")
        assert again[0].payload == b"r1"
        again[0].ack()
    finally:
        link2.close()


def test_connect_retrying_stops_when_told():
    link = LocalLink(MqttSettings(port=free_port(), connect_timeout=0.5),
                     client_id="nobody")
    stop = threading.Event()
    stop.set()
    assert link.connect_retrying(stop) is False
