"""``fedmq simulate --dp-epsilon``: epsilon per round, the budget, what dp-accounting says."""

from __future__ import annotations

import csv
import json

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from fedmq.cli import main
from fedmq.protocol.errors import ConfigError
from fedmq.simulation.run import Simulation, SimulationOptions


def _spent(ledger: dict) -> float:
    """epsilon for the logged events, composed directly with dp-accounting."""
    acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
    for charge in ledger["charges"]:
        acc.compose(dp_accounting.ZCDpEvent(charge["rho"]))
    return float(acc.get_epsilon(ledger["delta"]))


def test_a_dp_simulation_stops_at_or_before_its_budget_and_reports_epsilon(tmp_path):
    lines: list[str] = []
    # A fixed, small multiplier: the budget runs out before the 6 rounds asked for.
    opts = SimulationOptions(agents=4, rounds=6, key_bits=512, samples_per_device=200,
                             out_dir=str(tmp_path), workers=0, dp_epsilon=3.0, dp_noise=1.5)
    report = Simulation(opts, progress=lines.append).run()
    run_dir = tmp_path / "latest"
    ledger = json.loads((run_dir / "aggregator" / "latest" / "privacy.json").read_bytes())
    training = [r for r in report.rows if not r.final]
    assert 1 <= len(ledger["charges"]) < 6  # stopped early ...
    assert _spent(ledger) <= 3.0  # ... at or before epsilon 3, as dp-accounting computes it
    assert report.rows[-1].final and report.rows[-1].epsilon == pytest.approx(_spent(ledger))
    # Each row: the epsilon its model cost; the first model (zeros) cost nothing.
    assert training[0].epsilon == 0.0
    assert [r.epsilon for r in report.rows] == sorted(r.epsilon for r in report.rows)
    assert any("privacy budget" in ln or "epsilon" in ln for ln in lines)
    assert any(ln.startswith("privacy: device-level DP") for ln in lines)
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["epsilon"]) == pytest.approx(_spent(ledger), rel=1e-5)
    # Nothing exact left the devices: no statistics round, no fleet metric.
    assert all(r["fleet_accuracy"] == "" for r in rows)


def test_the_cli_flag_is_typed(capsys):
    assert main(["simulate", "--dp-epsilon", "0", "--agents", "2"]) != 0
    err = capsys.readouterr().err
    assert "--dp-epsilon" in err and "Traceback" not in err


def test_dp_defaults_to_datasheet_scaling_and_federated_scaling_is_outside_the_budget():
    assert SimulationOptions(dp_epsilon=3.0).scaling == "datasheet"
    assert SimulationOptions().scaling == "federated"
    explicit = SimulationOptions(dp_epsilon=3.0, scaling="federated")
    assert explicit.scaling == "federated"
    with pytest.raises(ConfigError):
        SimulationOptions(dp_epsilon=3.0, scaling="nonsense")
