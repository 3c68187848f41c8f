from __future__ import annotations

import json
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from support import local_data

from fedmq.edge_agent.health import RoundSkipped, skip_line
from fedmq.edge_agent.sample_privacy import LEDGER_FILE, SampleDpLedger, SampleDpPlan
from fedmq.edge_agent.trainer import train_round
from fedmq.models import ModelSpec
from fedmq.protocol.errors import ConfigError, ProtocolError
from fedmq.protocol.messages import RoundMessage, TrainingSettings
from fedmq.protocol.privacy.accounting import calibrate_dpsgd, sample_level_epsilon
from fedmq.protocol.privacy.terms import SampleDpParams

SETTINGS = TrainingSettings(epochs=2, batch_size=16, learning_rate=0.1)
PARAMS = SampleDpParams(epsilon=3.0, delta=1e-5, clip=1.0, rounds=10)
ROUNDS = 10


@pytest.fixture(scope="module")
def plan() -> SampleDpPlan:
    return SampleDpPlan.build(200, SETTINGS, ROUNDS, PARAMS)


def rdp_epsilon_directly(z: float, q: float, steps: int, delta: float) -> float:
    """What dp-accounting says for `steps` Poisson-sampled Gaussian steps, built here."""
    accountant = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    return float(accountant.compose(step, steps).get_epsilon(delta))


def test_plan_follows_the_settings(plan: SampleDpPlan) -> None:
    # q = batch / n, T = ceil(epochs / q); z measured: 2.115 for epsilon 3.
    assert plan.sampling_rate == pytest.approx(0.08) and plan.steps_per_round == 25
    assert plan.expected_batch == pytest.approx(16.0)
    assert plan.noise_multiplier == pytest.approx(2.115, abs=1e-3)
    dp = plan.dpsgd()
    assert (dp.clip, dp.steps, dp.noise_multiplier) == (1.0, 25, plan.noise_multiplier)
    small = SampleDpPlan.build(10, SETTINGS, 1, PARAMS)  # fewer rows than a batch
    assert (small.sampling_rate, small.steps_per_round, small.expected_batch) == (1.0, 2, 10.0)


def test_plan_epsilon_matches_the_accountant_composed_step_by_step(plan: SampleDpPlan) -> None:
    for rounds in (1, 4, ROUNDS):
        direct = rdp_epsilon_directly(plan.noise_multiplier, plan.sampling_rate,
                                      rounds * plan.steps_per_round, PARAMS.delta)
        assert plan.epsilon_after(rounds) == pytest.approx(direct, rel=1e-9)
    assert plan.epsilon_after(ROUNDS) <= PARAMS.epsilon


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_calibrated_noise_is_the_smallest_within_budget(epsilon: float) -> None:
    steps = ROUNDS * 25
    z = calibrate_dpsgd(epsilon, 1e-5, 0.08, steps)
    assert sample_level_epsilon(z, 0.08, steps, 1e-5) <= epsilon
    assert sample_level_epsilon(z * 0.999, 0.08, steps, 1e-5) > epsilon


def test_params_are_validated() -> None:
    with pytest.raises(ProtocolError, match="sample-level epsilon"):
        SampleDpParams(epsilon=0.0, delta=1e-5, clip=1.0, rounds=10)
    with pytest.raises(ProtocolError, match="sample-level delta"):
        SampleDpParams(epsilon=1.0, delta=1.0, clip=1.0, rounds=10)
    with pytest.raises(ProtocolError, match="sample-level clip"):
        SampleDpParams(epsilon=1.0, delta=1e-5, clip=float("inf"), rounds=10)


def test_ledger_charges_until_the_budget_then_refuses(tmp_path: Path,
                                                      plan: SampleDpPlan) -> None:
    ledger = SampleDpLedger.in_state_dir(tmp_path)
    spent = [ledger.charge("run-1", r, plan) for r in range(1, ROUNDS + 1)]
    assert spent == sorted(spent) and spent[-1] <= PARAMS.epsilon
    assert spent[-1] == pytest.approx(plan.epsilon_after(ROUNDS), rel=1e-9)
    before = (tmp_path / LEDGER_FILE).read_bytes()
    with pytest.raises(RoundSkipped, match=r"spent epsilon 3\.000 of 3") as info:
        ledger.charge("run-1", ROUNDS + 1, plan)
    assert info.value.code == "privacy-budget"
    assert (tmp_path / LEDGER_FILE).read_bytes() == before  # a refusal charges nothing
    line = skip_line(ROUNDS + 1, info.value.code, str(info.value))
    assert "\n" not in line and "privacy budget" in line
    # Another run has its own budget; this run's is still spent.
    assert ledger.charge("run-2", 1, plan) == pytest.approx(plan.epsilon_after(1), rel=1e-9)


def test_ledger_survives_a_restart(tmp_path: Path, plan: SampleDpPlan) -> None:
    first = SampleDpLedger.in_state_dir(tmp_path)
    for r in range(1, ROUNDS):
        first.charge("run-1", r, plan)
    restarted = SampleDpLedger.in_state_dir(tmp_path)  # a new agent process reads the file
    assert restarted.spent("run-1", PARAMS.delta) == pytest.approx(
        plan.epsilon_after(ROUNDS - 1), rel=1e-9)
    restarted.charge("run-1", ROUNDS, plan)
    with pytest.raises(RoundSkipped) as info:
        SampleDpLedger.in_state_dir(tmp_path).charge("run-1", ROUNDS + 1, plan)
    assert info.value.code == "privacy-budget"


@pytest.mark.parametrize("content", [b"{not json", b'{"schema": "other"}',
                                     b'{"schema": "fedmq.sample-dp-ledger/1", "entries": '
                                     b'[{"run_id": "r", "round_id": 1}]}', b"\xff\xfe",
                                     # tampered: negative steps would cancel real charges
                                     b'{"schema": "fedmq.sample-dp-ledger/1", "entries": '
                                     b'[{"run_id": "run-1", "round_id": 1, "noise_multiplier"'
                                     b': 2.0, "sampling_rate": 0.08, "steps": -1000}]}',
                                     # out of the accountant's domain: it would raise later
                                     b'{"schema": "fedmq.sample-dp-ledger/1", "entries": '
                                     b'[{"run_id": "run-1", "round_id": 1, "noise_multiplier"'
                                     b': 2.0, "sampling_rate": 1.5, "steps": 3}]}'])
def test_corrupt_ledger_refuses_with_one_line_naming_the_file(
        tmp_path: Path, plan: SampleDpPlan, content: bytes) -> None:
    path = tmp_path / LEDGER_FILE
    path.write_bytes(content)
    ledger = SampleDpLedger(path)
    with pytest.raises(ConfigError, match="privacy ledger") as direct:
        ledger.entries()
    with pytest.raises(RoundSkipped) as info:
        ledger.charge("run-1", 1, plan)
    message = str(info.value)
    assert info.value.code == "privacy-budget" and str(path) in message
    assert "\n" not in message and str(direct.value) == message
    assert str(path) not in info.value.detail  # the gateway never sees local paths
    assert path.read_bytes() == content  # never reset


def test_ledger_file_is_plain_json_of_the_events(tmp_path: Path, plan: SampleDpPlan) -> None:
    SampleDpLedger.in_state_dir(tmp_path).charge("run-1", 3, plan)
    doc = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert doc["entries"] == [{"run_id": "run-1", "round_id": 3,
                               "noise_multiplier": plan.noise_multiplier,
                               "sampling_rate": plan.sampling_rate, "steps": 25}]


def test_train_round_with_dpsgd_uses_fresh_noise_even_with_a_seed(plan: SampleDpPlan) -> None:
    data = local_data(0, 200)
    spec = ModelSpec(kind="logistic", features=data.features, n_classes=2)
    msg = RoundMessage(fleet="f", round_id=1, model_version=0, state="training", spec=spec,
                       params=tuple(np.zeros(spec.n_params)), deadline=0.0, settings=SETTINGS,
                       key_fingerprint="k" * 64, codec_digest="d" * 32, run_id="r1")
    one = train_round(msg, data, max_weight=10_000, seed=3, dpsgd=plan.dpsgd())
    two = train_round(msg, data, max_weight=10_000, seed=3, dpsgd=plan.dpsgd())
    plain = train_round(msg, data, max_weight=10_000, seed=3)
    assert one.weight == 200 and one.loss_after < one.loss_before
    assert not np.array_equal(one.delta, two.delta)
    assert not np.array_equal(one.delta, plain.delta)


def test_rounds_with_different_plans_compose_as_the_accountant_says(
        tmp_path: Path, plan: SampleDpPlan) -> None:
    # The device's row count changed mid-run, so its plan (q, z) did too.
    other = SampleDpPlan.build(100, SETTINGS, ROUNDS, PARAMS)
    ledger = SampleDpLedger.in_state_dir(tmp_path)
    for r, p in enumerate([plan, other, plan], start=1):
        ledger.charge("run-1", r, p)
    accountant = rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    for p in (plan, other, plan):
        step = dp_accounting.PoissonSampledDpEvent(
            p.sampling_rate, dp_accounting.GaussianDpEvent(p.noise_multiplier))
        accountant.compose(step, p.steps_per_round)
    assert ledger.spent("run-1", 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
