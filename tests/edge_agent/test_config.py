from __future__ import annotations

import logging
from pathlib import Path
from typing import get_args

import pytest
from msgspec.structs import fields

from fedmq.edge_agent.config import AgentConfig, CryptoTable
from fedmq.protocol.crypto.obfuscation import OBFUSCATOR_KINDS
from fedmq.protocol.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BASE = "[agent]\nid='pi-1'\n[data]\npath='d.csv'\nfeatures=['a']\nlabel='y'\n"


def load(tmp_path: Path, text: str, name: str = "a.toml") -> AgentConfig:
    path = tmp_path / name
    path.write_text(text)
    return AgentConfig.from_file(path)


def test_example_config_loads():
    cfg = AgentConfig.from_file(CONFIGS / "agent.toml")
    assert cfg.agent_id == "dev-000" and cfg.label == "fault" and len(cfg.features) == 4
    assert Path(cfg.data_path).is_absolute() and cfg.key_fingerprint is None
    assert cfg.obfuscators == "djn" and cfg.obfuscator_pool == 0
    assert cfg.holdout == 0.0


def test_holdout_is_read_from_the_data_table(tmp_path):
    assert load(tmp_path, BASE + "holdout = 0.25\n").holdout == 0.25


def test_the_privacy_limits_are_read_and_unset_by_default(tmp_path):
    old = load(tmp_path, BASE)  # an agent.toml from before the keys: no limit, as before
    assert (old.max_epsilon, old.max_quorum, old.max_alone_epsilon) == (None, None, None)
    cfg = load(tmp_path, BASE + "[privacy]\nmax_epsilon = 10.0\nmax_quorum = 16\n"
               "max_alone_epsilon = 50\n")
    assert (cfg.max_epsilon, cfg.max_quorum, cfg.max_alone_epsilon) == (10.0, 16, 50.0)


@pytest.mark.parametrize("extra,match", [
    ("[fleet]\nkey_fingerprint='abc'\n", "64 lowercase hex"),
    ("[simulation]\nstraggle_seconds=-1\n", "straggle"),
    ("[mqtt]\nport=70000\n", r"\[mqtt\] port: expected int <= 65535, got 70000"),
    ("[mqtt]\nhostname='x'\n", "unknown key 'hostname'"),
    ("[crypto]\nobfuscators='fast'\n", r"\[crypto\] obfuscators"),
    ("[crypto]\nobfuscator_pool=-1\n", "obfuscator_pool"),
    ("holdout=0.6\n", r"\[data\] holdout: expected float <= 0.5, got 0.6"),
    ("holdout=-0.1\n", r"\[data\] holdout: expected float >= 0.0, got -0.1"),
    ("[privacy]\nmax_quorum=0\n", r"\[privacy\] max_quorum: expected int >= 1, got 0"),
    ("[privacy]\nmax_quorum=2.5\n", r"\[privacy\] max_quorum: expected int, got float"),
    ("[privacy]\nmax_alone_epsilon=0\n",
     r"\[privacy\] max_alone_epsilon: expected float > 0.0, got 0"),
])
def test_bad_options(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, BASE + extra)


# Each value a new user wrote (issue 9): silently misread, or a traceback, before.
@pytest.mark.parametrize("table,line,expected", [
    ("mqtt", "tls = \"no\"", '[mqtt] tls: expected bool, got str ("no")'),
    ("agent", "exit_when_finished = \"false\"",
     '[agent] exit_when_finished: expected bool, got str ("false")'),
    ("mqtt", "keepalive = 30.5", "[mqtt] keepalive: expected int, got float (30.5)"),
    ("mqtt", "port = \"8883\"", '[mqtt] port: expected int, got str ("8883")'),
    ("mqtt", "port = true", "[mqtt] port: expected int, got bool (true)"),
    ("mqtt", "host = 127", "[mqtt] host: expected str, got int (127)"),
    ("mqtt", "ca_file = 5", "[mqtt] ca_file: expected str, got int (5)"),
    ("crypto", "obfuscator_pool = \"x\"",
     '[crypto] obfuscator_pool: expected int, got str ("x")'),
    ("data", "delimiter = 5", "[data] delimiter: expected str, got int (5)"),
    ("data", "delimiter = \";;\"", '[data] delimiter: expected one character, got ";;"'),
    ("fleet", "key_fingerprint = 5", "[fleet] key_fingerprint: expected str, got int (5)"),
    ("fleet", "key_fingerprint = \"\"",
     '[fleet] key_fingerprint: expected 64 lowercase hex characters, got ""'),
    ("mqtt", "keepalive = inf", "[mqtt] keepalive: expected a finite number, got inf"),
    ("mqtt", "hostname = \"x\"", "[mqtt]: unknown key 'hostname' (known: host, port,"),
    ("bogus", "x = 1", "unknown table [bogus] (known: agent, data, fleet,"),
    ("personal", "mode = \"magic\"", '[personal] mode: expected "fleet" or "none" or '
     '"finetune" or "ditto" or "intercept", got "magic"'),
])
def test_each_mistyped_value_is_one_line_naming_file_table_and_key(tmp_path, table, line,
                                                                  expected):
    text = {"agent": "[agent]\nid='pi-1'\n", "data": "[data]\npath='d.csv'\n"
            "features=['a']\nlabel='y'\n"}
    doc = "".join(body + (line + "\n" if name == table else "") for name, body in text.items())
    if table not in text:
        doc += f"[{table}]\n{line}\n"
    path = tmp_path / "agent.toml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {expected}"), message
    assert "\n" not in message


def test_missing_sections(tmp_path):
    with pytest.raises(ConfigError, match=r"a\.toml: \[data\] is required"):
        load(tmp_path, "[agent]\nid='pi-1'\n")
    with pytest.raises(ConfigError, match=r"\[agent\] id is required"):
        load(tmp_path, "[agent]\n[data]\npath='d.csv'\nfeatures=['a']\nlabel='y'\n")


def test_crypto_choices_are_the_codes():
    [kinds] = [f.type for f in fields(CryptoTable) if f.name == "obfuscators"]
    assert get_args(kinds) == OBFUSCATOR_KINDS


def test_tls_paths_are_relative_to_the_config_not_the_cwd(tmp_path, monkeypatch):
    """``ca_file = "tls/ca.crt"`` was opened from the cwd: FileNotFoundError (issue 9)."""
    gw = tmp_path / "device"
    (gw / "tls").mkdir(parents=True)
    for name in ("ca.crt", "dev.crt", "dev.key"):
        (gw / "tls" / name).write_text("pem")
    (gw / "agent.toml").write_text(BASE + "[mqtt]\ntls = true\nca_file = 'tls/ca.crt'\n"
                                   "cert_file = 'tls/dev.crt'\nkey_file = 'tls/dev.key'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mqtt = AgentConfig.from_file(Path("..") / "device" / "agent.toml").mqtt
    assert (mqtt.ca_file, mqtt.cert_file, mqtt.key_file) == tuple(
        str(gw / "tls" / n) for n in ("ca.crt", "dev.crt", "dev.key"))


def test_a_missing_tls_file_names_config_key_and_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dev").mkdir()
    path = tmp_path / "dev" / "agent.toml"
    path.write_text(BASE + "[mqtt]\ntls = true\nca_file = 'tls/ca.crt'\n")
    with pytest.raises(ConfigError) as err:
        AgentConfig.from_file("dev/agent.toml")
    assert str(err.value) == (f"dev/agent.toml: [mqtt] ca_file: file {tmp_path}/dev/tls/ca.crt "
                              "does not exist (paths are relative to the config file)")


def test_tls_files_without_tls_are_an_error(tmp_path):
    (tmp_path / "ca.crt").write_text("pem")
    with pytest.raises(ConfigError, match=r"\[mqtt\] ca_file: only used with tls = true"):
        load(tmp_path, BASE + "[mqtt]\nca_file = 'ca.crt'\n")


CREDS = "[mqtt]\nusername = 'pi-1'\n"


def test_password_from_a_file_relative_to_the_config(tmp_path, monkeypatch, caplog):
    secret = tmp_path / "secrets" / "mqtt.pw"
    secret.parent.mkdir()
    secret.write_text("s3cret-pass\n")
    secret.chmod(0o600)
    monkeypatch.chdir(secret.parent)  # not where the config is
    with caplog.at_level(logging.WARNING):
        cfg = load(tmp_path, BASE + CREDS + "password_file = 'secrets/mqtt.pw'\n")
    assert cfg.mqtt.password == "s3cret-pass" and cfg.mqtt.username == "pi-1"
    assert not caplog.records  # mode 0600: nothing to warn about


def test_a_password_file_readable_by_others_is_warned_about(tmp_path, caplog):
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret-pass")
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert load(tmp_path, BASE + CREDS + "password_file = 'mqtt.pw'\n").mqtt.password == \
            "s3cret-pass"
    [record] = caplog.records
    assert f"{secret} holds the MQTT password" in record.message
    assert "0644" in record.message and f"chmod 600 {secret}" in record.message


def test_a_plain_password_in_a_readable_config_is_warned_about(tmp_path, caplog):
    path = tmp_path / "agent.toml"
    path.write_text(BASE + CREDS + "password = 's3cret-pass'\n")
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING):
        assert AgentConfig.from_file(path).mqtt.password == "s3cret-pass"
    [record] = caplog.records
    assert f"{path} holds the MQTT password" in record.message and "0640" in record.message
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        AgentConfig.from_file(path)
    assert not caplog.records


def test_password_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMQ_TEST_PW", "from-the-env")
    text = BASE + CREDS + "password_env = 'FEDMQ_TEST_PW'\n"
    assert load(tmp_path, text).mqtt.password == "from-the-env"
    monkeypatch.delenv("FEDMQ_TEST_PW")
    with pytest.raises(ConfigError, match="environment variable FEDMQ_TEST_PW is not set"):
        load(tmp_path, text)


@pytest.mark.parametrize("lines,match", [
    ("password = 'a'\npassword_env = 'X'\n", "set only one of password, password_env"),
    ("password_file = 'nope.pw'\n", r"\[mqtt\] password_file: file .*nope\.pw does not exist"),
    ("password_env = 'not a name'\n", "password_env: expected an environment variable name"),
])
def test_password_sources_are_checked(tmp_path, lines, match):
    with pytest.raises(ConfigError, match=match):
        load(tmp_path, BASE + CREDS + lines)


def test_a_password_needs_a_username(tmp_path):
    with pytest.raises(ConfigError, match=r"\[mqtt\] password: a password needs \[mqtt\] "
                                          "username"):
        load(tmp_path, BASE + "[mqtt]\npassword = 'x'\n")


def test_the_example_configs_commented_login_works_when_uncommented(tmp_path, caplog):
    text = (CONFIGS / "agent.toml").read_text()
    text = text.replace('# username = "dev-000"', 'username = "dev-000"').replace(
        '# password_file = "dev-000.password"', 'password_file = "dev-000.password"')
    (tmp_path / "dev-000.password").write_text("from-a-file\n")
    (tmp_path / "dev-000.password").chmod(0o600)
    with caplog.at_level(logging.WARNING):
        mqtt = load(tmp_path, text, "agent.toml").mqtt
    assert (mqtt.username, mqtt.password) == ("dev-000", "from-a-file") and not caplog.records


def test_the_personal_mode_follows_the_fleet_unless_the_device_chooses(tmp_path):
    assert load(tmp_path, BASE).personal_mode is None
    assert load(tmp_path, BASE + "[personal]\nmode = 'fleet'\n").personal_mode is None
    assert load(tmp_path, BASE + "[personal]\nmode = 'intercept'\n").personal_mode == \
        "intercept"
