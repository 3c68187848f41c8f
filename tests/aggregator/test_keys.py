from __future__ import annotations

import stat

import pytest

from aggregator.keys import load_or_create_keypair
from protocol.errors import ConfigError
from protocol.paillier import fingerprint


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
