from __future__ import annotations

from pathlib import Path

import pytest

from aggregator.config import AggregatorConfig, Limits
from protocol.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_example_config_loads_with_paths_relative_to_it():
    cfg = AggregatorConfig.from_file(CONFIGS / "aggregator.toml")
    assert cfg.spec.n_params == 5 and cfg.key_bits == 2048 and cfg.policy.quorum == 2
    assert Path(cfg.key_file).is_absolute() and cfg.key_file.endswith("paillier.key")


@pytest.mark.parametrize("text,match", [
    ("[model]\nkind='logistic'\nfeatures=['a']\nn_classes=2\n[rounds]\nrounds=0\n", "rounds"),
    ("[model]\nkind='tree'\nfeatures=['a']\n", "aggregator config"),
    ("[fleet]\nname='a b'\n[model]\nkind='linear'\nfeatures=['a']\n", "fleet name"),
    ("[model]\nkind='linear'\nfeatures=['a']\n[codec]\nclip=-1\n", "clip"),
    ("[model]\nkind='linear'\nfeatures=['a']\n[rounds]\nspeed=3\n", "unknown"),
    ("[bogus]\n", "unknown"),
    ("[model]\nkind='linear'\nfeatures=['a']\n[codec]\nclipp=1\n", "clipp"),
    ("[model\n", "not valid TOML"),
    ("", "model"),
])
def test_bad_configs_give_one_clear_error(tmp_path, text, match):
    path = tmp_path / "agg.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        AggregatorConfig.from_file(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        AggregatorConfig.from_file("/nonexistent/agg.toml")


def test_limits_section_is_read_and_checked(tmp_path):
    base = {"model": {"kind": "linear", "features": ["a"]}}
    cfg = AggregatorConfig.from_dict({**base, "limits": {"inbox_bytes": 1024, "status_rate": 5}})
    assert cfg.limits == Limits(inbox_bytes=1024, status_rate=5)
    assert AggregatorConfig.from_dict(base).limits == Limits()
    with pytest.raises(ConfigError, match="limits"):
        AggregatorConfig.from_dict({**base, "limits": {"inbox_megabytes": 1}})
    with pytest.raises(ConfigError, match=r"limits\.drain_seconds"):
        AggregatorConfig.from_dict({**base, "limits": {"drain_seconds": "soon"}})
