from __future__ import annotations

import stat

import pytest

from fedmq.aggregator.keys import load_or_create_keypair
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
    assert sorted(p.name for p in (tmp_path / "gw").iterdir()) == [state_file]


@pytest.mark.parametrize("content,says", [
    (b"\x80\xff\x00binary", "not a UTF-8 JSON"), (b"[]", "not a fedmq Paillier private key"),
    (b'{"schema": "fedmq.paillier-private/1", "n": "zz"}', "lacks a valid n"),
])
def test_malformed_key_files_are_config_errors(tmp_path, content, says):
    path = tmp_path / "paillier.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"paillier.key.*{says}"):
        load_or_create_keypair(path, 512)
