from __future__ import annotations

import time

import pytest

from broker.cli import add_user, load_settings
from broker.config import BrokerSettings
from broker.embedded import BrokerStartError, EmbeddedBroker, free_port
from protocol.errors import ConfigError
from runtime.transport import BrokerUnavailable, MqttLink, MqttSettings


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
    from broker.amqtt_broker import _SnapshotDict

    table = _SnapshotDict({"fedmq/demo/round": []})
    for topic in table:
        table[topic + "/new"] = []  # a plain dict raises "changed size during iteration"
    assert len(table) == 2
