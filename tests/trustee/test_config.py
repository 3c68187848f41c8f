"""trustee.config: trustee.toml is checked whole; a bad value is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmq.protocol.errors import ConfigError
from fedmq.trustee.config import TrusteeConfig

GOOD = """
[trustee]
id = "trustee-1"
share_file = "share.json"
signing_key_file = "signing.key"
allow_list_file = "allow_list.json"
[fleet]
name = "plant"
aggregator_signing_key = "%s"
[mqtt]
port = 8883
""" % ("ab" * 32)


def test_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "trustee.toml"
    path.write_text(GOOD)
    config = TrusteeConfig.from_file(path)
    assert config.share_file == str(tmp_path / "share.json")
    assert config.ledger_file == tmp_path / "state" / "ledger.jsonl"
    assert (config.min_group, config.topics.fleet, config.client_id) == (2, "plant",
                                                                          "trustee-1")


@pytest.mark.parametrize("edit, says", [
    (("min_group", 'allow_list_file = "allow_list.json"\nmin_group = 1'), "min_group"),
    (("aggregator_signing_key", 'aggregator_signing_key = "xyz"\n#'), "aggregator_signing_key"),
    (("id", 'id = "trustee 1"'), "invalid trustee id"),
    (("unknown", 'share_file = "share.json"\nshares = 3'), "unknown key 'shares'"),
])
def test_a_mistake_is_one_line_naming_the_key(tmp_path: Path, edit: tuple[str, str],
                                             says: str) -> None:
    key, line = edit
    old = {"min_group": 'allow_list_file = "allow_list.json"',
           "aggregator_signing_key": f'aggregator_signing_key = "{"ab" * 32}"',
           "id": 'id = "trustee-1"', "unknown": 'share_file = "share.json"'}[key]
    path = tmp_path / "trustee.toml"
    path.write_text(GOOD.replace(old, line))
    with pytest.raises(ConfigError, match=says) as caught:
        TrusteeConfig.from_file(path)
    assert "\n" not in str(caught.value)
