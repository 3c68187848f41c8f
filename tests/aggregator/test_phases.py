"""A run's phases with real agents on a real broker: statistics round, federated evaluation
every round, the final evaluation, and what the gateway says about its fleet's health."""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import FEATURES, SPEC, agent_config, local_data, signer_for

from fedmq.aggregator.config import HealthPolicy
from fedmq.aggregator.runspec import FILE as STATISTICS_FILE
from fedmq.aggregator.runspec import load_run_spec
from fedmq.aggregator.service import RoundFailed
from fedmq.edge_agent.agent import EdgeAgent
from fedmq.edge_agent.data import LocalData
from fedmq.models import ModelSpec, load_model, make_model
from fedmq.models.evaluation import evaluate
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.messages import TrainingSettings
from fedmq.protocol.sums.statistics import StatsParams

pytestmark = pytest.mark.slow

UNSCALED = replace(SPEC, center=None, scale=None)


def _magnified(seed: int, n: int) -> LocalData:
    """Raw sensor-like columns: thousands beside fractions, shifted per device."""
    data = local_data(seed, n)
    return replace(data, X=data.X * (1000.0, 0.001, 1.0) + (5000.0 + 50 * seed, 0.0, -3.0))


def _rounds_csv(aggregator: Any) -> list[dict[str, str]]:
    with open(aggregator.store.log_path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_without_center_and_scale_a_statistics_round_derives_them(
        broker_port, make_aggregator, run_agents):
    agents = run_agents(*(EdgeAgent(agent_config(broker_port, f"agent-{i}"),
                                    data=_magnified(i, 30 + 10 * i)) for i in range(4)))
    aggregator = make_aggregator(broker_port, spec=UNSCALED, min_agents=4, rounds=3)
    final = aggregator.run()
    assert [r.phase for r in aggregator.results] == ["training"] * 3
    assert aggregator.statistics is not None and aggregator.final_evaluation is not None
    from sklearn.preprocessing import StandardScaler

    pooled = np.vstack([a.train_data.X for a in agents])
    ref = StandardScaler().fit(pooled)
    spec, resolution = aggregator.spec, StatsParams().resolution
    assert spec.center is not None and spec.scale is not None
    assert np.abs(np.array(spec.center) - ref.mean_).max() <= resolution
    assert np.abs(np.array(spec.scale) - ref.scale_).max() <= resolution
    run_dir = aggregator.store.run_dir
    assert load_run_spec(run_dir, UNSCALED) == spec
    saved_spec, saved_params, _ = load_model(run_dir / "global_model.npz")
    assert saved_spec == spec and np.allclose(saved_params, final)
    # Standardised, the raw magnitudes train: the model beats the majority class.
    pooled_y = np.concatenate([a.eval_data.y for a in agents])
    evaluation = aggregator.final_evaluation.evaluation
    assert evaluation is not None
    assert evaluation.metrics["accuracy"] > max(pooled_y.mean(), 1 - pooled_y.mean()) + 0.05
    # The final evaluation is the final model's metric on the devices' rows: the same
    # numbers a data scientist with all rows would compute, without anyone having them.
    ref_eval = evaluate(make_model(spec).set_params_vector(final),
                        np.vstack([a.eval_data.X for a in agents]), pooled_y)
    assert evaluation.confusion == ref_eval.confusion
    assert evaluation.metrics["accuracy"] == ref_eval.metrics["accuracy"]
    assert evaluation.metrics["log_loss"] == pytest.approx(ref_eval.metrics["log_loss"],
                                                           abs=1e-6)
    rows = _rounds_csv(aggregator)
    assert [r["phase"] for r in rows] == ["statistics", "training", "training", "training",
                                          "evaluation"]
    assert all(r["fleet_accuracy"] for r in rows[1:]) and not rows[0]["fleet_accuracy"]
    assert float(rows[-1]["fleet_accuracy"]) == pytest.approx(evaluation.metrics["accuracy"])


def test_a_regression_label_is_standardised_and_predictions_keep_its_units(
        broker_port, make_aggregator, run_agents):
    spec = ModelSpec(kind="linear", features=FEATURES)
    rng = np.random.default_rng(5)

    def device(i: int) -> LocalData:
        X = rng.normal(size=(40, 3)) * (1000.0, 1.0, 0.01) + (4000.0 * i, 0, 0)
        y = 60 + X @ (0.002, 0.5, 30.0) + rng.normal(0, 0.1, 40)  # degrees, around 60-80
        return LocalData(X=X, y=y, features=FEATURES, label="y")

    agents = run_agents(*(EdgeAgent(agent_config(broker_port, f"agent-{i}"), data=device(i))
                          for i in range(3)))
    aggregator = make_aggregator(broker_port, spec=spec, min_agents=3, rounds=6)
    final = aggregator.run()
    y = np.concatenate([a.train_data.y for a in agents])
    assert aggregator.spec.target_center == pytest.approx(y.mean(), abs=1e-6)
    assert aggregator.spec.target_scale == pytest.approx(y.std(), abs=1e-6)
    assert all(r.clipped_share == 0 for r in aggregator.results)  # far from the codec's clip
    assert aggregator.final_evaluation is not None
    evaluation = aggregator.final_evaluation.evaluation
    assert evaluation is not None and evaluation.metrics["r2"] > 0.9
    model = make_model(aggregator.spec).set_params_vector(final)
    X = np.vstack([a.train_data.X for a in agents])
    assert np.abs(model.predict(X) - y).mean() < 0.2 * y.std()  # in degrees, not z-scores


def test_a_device_that_skips_is_counted_and_the_round_does_not_wait_for_it(
        broker_port, make_aggregator, run_agents, caplog):
    caplog.set_level(logging.INFO)
    good = local_data(0, 60)
    run_agents(EdgeAgent(agent_config(broker_port, "agent-0"), data=good),
               EdgeAgent(agent_config(broker_port, "agent-1"), data=local_data(1, 50)),
               EdgeAgent(agent_config(broker_port, "agent-bad"),
                         data=replace(good, y=good.y + 2)))  # classes 2, 3 of a 2-class model
    aggregator = make_aggregator(broker_port, min_agents=3, rounds=3, round_timeout=60.0)
    aggregator.run()
    assert all(r.skipped == {"class-outside-model": 1} for r in aggregator.results)
    assert all(r.closed_by == "all" and r.seconds < 30 for r in aggregator.results)
    # Said in full once (with the fix), then counted: not a line per round.
    assert caplog.text.count("agent-bad skips it (class-outside-model)") == 1
    assert "fix: map its labels to 0..n_classes-1, or raise [model] n_classes" in caplog.text
    assert [r["skipped"] for r in _rounds_csv(aggregator)][:3] == ["class-outside-model:1"] * 3


def test_a_class_no_contributing_device_holds_is_flagged(
        broker_port, make_aggregator, run_agents, caplog):
    """Three classes; only agent-2 holds class 2 and it is always too slow: every round
    closes at its deadline without it, and the gateway says which class is missing."""
    caplog.set_level(logging.INFO)
    spec = replace(SPEC, n_classes=3)
    holder = local_data(2, 40)
    run_agents(EdgeAgent(agent_config(broker_port, "agent-0"), data=local_data(0, 40)),
               EdgeAgent(agent_config(broker_port, "agent-1"), data=local_data(1, 40)),
               EdgeAgent(agent_config(broker_port, "agent-2", straggle_seconds=30.0),
                         data=replace(holder, y=np.full_like(holder.y, 2.0))))
    aggregator = make_aggregator(broker_port, spec=spec, min_agents=3, quorum=2, rounds=3,
                                 round_timeout=1.5, config={"health": HealthPolicy(
                                     missing_class_rounds=3)}, final_evaluation=False)
    aggregator.run()
    assert "class 2 has had no rows in the fleet's totals for 3 rounds (rounds 1-3)" \
        in caplog.text
    assert "devices silent in each of them: agent-2" in caplog.text
    assert "never contributed an update to this run: agent-2" in caplog.text


def test_many_clipped_values_are_reported_at_the_gateway(
        broker_port, make_aggregator, start_agents, caplog):
    caplog.set_level(logging.INFO)
    start_agents(broker_port, 2)
    aggregator = make_aggregator(broker_port, CodecParams(clip=0.001), min_agents=2,
                                 rounds=1, final_evaluation=False)
    aggregator.run()
    (result,) = aggregator.results
    assert result.clipped_share > 0.5
    assert "of the update values were clipped to the codec's bound" in caplog.text


def test_a_resumed_run_keeps_the_statistics_it_trained_with(
        broker_port, make_aggregator, run_agents, caplog, tmp_path: Path):
    caplog.set_level(logging.INFO)
    run_agents(*(EdgeAgent(agent_config(broker_port, f"agent-{i}", exit_when_finished=False),
                           data=_magnified(i, 40)) for i in range(2)))
    first = make_aggregator(broker_port, spec=UNSCALED, min_agents=2, rounds=3,
                            on_round=lambda r: r.round_id == 1 and first.stop())
    with pytest.raises(Exception, match="stopped"):
        first.run()
    spec = first.spec
    assert (first.store.run_dir / STATISTICS_FILE).exists()
    caplog.clear()
    second = make_aggregator(broker_port, spec=UNSCALED, min_agents=2, rounds=3)
    second.run()
    assert second.store.run_dir == first.store.run_dir
    assert second.spec == spec
    assert [r.round_id for r in second.results] == [2, 3]
    assert second.statistics is None and second.final_evaluation is not None
    assert "statistics round" not in caplog.text


def test_a_class_held_only_by_offline_devices_names_them(
        broker_port, make_aggregator, run_agents, caplog):
    """Review of issue 10: with the holders of class 1 enrolled but never started, the
    gateway said 'no device in the fleet holds it'; it names them now."""
    caplog.set_level(logging.INFO)
    spec = replace(SPEC, n_classes=3)
    run_agents(*(EdgeAgent(agent_config(broker_port, f"agent-{i}"), data=local_data(i, 40))
                 for i in range(2)))  # classes 0 and 1 only
    enrolled = {a: signer_for(a).public_key for a in ("agent-0", "agent-1", "agent-7")}
    aggregator = _with_allow_list(make_aggregator, broker_port, spec, enrolled)
    aggregator.run()
    assert ("class 2 has had no rows in the fleet's totals for 3 rounds (rounds 1-3): the "
            "model is not learning it; no device that reported holds it; enrolled devices "
            "not online: agent-7") in caplog.text
    assert "1 enrolled device(s) were never online during this run: agent-7" in caplog.text


def _with_allow_list(make_aggregator: Any, port: int, spec: ModelSpec,
                     enrolled: dict[str, Any]) -> Any:
    from support import AGGREGATOR_SIGNER

    from fedmq.aggregator.service import Aggregator

    made = make_aggregator(port, spec=spec, min_agents=2, rounds=3, final_evaluation=False)
    return Aggregator(made.config, keypair=(made.public_key, made._private_key),
                      signer=AGGREGATOR_SIGNER, allow_list=enrolled)


def test_a_loss_still_falling_at_the_end_is_pointed_out(
        broker_port, make_aggregator, start_agents, caplog):
    caplog.set_level(logging.INFO)
    start_agents(broker_port, 2)
    aggregator = make_aggregator(broker_port, min_agents=2, rounds=4, config={
        "training": TrainingSettings(epochs=1, batch_size=8, learning_rate=0.02)})
    aggregator.run()
    assert "the fleet loss was still falling at the end" in caplog.text
    assert "more [rounds] rounds" in caplog.text


def test_a_column_beyond_the_statistics_range_stops_the_run_naming_it(
        broker_port, make_aggregator, run_agents):
    """Review of issue 10: a column around 5e8 was clipped to 1e6, called 'constant' and the
    run trained on it; now the statistics round refuses, naming the column and the fix."""
    def huge(seed: int) -> LocalData:
        data = local_data(seed, 40)
        return replace(data, X=data.X * (1.0, 1.0, 1e8))

    run_agents(*(EdgeAgent(agent_config(broker_port, f"agent-{i}"), data=huge(i))
                 for i in range(2)))
    aggregator = make_aggregator(broker_port, spec=UNSCALED, min_agents=2, rounds=2)
    with pytest.raises(RoundFailed, match=r"statistics round: values beyond \+-1e\+06 in "
                       r"'x3' \(\d+ values\).*Raise \[statistics\] max_abs"):
        aggregator.run()
    assert aggregator.results == []


def test_a_distilling_fleet_publishes_the_pooled_per_class_mean_logits_as_teacher(
        broker_port, make_aggregator, start_agents):
    """Issue 21: the teacher of round r + 1 is w_r's per-class mean logits on the fleet's
    evaluation rows, summed under encryption; FedProx and augmentation ride along."""
    from fedmq.protocol.messages import RoundMessage
    from fedmq.protocol.sums.teacher import class_logits

    rounds: list[RoundMessage] = []

    def tap(topic: str, payload: bytes) -> None:
        if topic.endswith("/round"):
            msg = RoundMessage.from_bytes(payload)
            if msg.state == "training" and msg not in rounds:
                rounds.append(msg)

    agents = start_agents(broker_port, 3)
    settings = TrainingSettings(epochs=2, batch_size=8, learning_rate=0.1, prox_mu=0.01,
                                augment="oversample+jitter", distill_weight=0.5,
                                distill_temperature=2.0)
    aggregator = make_aggregator(broker_port, min_agents=3, rounds=3, tap=tap,
                                 config={"training": settings})
    aggregator.run()
    assert len(aggregator.results) == 3
    by_round = {m.round_id: m for m in rounds}
    assert by_round[1].teacher == ()  # nothing summed yet
    assert all(m.settings == settings for m in rounds)
    # Round 3 carries the teacher of w_2, the model round 2 started from (= round 1's result).
    w2 = aggregator.results[0].params
    model = make_model(aggregator.spec).set_params_vector(w2)
    X = np.vstack([a.eval_data.X for a in agents])
    y = np.concatenate([a.eval_data.y for a in agents]).astype(int)
    logits = class_logits(model, X)
    want = np.array([logits[y == c].mean(axis=0) for c in range(2)]).ravel()
    assert np.allclose(by_round[3].teacher, want, atol=4 * StatsParams().resolution)
    assert np.abs(want).max() > 0.01  # a trained model, not the zeros of round 1
