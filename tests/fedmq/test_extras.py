"""A command that needs an extra the install lacks says which, in one line.

Each case runs a fresh interpreter in which the extra's modules cannot be
imported (``sys.modules[name] = None``), as on a device install;
tests/test_device_install.py checks the same on a real wheel without extras.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedmq import extras

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
GATEWAY_HINT = 'needs the gateway extra (amqtt is not installed): pip install "fedmq[gateway]"'


def without(modules: tuple[str, ...], code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    blocked = f"import sys; sys.modules.update(dict.fromkeys({modules!r})); "
    return subprocess.run([sys.executable, "-c", blocked + code], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=60)


def fedmq_without(modules: tuple[str, ...], *args: str, cwd: Path
                  ) -> subprocess.CompletedProcess[str]:
    return without(modules, f"from fedmq.cli import main; sys.exit(main({list(args)!r}))", cwd)


def one_line(proc: subprocess.CompletedProcess[str], match: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("fedmq: error:")]
    assert len(errors) == 1 and match in errors[0], proc.stderr


BROKER_HINT = ('needs the gateway extra (amqtt, pwdlib are not installed): '
               'pip install "fedmq[gateway]"')


@pytest.mark.parametrize(("args", "hint"), [
    (("broker",), BROKER_HINT), (("broker", "run"), BROKER_HINT),
    (("broker", "add-user", "--password-file", "p.txt", "--username", "dev-a",
      "--password-stdin"), BROKER_HINT),
    (("bench-flood",), GATEWAY_HINT), (("bench-storm",), GATEWAY_HINT)])
def test_gateway_commands_without_amqtt_name_the_gateway_extra(tmp_path, args, hint):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "broker.toml").write_text("[broker]\nport = 1\n")
    one_line(fedmq_without(("amqtt", "pwdlib"), *args, cwd=tmp_path), f"fedmq {args[0]} {hint}")
    assert not (tmp_path / "p.txt").exists()


def test_simulate_without_the_gateway_extra_stops_before_making_a_key(tmp_path):
    proc = fedmq_without(("amqtt", "sklearn", "matplotlib"), "simulate", "--agents", "2",
                         "--rounds", "1", "--key-bits", "512", "--out", "out", cwd=tmp_path)
    one_line(proc, 'fedmq simulate needs the gateway extra (amqtt, sklearn, matplotlib are not '
                   'installed): pip install "fedmq[gateway]"')
    assert not (tmp_path / "out").exists()


def test_mosquitto_config_needs_no_extra(tmp_path):
    proc = fedmq_without(("amqtt", "pwdlib", "sklearn", "matplotlib"), "broker",
                         "mosquitto-config", "--out", "mq", "--fleet", "f", "--agent", "dev-a",
                         cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "mq" / "mosquitto.conf").exists()


def test_to_sklearn_without_scikit_learn_names_the_extra(tmp_path):
    proc = without(("sklearn",), "import numpy; from models import make_model; "
                   "from support import SPEC; make_model(SPEC).set_params_vector("
                   "numpy.zeros(SPEC.n_params)).to_sklearn()", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: to_sklearn() needs scikit-learn, which is not installed: "
        'pip install "fedmq[sklearn]"')


def test_an_optional_module_missing_at_run_time_is_explained_too():
    missing = extras.explain("plot", ModuleNotFoundError("x", name="matplotlib.pyplot"))
    assert str(missing) == ('fedmq plot needs the gateway extra (matplotlib is not installed): '
                            'pip install "fedmq[gateway]"')
    assert extras.explain("agent", ModuleNotFoundError("x", name="numpy")) is None


def test_installed_sees_blocked_and_absent_modules(monkeypatch):
    monkeypatch.setitem(sys.modules, "amqtt", None)
    assert not extras.installed("amqtt")
    assert not extras.installed("no_such_module_fedmq")
    assert extras.installed("json")
