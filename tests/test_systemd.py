"""The systemd units in deploy/systemd: ``systemd-analyze verify`` finds nothing to say.

``verify`` insists that ExecStart's binary exists, so the units are checked on a
copy whose /opt/fedmq/venv/bin/fedmq is this install's fedmq. Skipped where
systemd-analyze is absent, unless FEDMQ_REQUIRE_SYSTEMD_ANALYZE is set (CI).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
NAMES = ("fedmq-agent.service", "fedmq-aggregator.service", "fedmq-broker.service",
         "fedmq-dashboard.service")
INSTALLED_FEDMQ = "/opt/fedmq/venv/bin/fedmq"
ANALYZE = shutil.which("systemd-analyze") or shutil.which("systemd-analyze", path="/usr/bin")
HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet": "",
    "ReadWritePaths": "/var/lib/fedmq", "User": "fedmq", "Restart": "on-failure",
}

needs_analyze = pytest.mark.skipif(
    ANALYZE is None and not os.environ.get("FEDMQ_REQUIRE_SYSTEMD_ANALYZE"),
    reason="systemd-analyze is not installed")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(UNITS / name)
    return parser


def installable_copy(tmp_path: Path, names: tuple[str, ...] = NAMES) -> list[Path]:
    fedmq = Path(sys.executable).with_name("fedmq")
    assert fedmq.exists(), fedmq
    copies = []
    for name in names:
        text = (UNITS / name).read_text()
        assert INSTALLED_FEDMQ in text
        copy = tmp_path / name
        copy.write_text(text.replace(INSTALLED_FEDMQ, str(fedmq)))
        copies.append(copy)
    return copies


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None, "FEDMQ_REQUIRE_SYSTEMD_ANALYZE is set: install systemd"
    return subprocess.run([ANALYZE, "verify", *map(str, paths)], capture_output=True,
                          text=True, timeout=60)


@needs_analyze
def test_units_verify_without_a_single_warning(tmp_path):
    copies = installable_copy(tmp_path)
    for copy in copies:
        proc = verify(copy)
        assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), (
            copy.name, proc.stderr, proc.stdout)
    together = verify(*copies)
    assert together.returncode == 0 and not together.stderr.strip(), together.stderr


@needs_analyze
def test_verify_would_catch_a_misspelt_key(tmp_path):
    (copy,) = installable_copy(tmp_path, NAMES[:1])
    copy.write_text(copy.read_text().replace("ProtectHome=", "ProtectHom="))
    assert "Unknown key" in verify(copy).stderr  # so a clean run above means something


@needs_analyze
def test_units_are_well_hardened(tmp_path):
    for copy in installable_copy(tmp_path):
        proc = subprocess.run([str(ANALYZE), "security", "--offline=true", str(copy)],
                              capture_output=True, text=True, timeout=60)
        if "--offline" in proc.stderr:  # systemd < 250
            pytest.skip("systemd-analyze security --offline needs systemd 250")
        level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
        assert level is not None, proc.stdout + proc.stderr
        assert float(level.group(1)) <= 2.0, proc.stdout


@pytest.mark.parametrize("name", NAMES)
def test_each_unit_restarts_on_failure_as_a_dedicated_user_after_the_network(name):
    service = unit(name)["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, (name, key)
    assert int(service["RestartSec"]) >= 5
    after, wants = unit(name)["Unit"]["After"].split(), unit(name)["Unit"]["Wants"].split()
    assert "network-online.target" in after and "network-online.target" in wants


def test_the_agent_has_a_memory_cap_and_the_aggregator_follows_the_broker():
    assert unit("fedmq-agent.service")["Service"]["MemoryMax"] == "256M"
    aggregator = unit("fedmq-aggregator.service")["Unit"]
    assert "fedmq-broker.service" in aggregator["After"].split()
    assert "fedmq-broker.service" in aggregator["Wants"].split()
