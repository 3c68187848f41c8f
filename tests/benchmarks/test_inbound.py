"""fedmq bench-inbound at a tiny size: the stages add up and the round decrypts exactly."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from fedmq.benchmarks.inbound import STAGES, _close, check_sum, end_to_end, measure, open_round
from fedmq.benchmarks.inbound_fleet import build_fleet
from fedmq.cli import main
from fedmq.protocol.crypto.signing import public_key_hex
from fedmq.protocol.errors import ProtocolError
from fedmq.protocol.wire import decode_update


@pytest.fixture(scope="module")
def fleet(keypair):
    return build_fleet(bits=512, d=5, updates=20, seed=3, key=keypair)


def test_the_payloads_are_genuine_distinct_signed_updates(fleet):
    agents = [a for a, _ in fleet.payloads]
    keys = {public_key_hex(k) for k in fleet.allow_list.values()}
    assert len(set(agents)) == 20 and len(keys) == 20
    assert len({p for _, p in fleet.payloads}) == 20
    # Each verifies with its own agent's key only.
    state = open_round(fleet)
    first = decode_update(fleet.payloads[0][1], fleet.public_key)
    first.verify(fleet.allow_list[agents[0]])
    with pytest.raises(ProtocolError, match="bad signature"):
        first.verify(fleet.allow_list[agents[1]])
    assert state.layout.phase == "training" and [s.name for s in state.layout.sections] == [
        "training", "evaluation"]


def test_the_stages_add_up_and_the_decrypted_sum_is_the_plaintext_sum(fleet, tmp_path, capsys):
    result = measure(fleet, repeats=2, state_dir=tmp_path)
    assert list(result.stages) == list(STAGES) and all(s > 0 for s in result.stages.values())
    assert result.total == pytest.approx(sum(result.stages.values()))
    assert 0 < result.validation < result.stages["decode"]
    table = result.table()
    rows = {line.split("|")[1].strip(): line.split("|")[2:5] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| stage ")}
    shares = [float(rows[s][2].strip().rstrip("%")) for s in STAGES]
    assert sum(shares) == pytest.approx(100.0, abs=0.1 * len(STAGES))
    assert float(rows["sum of the stages"][0]) == pytest.approx(result.total, abs=1e-3)
    # measure checked the sums; an altered plaintext sum must fail that check.
    assert result.per_update > 0 and result.speedup == result.per_update / result.end_to_end
    assert f"{result.speedup:.1f}x faster end to end than one fsync per update" in table
    state = open_round(fleet)
    assert result.path + result.close == pytest.approx(result.end_to_end) and result.inline > 0
    assert "target: 2.5 s for admission..persistence is stated for 10,000 updates" in table
    assert "signature worker: end to end" in table and result.worker_start > 0
    assert all(s > 0 for s in end_to_end(fleet, tmp_path / "again"))
    # The baseline persisted each update in its own file, as before group commit.
    assert all(s > 0 for s in end_to_end(fleet, tmp_path / "before", per_update=True))
    assert len(list((tmp_path / "before" / "open_round").glob("*.fmqu"))) == 20
    training, evaluation = fleet.plain_sums
    wrong = replace(fleet, plain_sums=((*training[:-1], training[-1] + 1), evaluation))
    for agent, payload in fleet.payloads:
        state.offer(decode_update(payload, fleet.public_key), agent)
    closing = _close(fleet, state)
    check_sum(fleet, closing)
    with pytest.raises(AssertionError, match="differs"):
        check_sum(wrong, closing)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "inbound.json"
    assert main(["bench-inbound", "--bits", "512", "--dims", "3", "--updates", "8",
                 "--repeats", "1", "--batch", "3", "--state-dir", str(tmp_path),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "end to end, commit (3) + worker" in text and "fsync each (before)" in text
    assert "end to end, signatures inline" in text and "admission .. persistence" in text
    assert "faster end to end than one fsync per update" in text
    [doc] = json.loads(out.read_text())
    assert doc["updates"] == 8 and doc["d"] == 3 and set(doc["stages"]) == set(STAGES)
    assert doc["batch"] == 3 and doc["speedup"] == pytest.approx(
        doc["per_update"] / doc["end_to_end"])
    assert doc["total"] == pytest.approx(sum(doc["stages"].values()))


def test_the_table_says_whether_the_issues_target_is_met(fleet, tmp_path):
    result = measure(fleet, repeats=1, state_dir=tmp_path)
    at_size = replace(result, bits=2048, d=100, updates=10_000)
    met = replace(at_size, path=2.4, end_to_end=2.9).target
    assert met.startswith("target met: admission..persistence of 10000 updates in 2.40 s")
    assert "close reported separately, 0.50 s" in met
    assert replace(at_size, path=2.6, end_to_end=3.0).target.startswith("target NOT met")
