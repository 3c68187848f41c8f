from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from broker.embedded import free_port
from fedmq.cli import main

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedmq", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


@pytest.mark.parametrize("cmd", [[], ["broker"], ["aggregator"], ["agent"], ["simulate"],
                                 ["sample-data"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: fedmq" in capsys.readouterr().out


def test_help_as_a_real_process():
    proc = run("--help")
    assert proc.returncode == 0
    for sub in ("broker", "aggregator", "agent", "simulate"):
        assert sub in proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], match: str) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fedmq: error:")]
    assert len(errors) == 1 and match in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_file():
    one_line_error(run("aggregator", "--config", "/nonexistent.toml"), "not found")


def test_bad_config(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text("[agent]\nid = 'x y'\n[data]\npath='d'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "invalid agent id")


def test_missing_data_file(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text("[agent]\nid = 'pi'\n[data]\npath='nope.csv'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "nope.csv not found")


def test_unreachable_broker(tmp_path):
    (tmp_path / "d.csv").write_text("a,l\n1,0\n")
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"[agent]\nid = 'pi'\nstate_dir = 'st'\n[mqtt]\nport = {free_port()}\n"
                   "[data]\npath='d.csv'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "cannot reach MQTT broker")


def test_agent_without_a_place_for_its_signing_key(tmp_path):
    (tmp_path / "d.csv").write_text("a,l\n1,0\n")
    cfg = tmp_path / "a.toml"
    cfg.write_text("[agent]\nid = 'pi'\n[data]\npath='d.csv'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "signing key")


def test_enroll_flow_device_key_to_gateway_allow_list(tmp_path):
    """Device prints its public key; the gateway enrolls it and prints what to pin."""
    (tmp_path / "d.csv").write_text("a,l\n1,0\n")
    agent_cfg = tmp_path / "a.toml"
    agent_cfg.write_text("[agent]\nid = 'pi-7'\nstate_dir = 'st'\n"
                         "[data]\npath='d.csv'\nfeatures=['a']\nlabel='l'\n")
    shown = run("agent", "--config", str(agent_cfg), "--show-public-key")
    assert shown.returncode == 0, shown.stderr
    public_hex = shown.stdout.strip()
    assert len(public_hex) == 64
    key_file = tmp_path / "st" / "signing.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert run("agent", "--config", str(agent_cfg), "--show-public-key").stdout.strip() == \
        public_hex  # created once, then reused

    agg_cfg = tmp_path / "g.toml"
    agg_cfg.write_text("[keys]\nbits = 512\nprivate_key_file='gw/p.key'\n"
                       "signing_key_file='gw/s.key'\nallow_list_file='gw/allow.json'\n"
                       "[model]\nkind='logistic'\nfeatures=['a']\nn_classes=2\n")
    out = run("enroll", "--config", str(agg_cfg), "--agent", "pi-7", "--public-key", public_hex)
    assert out.returncode == 0, out.stderr
    assert "key_fingerprint = " in out.stdout and "aggregator_signing_key = " in out.stdout
    allow = json.loads((tmp_path / "gw" / "allow.json").read_text())
    assert allow["agents"] == {"pi-7": public_hex}
    one_line_error(run("enroll", "--config", str(agg_cfg), "--agent", "pi-8",
                       "--public-key", "zz"), "Ed25519")
    gone = run("enroll", "--config", str(agg_cfg), "--agent", "pi-7", "--revoke")
    assert gone.returncode == 0 and "revoked" in gone.stdout
    assert json.loads((tmp_path / "gw" / "allow.json").read_text())["agents"] == {}


def test_sample_data(tmp_path):
    proc = run("sample-data", "--devices", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-000.csv", "dev-001.csv"]


def test_simulate_bad_option():
    one_line_error(run("simulate", "--agents", "2", "--kill", "2"), "kill")
