"""The allow-list: enroll, batch enroll from a file, revoke; parallel writers keep every entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import signer_for

from fedmq.aggregator.allowlist import (
    AllowListFile,
    enroll,
    enroll_many,
    enroll_relay,
    read_entries,
    read_key_file,
    revoke,
)
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.keys import load_aggregator_keys
from fedmq.protocol.errors import ConfigError

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def aggregator_toml(tmp_path: Path) -> Path:
    cfg = tmp_path / "aggregator.toml"
    cfg.write_text("[keys]\nbits = 512\nprivate_key_file = 'st/p.key'\n"
                   "signing_key_file = 'st/s.key'\nallow_list_file = 'st/allow.json'\n"
                   "[model]\nkind = 'logistic'\nfeatures = ['a']\nn_classes = 2\n"
                   "[output]\nstate_dir = 'st'\n")
    return cfg


def test_enroll_replace_and_revoke(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    a, b = signer_for("a").public_hex, signer_for("b").public_hex
    assert enroll(path, "a", a) and not enroll(path, "a", a)
    assert enroll(path, "a", b)  # a device that made a new key
    assert read_entries(path) == {"a": b}
    assert revoke(path, "a") and not revoke(path, "a")
    assert read_entries(path) == {}


def test_the_file_is_reread_and_a_broken_one_keeps_the_last_good_lists(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "allow.json"
    path.write_text("null")
    allow = AllowListFile(path)
    with pytest.raises(ConfigError, match=r"allow\.json"):  # at start: stops us
        allow.agents()
    path.unlink()
    enroll(path, "a", signer_for("a").public_hex)
    enroll_relay(path, "relay-r", signer_for("relay-r").public_hex)
    assert (list(allow.agents()), list(allow.relays())) == (["a"], ["relay-r"])
    enroll(path, "b", signer_for("b").public_hex)  # no restart needed
    assert sorted(allow.agents()) == ["a", "b"]
    path.write_bytes(b"\x00\xff broken")  # a bad hand edit mid-run
    assert (sorted(allow.agents()), list(allow.relays())) == (["a", "b"], ["relay-r"])
    assert "keeping the allow-list read before" in caplog.text
    assert "keeping the relays read before" in caplog.text


def test_a_broken_relays_section_fails_its_first_read(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    enroll(path, "a", signer_for("a").public_hex)
    path.write_text(path.read_text().replace('"agents"', '"relays": [], "agents"'))
    allow = AllowListFile(path)
    assert list(allow.agents()) == ["a"]
    with pytest.raises(ConfigError, match="'relays' must map"):
        allow.relays()


def test_fixed_lists_are_used_instead_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    path.write_text("null")  # never read for a fixed list
    fixed = {"a": signer_for("a").public_key}
    allow = AllowListFile(path, agents=fixed, relays={})
    assert allow.agents() is fixed and allow.relays() == {}
    with pytest.raises(ConfigError):  # each list on its own
        AllowListFile(path, agents=fixed).relays()


def test_batch_with_one_bad_key_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    with pytest.raises(ConfigError):
        enroll_many(path, [("a", signer_for("a").public_hex), ("b", "zz")])
    assert not path.exists()


def test_key_file_lines_and_errors(tmp_path: Path) -> None:
    keys = tmp_path / "keys.csv"
    a, b = signer_for("dev-a").public_hex, signer_for("dev-b").public_hex
    keys.write_text(f"id,public_key\n# a comment\n\ndev-a,{a}\n dev-b , {b} \n")
    assert read_key_file(keys) == [("dev-a", a), ("dev-b", b)]
    for text, says in [(f"dev-a,{a}\ndev-b\n", "keys.csv:2: expected id,public_key"),
                       (f"dev-a,{a}\ndev-b,{b[:-2]}\n", "keys.csv:2: "),
                       (f"dev-a,{a}\ndev-a,{b}\n", "keys.csv:2: agent 'dev-a' already on line 1"),
                       ("bad id!,{a}\n", "keys.csv:1: "),
                       ("# nothing\n", "no id,public_key lines")]:
        keys.write_text(text)
        with pytest.raises(ConfigError, match=says):
            read_key_file(keys)


def test_enroll_from_file_is_all_or_nothing(tmp_path: Path) -> None:
    from fedmq.cli import main

    cfg = aggregator_toml(tmp_path)
    keys = tmp_path / "keys.csv"
    good = "".join(f"dev-{i},{signer_for(f'dev-{i}').public_hex}\n" for i in range(3))
    keys.write_text(good + "dev-9,nothex\n")
    assert main(["enroll", "--config", str(cfg), "--from-file", str(keys)]) == 2
    assert not (tmp_path / "st" / "allow.json").exists()
    keys.write_text(good)
    assert main(["enroll", "--config", str(cfg), "--from-file", str(keys)]) == 0
    assert sorted(read_entries(tmp_path / "st" / "allow.json")) == ["dev-0", "dev-1", "dev-2"]


@pytest.mark.slow
def test_20_parallel_enrolls_keep_all_20_entries(tmp_path: Path) -> None:
    """The issue saw 7 of 20: each process read the list, added itself and renamed over."""
    cfg = aggregator_toml(tmp_path)
    load_aggregator_keys(AggregatorConfig.from_file(cfg))  # first use: keys exist before the race
    procs = [subprocess.Popen(
        [sys.executable, "-m", "fedmq", "enroll", "--config", str(cfg), "--agent", f"dev-{i:02d}",
         "--public-key", signer_for(f"dev-{i:02d}").public_hex], env=ENV,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(20)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    doc = json.loads((tmp_path / "st" / "allow.json").read_text())
    assert sorted(doc["agents"]) == [f"dev-{i:02d}" for i in range(20)]


def test_a_relay_may_carry_its_devices_and_the_old_plain_form_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "allow.json"
    old, new = signer_for("relay-a").public_hex, signer_for("relay-a2").public_hex
    path.write_text(json.dumps({"schema": "fedmq.allow-list/1", "agents": {},
                                "relays": {"relay-a": old}}))  # as older versions wrote it
    allow = AllowListFile(path)
    assert list(allow.relays()) == ["relay-a"] and allow.relay_devices() == {}
    assert enroll_relay(path, "relay-a", old, ["d2", "d1"])
    assert json.loads(path.read_text())["relays"]["relay-a"] == {"key": old,
                                                                 "devices": ["d1", "d2"]}
    assert allow.relay_devices() == {"relay-a": frozenset({"d1", "d2"})}
    assert enroll_relay(path, "relay-a", new)  # a new key keeps the assignment
    enroll(path, "d1", signer_for("d1").public_hex)  # so does an agent's enrollment
    assert allow.relay_devices() == {"relay-a": frozenset({"d1", "d2"})}
    assert not enroll_relay(path, "relay-a", new, ["d1", "d2"])
    with pytest.raises(ConfigError, match="device 'd2' is already assigned to relay 'relay-a'"):
        enroll_relay(path, "relay-b", signer_for("relay-b").public_hex, ["d2", "d3"])
    assert enroll_relay(path, "relay-a", new, clear_devices=True)
    assert json.loads(path.read_text())["relays"]["relay-a"] == new
    assert AllowListFile(path, relays={}).relay_devices() == {}  # fixed relays: fixed, none


@pytest.mark.parametrize("entry,says", [
    (42, "expected a public key or"),
    ({"key": "KEY", "devices": "d1"}, "expected a public key or"),
    ({"key": "KEY", "devices": ["d1"], "extra": 1}, "expected a public key or"),
    ({"devices": ["d1"]}, "expected a public key or"),
    ({"key": "zz", "devices": ["d1"]}, "bad Ed25519 public key"),
    ({"key": "KEY", "devices": ["d1", "d1"]}, "listed twice"),
    ({"key": "KEY", "devices": ["bad id!"]}, "device id"),
])
def test_a_bad_relay_entry_is_one_line_naming_the_file_and_relay(tmp_path: Path, entry: object,
                                                                 says: str) -> None:
    path = tmp_path / "allow.json"
    key = signer_for("relay-a").public_hex
    entry = json.loads(json.dumps(entry).replace("KEY", key))
    path.write_text(json.dumps({"schema": "fedmq.allow-list/1", "agents": {},
                                "relays": {"relay-a": entry}}))
    with pytest.raises(ConfigError, match=rf"allow-list .*allow\.json: relay 'relay-a': .*{says}"):
        AllowListFile(path).relay_devices()
    path.write_text(json.dumps({"schema": "fedmq.allow-list/1", "agents": {}, "relays": {
        "relay-a": {"key": key, "devices": ["d1"]}, "relay-b": {"key": key, "devices": ["d1"]}}}))
    with pytest.raises(ConfigError, match=r"allow\.json: relay 'relay-b': device 'd1' is "
                                          "already assigned to relay 'relay-a'"):
        AllowListFile(path).relays()
