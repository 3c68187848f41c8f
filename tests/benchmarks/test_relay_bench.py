"""fedmq bench-relay --quick: the same fleet behind one gateway and behind two relays.

Real brokers (Mosquitto, or the embedded one), real relays and agents in their own
processes, real Paillier (1024 bits). The two setups must end in the same model
bit for bit, and the table must say so round by round.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from mqtt_support import mosquitto_binary

from fedmq.benchmarks.relay import JSON_FILE, TABLE_FILE, Comparison
from fedmq.benchmarks.relay_setups import Plan, RoundRecord, SetupResult
from fedmq.cli import main


def table_rows(text: str) -> list[list[str]]:
    """The per-round rows of the table (phase, round, ..., bit-equal)."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(("| statistics", "| training", "| evaluation"))]


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_quick_bench_two_relays_equal_the_single_gateway_exactly(broker, tmp_path, capsys):
    if broker == "mosquitto":
        mosquitto_binary()  # skips without it
    code = main(["bench-relay", "--quick", "--workers", "1", "--broker", broker,
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "final global parameters: EXACTLY equal (bit for bit)" in out
    run_dir = (tmp_path / "latest").resolve()
    table = (run_dir / TABLE_FILE).read_text()
    assert "2 relays x 10" in table and f"{broker} brokers" in table
    rows = table_rows(table)
    # The statistics round, 3 training rounds, the final evaluation: all 20 devices each.
    assert [(r[0], r[1]) for r in rows] == [("statistics", "0"), ("training", "1"),
                                            ("training", "2"), ("training", "3"),
                                            ("evaluation", "4")]
    for phase, _round, s_single, s_relayed, up_single, up_relayed, devices, same in rows:
        assert same == "yes" and devices == "20/20", phase
        assert float(s_single) > 0 and float(s_relayed) > 0
        # Upstream the top gateway gets 2 partial sums instead of 20 updates; each partial
        # also carries 200 bytes of attestation per contributor (protocol.partial).
        attestations = 20 * 200
        assert 0 < int(up_relayed) - attestations < int(up_single) / 4, phase
    doc = json.loads((run_dir / JSON_FILE).read_text())
    assert doc["equal"] is True and doc["relayed"]["relay_partials"] == 10  # 2 x 5 rounds
    assert doc["relayed"]["rss"]["relays"] > 0 and doc["single"]["rss"]["aggregator"] > 0
    assert doc["single"]["broker_complaints"] == 0 == doc["relayed"]["broker_complaints"]
    # The agents of both setups used the same keys: one signing key per device.
    assert len(list((run_dir / "agents").glob("*/signing.key"))) == 20


def _setup(name: str, params: list[float]) -> SetupResult:
    raw = np.asarray(params, dtype=np.float64).tobytes()
    rounds = (RoundRecord("training", 1, 0.5, 100, 2, "all", "d", raw),)
    return SetupResult(name, rounds, raw, {"aggregator": 1}, 0, 1.0)


def test_a_difference_in_the_last_bit_is_reported():
    single = _setup("single", [0.1, 0.2])
    nudged = np.nextafter(0.2, 1.0)  # one ulp away: "close" is not "equal"
    relayed = _setup("relayed", [0.1, float(nudged)])
    assert Comparison(single, _setup("relayed", [0.1, 0.2])).equal
    comparison = Comparison(single, relayed)
    assert not comparison.equal and not comparison.rounds_equal
    assert 0 < comparison.max_difference() < 1e-15
    table = comparison.table(_plan())
    assert "DIFFERENT" in table and table_rows(table)[0][-1] == "NO"
    other_digest = replace(relayed, final=single.final, rounds=tuple(
        replace(r, params=single.rounds[0].params, digest="e") for r in relayed.rounds))
    assert not Comparison(single, other_digest).equal  # the decrypted totals differ


def _plan() -> Plan:
    return Plan(run_dir=str(Path(".")), per_relay=1)
