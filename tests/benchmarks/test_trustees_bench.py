"""fedmq bench-trustees at a tiny size: trustees decrypt the round exactly as the whole key does."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from fedmq.benchmarks.inbound_fleet import build_fleet
from fedmq.benchmarks.trustees import ceremony, measure
from fedmq.cli import main


@pytest.fixture(scope="module")
def key():
    return ceremony(512, 3, 2)


def test_trustees_decrypt_the_robust_groups_as_the_whole_key_does(key, tmp_path):
    fleet = build_fleet(bits=512, d=5, updates=6, seed=1, key=(key.public_key, key.private_key))
    cost = measure(fleet, key, repeats=1, state_dir=tmp_path)
    assert cost.equal
    # Six devices: three groups of two, each decrypted by its own request; k replies each.
    assert (cost.devices, cost.d, cost.requests, cost.trustees) == (6, 5, 3, 3)
    assert cost.messages == 2 * 3 * (1 + 3)  # per decryption: votes, then partials
    numbers = {k: v for k, v in asdict(cost).items() if k != "equal"}
    assert all(v > 0 for v in numbers.values()), numbers
    # The estimate sums each request's slowest trustee and the aggregator's part.
    assert cost.added >= cost.aggregator_added
    assert cost.reply_bytes > cost.ciphertexts * 2 * 512 // 4  # values and proofs, hex


def test_cli_prints_the_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "trustees.json"
    assert main(["bench-trustees", "--devices", "6", "--dims", "3", "--bits", "512",
                 "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "phe generate_keypair" in text and "bytes/reply" in text
    assert "yes |" in text and "NO" not in text
    doc = json.loads(out.read_text())
    assert [k["bits"] for k in doc["keygen"]] == [512]
    [cost] = doc["rounds"]
    assert cost["devices"] == 6 and cost["d"] == 3 and cost["equal"] is True
