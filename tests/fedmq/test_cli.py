from __future__ import annotations

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
    cfg.write_text(f"[agent]\nid = 'pi'\n[mqtt]\nport = {free_port()}\n"
                   "[data]\npath='d.csv'\nfeatures=['a']\nlabel='l'\n")
    one_line_error(run("agent", "--config", str(cfg)), "cannot reach MQTT broker")


def test_sample_data(tmp_path):
    proc = run("sample-data", "--devices", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev-000.csv", "dev-001.csv"]


def test_simulate_bad_option():
    one_line_error(run("simulate", "--agents", "2", "--kill", "2"), "kill")
