"""relay.toml: one clear line per mistake; the relay's key and its enrollment upstream."""

from __future__ import annotations

import json

import pytest
from support import AGGREGATOR_SIGNER

from fedmq.aggregator.allowlist import enroll, load_allow_list, load_relay_devices, load_relays
from fedmq.cli import main
from fedmq.protocol.errors import ConfigError
from fedmq.relay.config import RelayConfig

KEY = AGGREGATOR_SIGNER.public_hex


def write(tmp_path, fleet=f'aggregator_signing_key = "{KEY}"', local="port = 1884"):
    path = tmp_path / "relay.toml"
    path.write_text(f"""
[relay]
id = "relay-a"
signing_key_file = "relay-a.key"
allow_list_file = "devices.json"
[fleet]
name = "test"
{fleet}
[upstream]
port = 1883
[local]
{local}
""")
    return path


def test_a_relay_config_resolves_paths_and_pins_the_aggregator(tmp_path):
    config = RelayConfig.from_file(write(tmp_path))
    assert config.signing_key_file == str(tmp_path / "relay-a.key")
    assert (config.upstream.port, config.local.port) == (1883, 1884)
    assert config.aggregator_signing_key == KEY


@pytest.mark.parametrize("fleet,local,message", [
    ("", "port = 1884", "aggregator_signing_key"),
    (f'aggregator_signing_key = "{KEY}"', "port = 1883", "prefix"),  # one broker, one prefix
])
def test_bad_relay_configs_say_what_is_wrong(tmp_path, fleet, local, message):
    with pytest.raises(ConfigError, match=message):
        RelayConfig.from_file(write(tmp_path, fleet, local))


def test_enroll_relay_marks_a_relay_and_agent_enrolls_keep_it(tmp_path, capsys):
    relay_toml = write(tmp_path)
    assert main(["relay", "--config", str(relay_toml), "--show-public-key", "--csv"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("relay-a,")
    (tmp_path / "relay.csv").write_text(line + "\n")
    aggregator_toml = tmp_path / "aggregator.toml"
    aggregator_toml.write_text('[keys]\nallow_list_file = "allow.json"\n'
                               '[model]\nkind = "linear"\nfeatures = ["x"]\n')
    assert main(["enroll-relay", "--config", str(aggregator_toml),
                 "--from-file", str(tmp_path / "relay.csv")]) == 0
    allow = tmp_path / "allow.json"
    enroll(allow, "dev-1", KEY)  # an agent enrolled afterwards keeps the relay
    assert set(load_relays(allow)) == {"relay-a"}
    assert set(load_allow_list(allow)) == {"dev-1"}  # a relay is never an agent
    assert json.loads(allow.read_text())["relays"]["relay-a"] == line.split(",")[1]


def test_enroll_relay_with_its_devices(tmp_path, capsys):
    aggregator_toml = tmp_path / "aggregator.toml"
    aggregator_toml.write_text('[keys]\nallow_list_file = "allow.json"\n'
                               '[model]\nkind = "linear"\nfeatures = ["x"]\n')
    enroll_relay = ["enroll-relay", "--config", str(aggregator_toml), "--relay", "relay-a",
                    "--public-key", KEY]
    assert main([*enroll_relay, "--devices", "dev-1,dev-2"]) == 0
    assert "serving 2 device(s)" in capsys.readouterr().out
    (tmp_path / "devices.txt").write_text("# relay-a's subtree\ndev-1\ndev-3, dev-4\n")
    assert main([*enroll_relay, "--devices-file", str(tmp_path / "devices.txt")]) == 0
    assert load_relay_devices(tmp_path / "allow.json") == {
        "relay-a": frozenset({"dev-1", "dev-3", "dev-4"})}
    for extra, says in [(["--devices-file", str(tmp_path / "none.txt")], "cannot read"),
                        (["--devices", " , "], "--devices names no device"),
                        (["--devices", "a", "--clear-devices"], "exclude each other")]:
        assert main([*enroll_relay, *extra]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1  # one line, no traceback
