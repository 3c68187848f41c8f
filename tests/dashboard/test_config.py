"""dashboard.toml: defaults, and mistakes named by file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import AGGREGATOR_SIGNER

from fedmq.dashboard.config import DashboardConfig
from fedmq.protocol.errors import ConfigError


def write(tmp_path: Path, dashboard: str = "", fleet: str = "") -> Path:
    path = tmp_path / "dashboard.toml"
    path.write_text(f'[dashboard]\n{dashboard}\n[fleet]\nname = "f"\naggregator_signing_key = '
                    f'"{AGGREGATOR_SIGNER.public_hex}"\n{fleet}\n[mqtt]\nport = 1883\n'
                    'username = "dashboard"\npassword = "pw"\n')
    return path


def test_defaults_serve_on_loopback(tmp_path):
    c = DashboardConfig.from_file(write(tmp_path))
    assert (c.bind, c.port, c.users_file, c.client_id) == ("127.0.0.1", 8780, None, "dashboard")
    assert c.topics.progress == "fedmq/f/progress"


def test_another_address_needs_a_login(tmp_path):
    with pytest.raises(ConfigError, match=r"\[dashboard\] bind = '0.0.0.0' is not a loopback"):
        DashboardConfig.from_file(write(tmp_path, 'bind = "0.0.0.0"'))
    with pytest.raises(ConfigError, match=r"\[dashboard\] users_file: .*users.txt does not"):
        DashboardConfig.from_file(write(tmp_path, 'bind = "0.0.0.0"\nusers_file = "users.txt"'))
    (tmp_path / "users.txt").write_text("x\n")
    c = DashboardConfig.from_file(write(tmp_path, 'bind = "0.0.0.0"\nusers_file = "users.txt"'))
    assert c.users_file == str(tmp_path / "users.txt")


@pytest.mark.parametrize("dashboard, fleet, where", [
    ("port = 70000", "", "port"), ('bind = ""', "", "bind"), ("colour = 1", "", "colour"),
    ("", 'topic_prefix = "a/#"', "fleet"),
])
def test_bad_values_name_their_key(tmp_path, dashboard, fleet, where):
    with pytest.raises(ConfigError, match=where):
        DashboardConfig.from_file(write(tmp_path, dashboard, fleet))


def test_a_bad_signing_key_names_it(tmp_path):
    path = tmp_path / "dashboard.toml"
    path.write_text('[fleet]\naggregator_signing_key = "abc"\n')
    with pytest.raises(ConfigError, match="aggregator_signing_key"):
        DashboardConfig.from_file(path)
