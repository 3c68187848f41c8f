"""The aggregator's keys: made once (however many commands start together), never replaced."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmq.aggregator.keys import load_keypair, load_or_create_keypair
from fedmq.protocol.crypto.paillier import fingerprint
from fedmq.protocol.errors import ConfigError


def test_key_is_created_0600_and_reloaded(tmp_path):
    path = tmp_path / "sub" / "paillier.key"
    pub, _ = load_or_create_keypair(path, 512)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, _ = load_or_create_keypair(path, 512)
    assert fingerprint(again) == fingerprint(pub)


def test_corrupt_key_file_is_a_config_error(tmp_path):
    path = tmp_path / "paillier.key"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load private key"):
        load_or_create_keypair(path, 512)


def _config(tmp_path):
    from support import SPEC

    from fedmq.aggregator.config import AggregatorConfig
    from fedmq.protocol.topics import Topics

    state = tmp_path / "gw"
    return AggregatorConfig(topics=Topics("test"), spec=SPEC, key_bits=512,
                            key_file=str(state / "paillier.key"),
                            allow_list_file=str(state / "allow_list.json"),
                            signing_key_file=str(state / "signing.key"), state_dir=str(state))


def test_keys_are_created_on_first_use_only(tmp_path):
    from fedmq.aggregator.keys import load_aggregator_keys

    config = _config(tmp_path)
    (pub, _), signer = load_aggregator_keys(config)  # nothing yet: true first use
    (again, _), same = load_aggregator_keys(config)
    assert fingerprint(again) == fingerprint(pub) and same.public_hex == signer.public_hex


@pytest.mark.parametrize("lost", ["paillier.key", "signing.key"])
def test_a_lost_key_is_never_replaced_silently(tmp_path, lost):
    from fedmq.aggregator.keys import load_aggregator_keys

    config = _config(tmp_path)
    (pub, _), signer = load_aggregator_keys(config)
    (tmp_path / "gw" / lost).unlink()
    with pytest.raises(ConfigError, match=f"{lost} is missing.*--new-keys.*re-pin"):
        load_aggregator_keys(config)
    assert not (tmp_path / "gw" / lost).exists()
    (new_pub, _), new_signer = load_aggregator_keys(config, new_keys=True)
    assert (fingerprint(new_pub) != fingerprint(pub)) == (lost == "paillier.key")
    assert (new_signer.public_hex != signer.public_hex) == (lost == "signing.key")


@pytest.mark.parametrize("state_file", ["runs", "latest", "run.json", "global_model.npz",
                                        "rounds.csv", "allow_list.json"])
def test_no_keys_beside_run_state_is_not_a_first_use(tmp_path, state_file):
    from fedmq.aggregator.keys import load_aggregator_keys

    config = _config(tmp_path)
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw" / state_file).write_text("x")
    with pytest.raises(ConfigError, match=f"missing.*{state_file}"):
        load_aggregator_keys(config)
    # No key and no temp file was made (the lock file beside the key stays, as a lock does).
    assert sorted(p.name for p in (tmp_path / "gw").iterdir()
                  if p.name != ".paillier.key.lock") == [state_file]


@pytest.mark.parametrize("content,says", [
    (b"\x80\xff\x00binary", "not a UTF-8 JSON"), (b"[]", "not a fedmq Paillier private key"),
    (b'{"schema": "fedmq.paillier-private/1", "n": "zz"}', "lacks a valid n"),
])
def test_malformed_key_files_are_config_errors(tmp_path, content, says):
    path = tmp_path / "paillier.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"paillier.key.*{says}"):
        load_or_create_keypair(path, 512)


def test_an_existing_key_is_never_replaced(tmp_path):
    from fedmq.aggregator.keys import create_keypair

    path = tmp_path / "paillier.key"
    pub, _ = create_keypair(path, 512)
    with pytest.raises(FileExistsError):
        create_keypair(path, 512)
    assert fingerprint(load_keypair(path)[0]) == fingerprint(pub)
    assert [p.name for p in tmp_path.iterdir()] == ["paillier.key"]  # no temp file left


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
PINNED = re.compile(r'key_fingerprint = "(\w+)"\naggregator_signing_key = "(\w+)"')


# The real command's main, in its own process, held at the start line until all are ready:
# imports take 0.3-1 s each and would otherwise spread the starts wider than the race.
STARTER = """import pathlib, sys, time
import fedmq.aggregator.config, fedmq.aggregator.keys, fedmq.cli, fedmq.gateway_cli, fedmq.provision
go = pathlib.Path(sys.argv[1])
pathlib.Path(sys.argv[2]).touch()
while not go.exists():
    time.sleep(0.002)
sys.exit(fedmq.cli.main(sys.argv[3:]))
"""


def _together(commands: dict[str, list[str]], cwd: Path) -> dict[str, str]:
    """Start ``fedmq COMMAND...`` for each entry, release them at once; their stdout."""
    line = cwd / ".go"
    procs = {name: subprocess.Popen(
        [sys.executable, "-c", STARTER, str(line), str(cwd / f".ready-{i}"), *args], cwd=cwd,
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, (name, args) in enumerate(commands.items())}
    deadline = time.monotonic() + 120
    while sum((cwd / f".ready-{i}").exists() for i in range(len(procs))) < len(procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values())
        time.sleep(0.01)
    line.touch()
    outs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, err)
        outs[name] = out
    return outs


def _on_disk(state: Path, paillier: str, signing: str) -> tuple[str, str]:
    from fedmq.runtime.files import load_signer

    return (fingerprint(load_keypair(state / paillier)[0]),
            load_signer(state / signing).public_hex)


@pytest.mark.slow
def test_20_enrolls_started_together_on_a_fresh_gateway_make_one_key(tmp_path):
    """Issue 24: 20 first-start enrolls made up to 7 keys, 6 printed one not on disk, and
    some failed with 'signing.key is missing but paillier.key exists'."""
    from support import signer_for

    for trial in range(3):
        root = tmp_path / f"t{trial}"
        root.mkdir()
        (root / "aggregator.toml").write_text(
            "[keys]\nbits = 512\nprivate_key_file = 'st/p.key'\nsigning_key_file = 'st/s.key'\n"
            "allow_list_file = 'st/allow.json'\n[model]\nkind = 'logistic'\n"
            "features = ['a']\nn_classes = 2\n[output]\nstate_dir = 'st'\n")
        outs = _together({f"dev-{i:02d}": [
            "enroll", "--config", "aggregator.toml", "--agent", f"dev-{i:02d}", "--public-key",
            signer_for(f"dev-{i:02d}").public_hex] for i in range(20)}, root)
        printed = [PINNED.search(out).groups() for out in outs.values()]
        assert set(printed) == {_on_disk(root / "st", "p.key", "s.key")}, trial
        assert sorted(p.name for p in (root / "st").iterdir()
                      if not p.name.endswith(".lock")) == ["allow.json", "p.key", "s.key"]
        assert len(json.loads((root / "st" / "allow.json").read_text())["agents"]) == 20


@pytest.mark.slow
def test_init_device_enroll_and_aggregator_started_together_make_one_key(tmp_path):
    """A gateway directory before its first key: `init device`, `enroll` and the aggregator
    (up to its key load: --show-fingerprint) started together all pin the one pair on disk."""
    from support import signer_for

    from fedmq.cli import main

    gw = tmp_path / "gw"
    assert main(["init", "gateway", str(gw), "--bits", "512", "--loopback"]) == 0
    for key in ("paillier.key", "signing.key"):
        (gw / "state" / key).unlink()  # as before its first start
    commands = {f"init {i}": ["init", "device", f"dev-{i}", "--gateway", "."] for i in range(3)}
    commands |= {f"enroll {i}": ["enroll", "--config", "aggregator.toml", "--agent", f"new-{i}",
                                 "--public-key", signer_for(f"new-{i}").public_hex]
                 for i in range(3)}
    commands |= {f"aggregator {i}": ["aggregator", "--config", "aggregator.toml",
                                     "--show-fingerprint"] for i in range(2)}
    outs = _together(commands, gw)
    disk = _on_disk(gw / "state", "paillier.key", "signing.key")
    for name, out in outs.items():
        if name.startswith("init"):
            out = (gw / "devices" / f"dev-{name.split()[1]}" / "agent.toml").read_text()
        if name.startswith("aggregator"):
            assert out.strip() == disk[0], name
        else:
            assert PINNED.search(out).groups() == disk, name
