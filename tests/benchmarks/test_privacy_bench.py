"""``fedmq bench-privacy --quick``: the whole table through real fleets (small keys)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fedmq.benchmarks.privacy import COLUMNS, markdown
from fedmq.cli import main
from fedmq.protocol.privacy.accounting import PrivacyLedger

# The ledger composes the rounds one event each; calibration composed them as one event
# of rounds * rho. zCDP composition is additive, so both are the same number up to
# floating-point rounding in dp-accounting's RDP orders.
RELATIVE = 1e-9


@pytest.mark.slow
def test_quick_table_has_every_epsilon_spends_within_its_target(tmp_path: Path, capsys):
    assert main(["bench-privacy", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    (bench,) = tmp_path.glob("bench-privacy-*")
    with (bench / "privacy.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == COLUMNS
    tasks = {r["task"] for r in rows}
    assert len(tasks) == 2  # the synthetic fleet and the real data set
    for task in tasks:
        assert [r["epsilon"] for r in rows if r["task"] == task] == ["1", "3", "8", "off"]
    for r in rows:
        assert 0.0 <= float(r["accuracy_min"]) <= float(r["accuracy_mean"]) <= 1.0
        assert r["rounds_run"] == r["rounds"] == "3"  # the budget ended no quick run early
        if r["epsilon"] == "off":
            assert r["epsilon_spent"] == r["noise_multiplier"] == r["clip"] == ""
        else:
            target = float(r["epsilon"])
            assert 0 < float(r["epsilon_spent"]) <= target * (1 + RELATIVE)
            assert float(r["noise_multiplier"]) > 0 and float(r["clip"]) > 0
    # The spent epsilon is the ledger's own (the run's privacy.json), not the target.
    ledgers = sorted(bench.glob("real/eps-3.0/latest/aggregator/runs/*/privacy.json"))
    assert len(ledgers) == 1
    ledger = PrivacyLedger.from_dict(json.loads(ledgers[0].read_bytes()))
    assert len(ledger.charges) == 3 and ledger.epsilon() <= 3.0 * (1 + RELATIVE)
    (eps3,) = (r for r in rows if r["task"].startswith("breast_cancer") and r["epsilon"] == "3")
    assert float(eps3["epsilon_spent"]) == pytest.approx(ledger.epsilon(), abs=5e-4)
    assert (bench / "privacy.md").read_text(encoding="utf-8").strip() in printed
    # No DP on the synthetic "off" row: its run directory has no ledger at all.
    assert list(bench.glob("synthetic/eps-off/latest/aggregator/runs/*/rounds.csv"))
    assert not list(bench.glob("synthetic/eps-off/latest/aggregator/runs/*/privacy.json"))


def test_markdown_row_shows_off_without_epsilon():
    row = dict.fromkeys(COLUMNS, "")
    row.update(task="t", epsilon="off", accuracy_mean="0.9", accuracy_min="0.8",
               accuracy_max="0.95", repeats="3", rounds="10", rounds_run="10",
               centralized="0.97", majority_class="0.6", note="n")
    table = markdown([row])
    assert "| t | off | 0.9 (0.8-0.95, n=3) | - | - | - | 10 (10) | 0.97 | 0.6 |" in table


def test_bad_epsilon_is_one_clear_line(capsys):
    assert main(["bench-privacy", "--epsilons", "3", "many"]) != 0
    err = capsys.readouterr().err
    assert "--epsilons: 'many' is neither a number nor 'off'" in err
    assert "Traceback" not in err
