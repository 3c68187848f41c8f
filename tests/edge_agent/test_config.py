from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig
from protocol.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_example_config_loads():
    cfg = AgentConfig.from_file(CONFIGS / "agent.toml")
    assert cfg.agent_id == "dev-000" and cfg.label == "fault" and len(cfg.features) == 4
    assert Path(cfg.data_path).is_absolute() and cfg.key_fingerprint is None
    assert cfg.obfuscators == "djn" and cfg.obfuscator_pool == 0


@pytest.mark.parametrize("extra,match", [
    ("[fleet]\nkey_fingerprint='abc'\n", "64 lowercase hex"),
    ("[simulation]\nstraggle_seconds=-1\n", "straggle"),
    ("[mqtt]\nport=70000\n", "TCP port"),
    ("[mqtt]\nhostname='x'\n", "unknown"),
    ("[crypto]\nobfuscators='fast'\n", "crypto.obfuscators"),
    ("[crypto]\nobfuscator_pool=-1\n", "obfuscator_pool"),
])
def test_bad_options(tmp_path, extra, match):
    path = tmp_path / "a.toml"
    path.write_text("[agent]\nid='pi-1'\n[data]\npath='d.csv'\nfeatures=['a']\nlabel='y'\n"
                    + extra)
    with pytest.raises(ConfigError, match=match):
        AgentConfig.from_file(path)


def test_missing_sections(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text("[agent]\nid='pi-1'\n")
    with pytest.raises(ConfigError, match=r"\[data\]"):
        AgentConfig.from_file(path)
