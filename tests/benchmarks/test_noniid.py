"""bench-noniid: the skews deal what they say, the simulated round is the aggregator's
step, rounds to target, and a --quick run end to end."""

from __future__ import annotations

import numpy as np
import pytest

from fedmq.aggregator.fedavg import weighted_average
from fedmq.benchmarks import noniid_data as data
from fedmq.benchmarks import noniid_methods as methods
from fedmq.benchmarks import noniid_sim as sim
from fedmq.cli import main
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.errors import ConfigError


@pytest.fixture(scope="module")
def wine() -> data.Source:
    return data.load("wine")


@pytest.fixture(scope="module")
def digits() -> data.Source:
    return data.load("digits")


def classes(fleet: data.Fleet) -> list[set[int]]:
    return [set(np.concatenate([d.y, d.y_test[:d.own_test]]).astype(int).tolist())
            for d in fleet.devices]


def max_share(fleet: data.Fleet, n_classes: int) -> float:
    """The mean over devices of its largest class's share of its rows."""
    shares = []
    for d in fleet.devices:
        own = np.concatenate([d.y, d.y_test[:d.own_test]]).astype(int)
        counts = np.bincount(own, minlength=n_classes)
        shares.append(counts.max() / counts.sum())
    return float(np.mean(shares))


@pytest.mark.parametrize("name", ["wine", "digits"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pathological_gives_each_device_one_or_two_classes_and_every_class_a_device(
        name, seed, wine, digits):
    source = wine if name == "wine" else digits
    fleet = data.make_fleet(source, "pathological", seed=seed)
    held = classes(fleet)
    assert all(1 <= len(c) <= 2 for c in held)
    assert set().union(*held) == set(range(source.n_classes))
    assert min(d.n + d.own_test for d in fleet.devices) >= data.MIN_ROWS


def test_dirichlet_alpha_sets_the_label_skew_at_equal_row_counts(wine):
    skew = {s: np.mean([max_share(data.make_fleet(wine, s, seed=k), 3) for k in range(3)])
            for s in ("iid", "dirichlet0.5", "dirichlet0.1")}
    assert skew["iid"] < 0.6 < skew["dirichlet0.5"] < skew["dirichlet0.1"]
    assert skew["dirichlet0.1"] > 0.8  # most devices hold (nearly) one class
    counts = [d.n + d.own_test for d in data.make_fleet(wine, "dirichlet0.1").devices]
    assert max(counts) <= 1.5 * min(counts)


def test_every_row_is_used_once_and_the_test_set_is_held_out(wine):
    fleet = data.make_fleet(wine, "dirichlet0.5", seed=0)
    rows = np.concatenate([fleet.X_test, *(np.concatenate([d.X, d.X_test[:d.own_test]])
                                           for d in fleet.devices)])
    assert rows.shape == wine.X.shape
    assert np.unique(rows, axis=0).shape[0] == np.unique(wine.X, axis=0).shape[0]
    assert abs(fleet.y_test.size / wine.y.size - data.TEST_SHARE) < 0.02


def test_feature_skew_gives_each_device_its_own_gain_and_offset(wine):
    iid = data.make_fleet(wine, "iid", seed=0)
    skewed = data.make_fleet(wine, "feature", seed=0)
    # Same rows per device either way (labels IID), but the device means of each
    # feature now spread far wider than sampling alone makes them.
    spread = [np.std([d.X.mean(axis=0) for d in f.devices], axis=0) / wine.X.std(axis=0)
              for f in (iid, skewed)]
    assert np.median(spread[1]) > 1.5 * np.median(spread[0])
    assert max_share(skewed, 3) < 0.7


def test_quantity_skew_gives_devices_very_different_row_counts(wine):
    counts = [d.n for d in data.make_fleet(wine, "quantity", seed=0).devices]
    assert max(counts) > 3 * min(counts)


def test_natural_skew_is_the_synthetic_fleets_own_machines():
    source = data.load("synthetic", 4)
    fleet = data.make_fleet(source, "natural", devices=4, seed=0)
    assert len(fleet.devices) == 4 and source.origin is not None
    with pytest.raises(ConfigError, match="natural"):
        data.make_fleet(data.load("wine"), "natural")


def test_rounds_to_target_is_the_first_round_at_or_above_it():
    curve = (0.95, 0.5, 0.8, 0.9, 0.85, 0.95)
    assert sim.rounds_to_target(curve, 0.9) == 3  # round 0 (the initial model) never counts
    assert sim.rounds_to_target(curve, 0.96) is None
    assert sim.tolerance("accuracy") == 0.01 and sim.tolerance("r2") == 0.02


def test_the_spec_carries_the_statistics_rounds_pooled_center_and_scale():
    fleet = data.make_fleet(data.load("diabetes"), "dirichlet0.5", seed=0)
    spec = sim.fleet_spec(fleet)
    X, y = fleet.pooled()
    assert np.allclose(spec.center, X.mean(axis=0)) and np.allclose(spec.scale, X.std(axis=0))
    assert spec.target_center == pytest.approx(y.mean())
    assert spec.target_scale == pytest.approx(y.std())


def test_aggregate_is_fedavg_up_to_the_codec_and_the_filter_uses_the_aggregators_groups():
    rng = np.random.default_rng(0)
    deltas = [rng.normal(0, 0.3, 12) for _ in range(8)]
    weights = [int(w) for w in rng.integers(5, 50, 8)]
    codec = CodecParams()
    exact = weighted_average(deltas, weights)
    for rule in ("mean", "filtered-mean"):
        step, left_out = sim.aggregate(deltas, weights, codec, rule)
        assert left_out == 0
        assert np.abs(step - exact).max() <= 2 * codec.resolution
    # One device far off: its group of two is left out by the default rule, not by mean.
    far = [*deltas[:7], deltas[7] + 5.0]
    step, left_out = sim.aggregate(far, weights, codec, "filtered-mean")
    assert left_out == 1 and np.abs(step).max() < 1.0
    assert sim.aggregate(far, weights, codec, "mean")[1] == 0


def test_methods_parse_with_overrides_and_bad_ones_are_one_line():
    m = methods.parse_method("fedadam:server_lr=0.03,tau=0.001")
    assert m.preset == "fedadam" and m.overrides["server_lr"] == 0.03
    assert m.overrides["optimizer"] == "fedadam" and m.rule == "filtered-mean"
    assert methods.parse_method("fedavg:rule=mean").rule == "mean"
    assert methods.parse_method("ditto:ditto_lambdas=0.1/1").overrides["ditto_lambdas"] == \
        (0.1, 1.0)
    for bad, why in (("fedsgd", "unknown method"), ("fedavg:rule=max", "rule"),
                     ("fedavg:epochs", "key=value")):
        with pytest.raises(ConfigError, match=why):
            methods.parse_method(bad)
    with pytest.raises(ConfigError, match="no \\[training\\] or \\[server\\] key no_such_key"):
        methods.parse_method("fedavg:no_such_key=1").training(methods.TrainingSettings())
    with pytest.raises(ConfigError, match="server_lr"):
        methods.parse_method("fedadam:server_lr=-1").server()
    # The personal keys are signed [training] settings like the others.
    ditto = methods.parse_method("ditto:personal_epochs=3")
    trained = ditto.training(methods.TrainingSettings())
    assert ditto.personal == "ditto" and trained.personal == "ditto"
    assert trained.personal_epochs == 3 and trained.epochs == 2


def test_fedavg_learns_and_local_only_is_worse_under_pathological_skew(wine):
    fleet = data.make_fleet(wine, "pathological", seed=0)
    central = sim.centralized(fleet)
    run = sim.simulate(fleet, methods.parse_method("fedavg"), rounds=5, seed=0,
                       central=central)
    assert len(run.curve) == 6 and run.final > 0.85 and len(run.device_global) == 8
    local, own = sim.local_only(fleet, methods.TrainingSettings(), 5, 0)
    assert local < run.final - 0.2 and len(own) == 8


def test_quick_run_end_to_end(tmp_path, capsys):
    assert main(["bench-noniid", "--quick", "--seeds", "1", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "noniid.md").read_text()
    assert "## Rounds to target" in text and "| wine" in text and "| synthetic" in text
    assert "pathological" in text and "feature" in text
    lines = (tmp_path / "noniid.csv").read_text().splitlines()
    assert lines[0].startswith("dataset,skew,method,seed")
    fedavg = [line for line in lines if ",fedavg," in line]
    assert len(fedavg) == 4 and all(len(line.rsplit(",", 1)[1].split()) == 11
                                    for line in fedavg)
    assert (tmp_path / "noniid.png").stat().st_size > 10_000
    assert "written to" in capsys.readouterr().out


def test_bad_options_are_one_line(tmp_path, capsys):
    assert main(["bench-noniid", "--datasets", "mnist", "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "unknown data set 'mnist'" in err and "Traceback" not in err
    # A bad override stops the run before any fleet, not as a gap in the tables.
    assert main(["bench-noniid", "--methods", "fedavg", "fedadam:server_lr=-1",
                 "--out", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "fedadam:server_lr=-1" in err and "Traceback" not in err
    assert not (tmp_path / "noniid.md").exists()


def test_each_device_is_also_scored_on_test_rows_drawn_by_its_own_class_mix(wine):
    fleet = data.make_fleet(wine, "pathological", seed=0)
    for d in fleet.devices:
        assert d.y_test.size == d.own_test + fleet.y_test.size and d.own_test >= 1
        drawn = d.y_test[d.own_test:]
        assert set(drawn.astype(int).tolist()) <= set(d.y.astype(int).tolist())


def test_the_server_optimizer_is_the_aggregators(wine):
    fleet = data.make_fleet(wine, "dirichlet0.5", seed=0)
    central = sim.centralized(fleet)

    def curve(method: str) -> tuple[float, ...]:
        return sim.simulate(fleet, methods.parse_method(method), rounds=4, seed=0,
                            central=central).curve

    # Server momentum 0 at server_lr 1 is FedAvg exactly; FedAdam is not.
    assert curve("fedavgm:momentum=0") == curve("fedavg")
    assert methods.Server(methods.parse_method("fedadam").server(), 3).state is not None
    adam = sim.simulate(fleet, methods.parse_method("fedadam:server_lr=5"), rounds=3, seed=0,
                        central=central)
    assert adam.curve != curve("fedavg")[:4]


def test_distillation_publishes_a_teacher_of_class_by_class_logits(wine):
    fleet = data.make_fleet(wine, "dirichlet0.5", seed=0)
    spec = sim.fleet_spec(fleet)
    params = np.random.default_rng(0).normal(0, 1, spec.n_params)
    sections = [methods.teacher_section(spec, params, d.X, d.y) for d in fleet.devices]
    teacher = np.asarray(methods.fleet_teacher(spec, sections)).reshape(3, 3)
    X, y = fleet.pooled()
    from fedmq.models import make_model
    logits = make_model(spec).set_params_vector(params)._scores(X)
    for c in range(3):  # the fleet's mean logits of each true class's rows
        assert np.allclose(teacher[c], logits[y == c].mean(axis=0), atol=1e-5)
    run = sim.simulate(fleet, methods.parse_method("distill"), rounds=3, seed=0,
                       central=sim.centralized(fleet))
    assert run.final > 0.5 and not methods.parse_method("distill").applies("linear")
