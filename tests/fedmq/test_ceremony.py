"""fedmq init gateway --trustees: the dealer writes shares to trustees, never the whole key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.keys import load_aggregator_keys
from fedmq.aggregator.trustees import TrusteeSet
from fedmq.broker.cli import load_settings
from fedmq.cli import main
from fedmq.edge_agent.config import AgentConfig
from fedmq.protocol.crypto.paillier import encrypt_ints, fingerprint
from fedmq.protocol.crypto.threshold import combine, partial_decrypt, verify_partial
from fedmq.trustee.config import TrusteeConfig
from fedmq.trustee.service import load_share


def init(tmp_path: Path, *extra: str) -> Path:
    gw = tmp_path / "gw"
    assert main(["init", "gateway", str(gw), "--fleet", "plant", "--bits", "512", "--port",
                 "8883", "--devices", "dev-a,dev-b", "--loopback", *extra]) == 0
    return gw


def test_the_dealer_writes_one_share_per_trustee_and_no_private_key(tmp_path: Path) -> None:
    gw = init(tmp_path, "--trustees", "3", "--threshold", "2")
    agg = AggregatorConfig.from_file(gw / "aggregator.toml")
    assert agg.trustees_file == str(gw / "state" / "trustees.json")
    (public, private), signer = load_aggregator_keys(agg)
    assert private is None and not (gw / "state" / "paillier.key").exists()
    assert not any("paillier" in p.name for p in gw.rglob("*"))
    found = TrusteeSet.load(gw / "state" / "trustees.json")
    assert (found.public.threshold, found.public.trustees) == (2, 3)
    shares = []
    for name in ("trustee-1", "trustee-2", "trustee-3"):
        bundle = gw / "trustees" / name
        config = TrusteeConfig.from_file(bundle / "trustee.toml")
        assert (config.trustee_id, config.mqtt.username, config.mqtt.tls) == (name, name, True)
        assert config.aggregator_signing_key == signer.public_hex
        for secret in ("share.json", "signing.key", "mqtt.password"):
            assert stat.S_IMODE((bundle / secret).stat().st_mode) == 0o600, secret
        shares.append(load_share(config.share_file))
        assert found.trustees[name].index == shares[-1].index
    # Devices pin the threshold key; two shares decrypt what they encrypt.
    agent = AgentConfig.from_file(gw / "devices" / "dev-a" / "agent.toml")
    assert agent.key_fingerprint == fingerprint(public) == fingerprint(found.public.public_key)
    ciphertexts = encrypt_ints(public, [41, 1])
    partials = [partial_decrypt(s, ciphertexts, context=b"c") for s in shares[1:]]
    for p in partials:
        verify_partial(found.public, ciphertexts, p, context=b"c")
    assert combine(found.public, ciphertexts, partials) == [41, 1]
    # The broker knows the trustees as trustees (their own reply topic only), not as agents.
    broker = load_settings(gw / "broker.toml")
    acl = broker.fleet_acl()
    assert acl is not None and acl.trustee_users == ("trustee-1", "trustee-2", "trustee-3")
    assert "trustee-1" not in acl.agents
    record = json.loads((gw / "gateway.json").read_text())
    assert record["trustees"] == ["trustee-1", "trustee-2", "trustee-3"]


@pytest.mark.parametrize("flags, says", [
    (("--trustees", "3", "--threshold", "1"), "--threshold 1 is not in 2..3"),
    (("--trustees", "3", "--threshold", "4"), "--threshold 4 is not in 2..3"),
    (("--trustees", "4", "--threshold", "2"), "--threshold 2 is not in 3..4: a decryption "
     "needs a majority"),
    (("--trustees", "1"), "--trustees 1 is not in 2..16"),
    (("--threshold", "2"), "--threshold goes with --trustees K"),
])
def test_a_threshold_that_lets_one_trustee_decrypt_is_refused(
        tmp_path: Path, flags: tuple[str, ...], says: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    gw = tmp_path / "gw"
    assert main(["init", "gateway", str(gw), "--devices", "dev-a", *flags]) != 0
    assert says in capsys.readouterr().err
    assert not gw.exists()


def test_trustee_enroll_writes_the_trustees_own_list(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    gw = init(tmp_path, "--trustees", "2")
    keys = tmp_path / "keys.csv"
    keys.write_text("dev-a," + "ab" * 32 + "\ndev-b," + "cd" * 32 + "\n")
    config = gw / "trustees" / "trustee-1" / "trustee.toml"
    assert main(["trustee", "enroll", "--config", str(config), "--from-file", str(keys)]) == 0
    assert "dev-b enrolled in" in capsys.readouterr().out
    listed = json.loads((gw / "trustees" / "trustee-1" / "allow_list.json").read_text())
    assert sorted(listed["agents"]) == ["dev-a", "dev-b"]
    assert not (gw / "trustees" / "trustee-2" / "allow_list.json").exists()  # each its own
    assert main(["trustee", "enroll", "--config", str(config)]) != 0
    assert "trustee enroll needs --from-file" in capsys.readouterr().err
