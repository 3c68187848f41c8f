"""broker.toml through its schema: one-line errors, paths relative to the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedmq.broker.cli import load_settings
from fedmq.broker.config import BrokerTable
from fedmq.broker.embedded import EmbeddedBroker, free_port
from fedmq.edge_agent.config import AgentConfig
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.transport import MqttLink


@pytest.mark.parametrize("line,expected", [
    ("port = \"8883\"", '[broker] port: expected int, got str ("8883")'),
    ("allow_anonymous = \"no\"", '[broker] allow_anonymous: expected bool, got str ("no")'),
    ("acl = 1", "[broker] acl: expected bool, got int (1)"),
    ("max_connections = 1.5", "[broker] max_connections: expected int, got float (1.5)"),
    ("connect_timeout = 0", "[broker] connect_timeout: expected float > 0.0, got 0"),
    ("aggregator_users = \"aggregator\"",
     '[broker] aggregator_users: expected array, got str ("aggregator")'),
    ("max_payload_bytes = 1000", "[broker] max_payload_bytes: expected int >= 65536, got 1000"),
    ("tls_cert_file = 5", "[broker] tls_cert_file: expected str, got int (5)"),
    ("max_pending_per_source = 0", "[broker] max_pending_per_source: expected int >= 1, got 0"),
    ("bogus = 1", "[broker]: unknown key 'bogus' (known: host, port,"),
])
def test_each_mistyped_value_is_one_line(tmp_path, line, expected):
    path = tmp_path / "broker.toml"
    path.write_text(f"[broker]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)


def test_schema_defaults_are_the_settings_defaults(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text("")
    settings = load_settings(path)
    for name in BrokerTable.__struct_fields__:
        assert getattr(settings, name) == getattr(BrokerTable(), name), name


def test_a_missing_file_names_config_key_and_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw" / "broker.toml").write_text("[broker]\npassword_file = 'pw.txt'\n")
    with pytest.raises(ConfigError) as err:
        load_settings("gw/broker.toml")
    assert str(err.value) == (f"gw/broker.toml: [broker] password_file: file {tmp_path}/gw/"
                              "pw.txt does not exist (paths are relative to the config file)")


def test_tls_paths_on_both_sides_are_relative_to_their_configs(tmp_path, monkeypatch,
                                                                  tls_files):
    """A gateway and a device directory, each naming its TLS files relative to itself,
    started from a third directory: a real TLS connection to 127.0.0.1 (issue 9: both
    roles crashed with FileNotFoundError because the paths were taken from the cwd)."""
    gw, dev, elsewhere = (tmp_path / n for n in ("gw", "dev", "elsewhere"))
    for d in (gw / "tls", dev / "tls", elsewhere):
        d.mkdir(parents=True)
    shutil.copy(tls_files["server_cert"], gw / "tls" / "server.crt")
    shutil.copy(tls_files["server_key"], gw / "tls" / "server.key")
    shutil.copy(tls_files["ca"], dev / "tls" / "ca.crt")
    port = free_port()
    (gw / "broker.toml").write_text(f"[broker]\nport = {port}\ntls_cert_file = "
                                    "'tls/server.crt'\ntls_key_file = 'tls/server.key'\n")
    (dev / "agent.toml").write_text(
        "[agent]\nid = 'dev-1'\n[data]\npath = 'd.csv'\nfeatures = ['a']\nlabel = 'y'\n"
        f"[mqtt]\nport = {port}\ntls = true\nca_file = 'tls/ca.crt'\nconnect_timeout = 5\n")
    monkeypatch.chdir(elsewhere)
    settings = load_settings(Path("..") / "gw" / "broker.toml")
    assert settings.tls_cert_file == str(gw / "tls" / "server.crt")
    mqtt = AgentConfig.from_file(Path("..") / "dev" / "agent.toml").mqtt
    with EmbeddedBroker(settings):
        link = MqttLink(mqtt, client_id="dev-1", on_message=lambda t, p: None)
        link.connect()
        assert link.publish("t", b"over tls")
        link.close()


def test_pending_connect_caps_come_from_broker_toml(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text("[broker]\nmax_pending_per_source = 2000\nmax_pending = 3000\n")
    limits = load_settings(path).limits()
    assert (limits.max_pending_per_source, limits.max_pending) == (2000, 3000)
