"""Device-level DP through the real MQTT path: noised sums, the budget, the ledger's life."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from support import SPEC, agent_config, local_data

from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.privacy import LEDGER_FILE, privacy_terms
from fedmq.aggregator.schema import PrivacyTable
from fedmq.aggregator.service import RoundFailed
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.models import load_model
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.errors import ConfigError
from fedmq.protocol.privacy.terms import PrivacyTerms
from fedmq.protocol.topics import Topics

pytestmark = pytest.mark.slow


def _terms(rounds: int, quorum: int, **table: Any) -> PrivacyTerms:
    return privacy_terms(PrivacyTable(**table), spec=SPEC, rounds=rounds, quorum=quorum,
                         codec=CodecParams())


def _direct_epsilon(terms: PrivacyTerms, devices: list[int]) -> float:
    """What dp-accounting says for the logged rounds, composed here without fedmq's ledger."""
    assert terms.device is not None
    acc = RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL)
    for m in devices:
        acc.compose(dp_accounting.ZCDpEvent(terms.device.round_rho(SPEC.n_params, m)))
    return float(acc.get_epsilon(terms.device.delta))


def _agents(port: int, n: int, tmp_path: Path, **extra: Any) -> list[EdgeAgent]:
    return [EdgeAgent(agent_config(port, f"agent-{i}", state_dir=str(tmp_path / f"a{i}"),
                                   **extra.get(f"agent-{i}", {})),
                      data=local_data(i, 60 + 10 * i)) for i in range(n)]


def test_a_dp_run_reports_epsilon_per_round_and_no_exact_totals(
        broker_port: int, make_aggregator: Any, run_agents: Any, tmp_path: Path) -> None:
    terms = _terms(3, 3, epsilon=30.0, clip=1.0)
    aggregator = make_aggregator(broker_port, rounds=3, quorum=3, min_agents=4,
                                 config={"privacy": terms})
    run_agents(*_agents(broker_port, 4, tmp_path))
    aggregator.run()
    spent = [r.epsilon for r in aggregator.results]
    devices = [len(r.reported) for r in aggregator.results]
    assert len(spent) == 3 and all(e is not None for e in spent)
    assert spent == sorted(spent) and spent[-1] <= 30.0
    # Each round's epsilon is what dp-accounting gives for the rounds so far, charged with
    # the devices that actually reported (4 > quorum 3: less than planned).
    for k in range(3):
        assert spent[k] == pytest.approx(_direct_epsilon(terms, devices[:k + 1]), rel=1e-9)
    # No exact fleet totals: no evaluation section, no final evaluation round.
    assert all(r.evaluation is None for r in aggregator.results)
    assert aggregator.final_evaluation is None
    with open(aggregator.store.log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["epsilon"]) for r in rows] == pytest.approx(spent, rel=1e-5)
    ledger = json.loads((aggregator.store.run_dir / LEDGER_FILE).read_bytes())
    assert [c["devices"] for c in ledger["charges"]] == devices
    assert all(r.total_weight == len(r.reported) for r in aggregator.results)  # unweighted


def test_the_run_ends_before_a_round_that_could_pass_the_budget(
        broker_port: int, make_aggregator: Any, run_agents: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # z fixed at 2: one round at the quorum costs about epsilon 2.6, two about 3.9.
    terms = _terms(5, 2, epsilon=3.0, noise_multiplier=2.0)
    aggregator = make_aggregator(broker_port, rounds=5, quorum=2, min_agents=3,
                                 config={"privacy": terms})
    run_agents(*_agents(broker_port, 3, tmp_path))
    with caplog.at_level(logging.WARNING):
        params = aggregator.run()
    assert 1 <= len(aggregator.results) < 5
    assert aggregator.results[-1].epsilon is not None
    assert aggregator.results[-1].epsilon <= 3.0
    assert "beyond [privacy] epsilon = 3" in caplog.text
    _, saved, _ = load_model(aggregator.store.model_path)
    assert np.allclose(saved, params)  # the last model is saved ...
    assert aggregator.checkpoints.load().status == "finished"  # ... and the run ended
    assert aggregator.ended == "budget"  # fedmq aggregator says "run ended after 1 of 5"


def test_a_restarted_aggregator_keeps_the_run_ledger(
        broker_port: int, make_aggregator: Any, run_agents: Any, tmp_path: Path) -> None:
    terms = _terms(4, 2, epsilon=40.0)
    first = make_aggregator(broker_port, rounds=4, quorum=2, min_agents=3,
                            config={"privacy": terms},
                            on_round=lambda r: first.stop() if r.round_id == 2 else None)
    agents = run_agents(*_agents(broker_port, 3, tmp_path))
    with pytest.raises(RoundFailed):
        first.run()
    before = [len(r.reported) for r in first.results]
    assert len(before) == 2
    second = make_aggregator(broker_port, rounds=4, quorum=2, min_agents=3,
                             config={"privacy": terms})
    second.run()
    after = [len(r.reported) for r in second.results]
    assert [r.round_id for r in second.results] == [3, 4]
    # Round 3's epsilon composes rounds 1-2 of the first process: nothing was reset.
    assert second.results[0].epsilon == pytest.approx(
        _direct_epsilon(terms, before + after[:1]), rel=1e-9)
    assert second.results[-1].epsilon == pytest.approx(
        _direct_epsilon(terms, before + after), rel=1e-9)
    assert agents


def test_a_device_whose_own_ledger_is_spent_sits_out_and_the_fleet_goes_on(
        broker_port: int, make_aggregator: Any, run_agents: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    terms = _terms(3, 2, epsilon=30.0)
    assert terms.device is not None
    one_round = _direct_epsilon(terms, [2])
    aggregator = make_aggregator(broker_port, rounds=3, quorum=2, min_agents=3,
                                 round_timeout=20.0, config={"privacy": terms})
    # agent-2 allows itself a bit more than one round's worth of its own budget.
    agents = _agents(broker_port, 3, tmp_path,
                     **{"agent-2": {"max_epsilon": one_round * 1.2}})
    run_agents(*agents)
    with caplog.at_level(logging.INFO):
        aggregator.run()
    reported = [set(r.reported) for r in aggregator.results]
    assert "agent-2" in reported[0]
    assert all("agent-2" not in r and len(r) == 2 for r in reported[1:])
    assert aggregator.results[1].skipped == {"privacy-budget": 1}
    assert "beyond its own max_epsilon" in caplog.text
    # Its ledger holds the one round it served, and says so after a restart of the agent.
    ledger = json.loads((tmp_path / "a2" / "privacy_ledger.json").read_bytes())
    assert [e["round_id"] for e in ledger["entries"]] == [1]


def test_dp_without_datasheet_scaling_is_refused_unless_exact_aggregates_allowed() -> None:
    unscaled = SPEC.__class__(kind="logistic", features=SPEC.features, n_classes=2)
    terms = _terms(3, 1, epsilon=3.0)
    with pytest.raises(ConfigError, match="exact_aggregates"):
        AggregatorConfig(topics=Topics("t"), spec=unscaled, privacy=terms)
    allowed = _terms(3, 1, epsilon=3.0, exact_aggregates=True)
    assert AggregatorConfig(topics=Topics("t"), spec=unscaled, privacy=allowed).needs_statistics


def test_a_corrupt_run_ledger_stops_the_resume(tmp_path: Path) -> None:
    from fedmq.aggregator.privacy import FleetBudget
    terms = _terms(3, 2, epsilon=3.0)
    assert terms.device is not None
    (tmp_path / LEDGER_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable privacy ledger"):
        FleetBudget(terms.device, SPEC.n_params).use(tmp_path)


def test_sample_level_dpsgd_and_device_level_together_over_mqtt(
        broker_port: int, make_aggregator: Any, run_agents: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    from fedmq.edge_agent.sample_privacy import SampleDpLedger
    from fedmq.protocol.privacy.accounting import epsilon_spent, sample_level_event

    terms = _terms(3, 2, epsilon=30.0, sample_epsilon=4.0, sample_clip=1.0)
    assert terms.device is not None and terms.sample is not None
    aggregator = make_aggregator(broker_port, rounds=3, quorum=2, min_agents=3,
                                 round_timeout=20.0, config={"privacy": terms})
    # agent-2 caps its own DP-SGD budget below one run's (3 of 4: one round costs 2.6,
    # two 3.4): it trains round 1 only.
    agents = _agents(broker_port, 3, tmp_path,
                     **{"agent-2": {"max_sample_epsilon": 3.0}})
    run_agents(*agents)
    with caplog.at_level(logging.INFO):
        aggregator.run()
    assert len(aggregator.results) == 3
    assert "DP-SGD (noise multiplier" in caplog.text
    for i in range(3):
        entries = SampleDpLedger.in_state_dir(tmp_path / f"a{i}").entries()
        spent = epsilon_spent([sample_level_event(e.noise_multiplier, e.sampling_rate,
                                                  e.steps) for e in entries], 1e-5)
        assert spent <= (4.0 if i < 2 else 3.0) + 1e-9
        assert len(entries) == (3 if i < 2 else len(entries))
    capped = SampleDpLedger.in_state_dir(tmp_path / "a2").entries()
    assert len(capped) == 1
    assert "beyond its own max_sample_epsilon 3" in caplog.text
    assert any(r.skipped.get("privacy-budget") for r in aggregator.results)


def test_noise_sized_for_more_devices_than_the_quorum_is_refused() -> None:
    from fedmq.aggregator.config import RoundPolicy
    with pytest.raises(ConfigError, match="under-noised"):
        AggregatorConfig(topics=Topics("t"), spec=SPEC, privacy=_terms(3, 5, epsilon=3.0),
                         policy=RoundPolicy(quorum=2))


def test_a_round_rerun_after_a_restart_keeps_the_larger_charge(tmp_path: Path) -> None:
    from fedmq.aggregator.privacy import FleetBudget
    terms = _terms(3, 2, epsilon=30.0)
    assert terms.device is not None
    budget = FleetBudget(terms.device, SPEC.n_params)
    budget.use(tmp_path)
    budget.charge(1, 5)
    budget.charge(1, 3)  # re-run with fewer devices: less noise, a larger charge
    again = FleetBudget(terms.device, SPEC.n_params)
    again.use(tmp_path)
    assert [(c.round_id, c.devices) for c in again.ledger.charges] == [(1, 3)]
    again.charge(1, 4)
    assert [(c.round_id, c.devices) for c in again.ledger.charges] == [(1, 3)]


def test_the_budget_counts_a_round_against_the_colluding_devices(tmp_path: Path) -> None:
    """Charged as if the colluders' shares were no noise: a round closed by the quorum
    costs z's full rho whatever c, one with more devices less; the stop says why."""
    from fedmq.aggregator.privacy import BudgetSpent, FleetBudget
    terms = _terms(3, 4, epsilon=3.0, noise_multiplier=2.0, colluding_devices=2)
    assert terms.device is not None and terms.device.colluding_devices == 2
    z, d = terms.device.noise_multiplier, SPEC.n_params
    budget = FleetBudget(terms.device, d)
    budget.use(tmp_path)
    budget.charge(1, 4)
    budget.charge(2, 6)  # 4 honest shares sized for 2: half the rho
    assert [c.rho for c in budget.ledger.charges] == pytest.approx(
        [1 / (2 * z**2), 1 / (4 * z**2)], rel=1e-12)
    assert budget.spent == pytest.approx(_direct_epsilon(terms, [4, 6]), rel=1e-9)
    with pytest.raises(BudgetSpent, match=r"at the quorum \(4 devices, 2 of them colluding\)"):
        budget.check_next(3)
    with pytest.raises(ConfigError, match="colluding_devices = 4 must be below"):
        _terms(3, 4, epsilon=3.0, colluding_devices=4)
