"""The real-data harness without a fleet: the non-IID split, the device CSVs, the configs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from fedmq.aggregator.config import AggregatorConfig
from fedmq.benchmarks import realdata
from fedmq.benchmarks.realdata_fleet import set_tables
from fedmq.cli import main
from fedmq.edge_agent.config import AgentConfig
from fedmq.edge_agent.data import load_csv
from fedmq.protocol.errors import ConfigError
from fedmq.runtime.config import tomllib
from fedmq.simulation import datasets


@pytest.fixture(scope="module")
def wine() -> datasets.Dataset:
    return datasets.load("wine")


@pytest.fixture(scope="module")
def diabetes() -> datasets.Dataset:
    return datasets.load("diabetes")


def test_features_are_raw_with_magnitudes_from_below_one_to_above_a_thousand(wine, diabetes):
    assert wine.kind == "logistic" and wine.n_classes == 3 and wine.X.shape == (178, 13)
    assert "od280_od315_of_diluted_wines" in wine.features  # sanitised for CSV and TOML
    assert wine.X.max() > 1000 and wine.X.min(axis=0).min() < 1  # proline vs hue
    # load_diabetes() is centred and scaled; the raw one has ages in years and sex 1/2.
    age, sex = diabetes.X[:, 0], diabetes.X[:, 1]
    assert diabetes.kind == "linear" and age.max() > 70 and set(np.unique(sex)) == {1.0, 2.0}


@pytest.mark.parametrize("name", ["wine", "breast_cancer", "diabetes", "iris"])
def test_test_share_is_held_out_and_every_row_is_used_once(name):
    ds = datasets.load(name)
    sp = datasets.split(ds, devices=8, test_share=0.3, seed=0)
    train = np.concatenate(sp.devices)
    assert np.intersect1d(sp.test, train).size == 0
    assert train.size == np.unique(train).size  # no row on two devices
    assert np.array_equal(np.sort(np.concatenate([sp.test, train])), np.arange(ds.y.size))
    assert abs(sp.test.size / ds.y.size - 0.3) < 0.02
    assert min(len(d) for d in sp.devices) >= 5
    if ds.kind == "logistic":  # stratified: the test set has each class's share
        share = np.bincount(ds.y[sp.test].astype(int)) / sp.test.size
        assert np.allclose(share, np.bincount(ds.y.astype(int)) / ds.y.size, atol=0.02)


def test_classification_split_is_label_skewed(wine):
    sp = datasets.split(wine, devices=8, alpha=0.5, seed=0)
    counts = np.array([np.bincount(wine.y[d].astype(int), minlength=3) for d in sp.devices])
    assert (counts == 0).any(axis=1).sum() >= 2  # several devices lack a whole class
    shares = counts / counts.sum(axis=1, keepdims=True)
    overall = np.bincount(wine.y[sp.train].astype(int)) / sp.train.size
    assert np.abs(shares - overall).max() > 0.5  # some device is dominated by one class
    iid = datasets.split(wine, devices=8, alpha=1000.0, seed=0)  # alpha -> IID
    iid_counts = np.array([np.bincount(wine.y[d].astype(int), minlength=3)
                           for d in iid.devices])
    assert (iid_counts > 0).all()


def test_regression_split_gives_each_device_one_range_of_the_target(diabetes):
    sp = datasets.split(diabetes, devices=8, seed=0)
    ranges = [(diabetes.y[d].min(), diabetes.y[d].max()) for d in sp.devices]
    assert all(hi <= lo for (_, hi), (lo, _) in itertools.pairwise(ranges))
    assert ranges[0][1] < np.median(diabetes.y) < ranges[-1][0]


def test_split_is_deterministic_per_seed(wine):
    a, b = datasets.split(wine, seed=3), datasets.split(wine, seed=3)
    c = datasets.split(wine, seed=4)
    assert np.array_equal(a.test, b.test)
    assert all(np.array_equal(x, y) for x, y in zip(a.devices, b.devices, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.devices, c.devices, strict=True))


def test_split_refuses_more_devices_than_rows(wine):
    with pytest.raises(ConfigError, match="training rows cannot give"):
        datasets.split(wine, devices=40, min_rows=5)
    with pytest.raises(ConfigError, match="unknown data set 'mnist'"):
        datasets.load("mnist")


def test_device_csvs_hold_the_raw_values_exactly(tmp_path, wine):
    sp = datasets.split(wine, seed=0)
    files = datasets.write_split(sp, tmp_path)
    assert sorted(files) == [*datasets.device_ids(8), "test"]
    for rows, path in [*zip(sp.devices, (files[d] for d in datasets.device_ids(8)),
                            strict=True), (sp.test, files["test"])]:
        data = load_csv(path, wine.features, wine.label)  # as the agent reads it
        assert np.array_equal(data.X, wine.X[rows]) and np.array_equal(data.y, wine.y[rows])


def test_pooled_scaling_is_standard_scaler_on_the_training_rows(wine):
    from sklearn.preprocessing import StandardScaler

    sp = datasets.split(wine, seed=0)
    center, scale = datasets.pooled_scaling(sp)
    scaler = StandardScaler().fit(wine.X[sp.train])
    np.testing.assert_allclose(center, scaler.mean_, rtol=1e-12)
    np.testing.assert_allclose(scale, scaler.scale_, rtol=1e-12)


def test_set_tables_replaces_removes_and_appends_keys():
    text = "# head\n[model]\nkind = \"x\"\ncenter = [1.0]\n\n[output]\nresume = true\n"
    out = tomllib.loads(set_tables(text, {
        "model": {"kind": "linear", "center": None, "features": ["a", "b"]},
        "training": {"epochs": 3}}))
    assert out == {"model": {"kind": "linear", "features": ["a", "b"]},
                   "output": {"resume": True}, "training": {"epochs": 3}}


@pytest.mark.parametrize("scaling", ["none", "pooled"])
def test_gateway_configs_carry_the_data_set_and_no_scaling_unless_pooled(tmp_path, scaling):
    """The edited configs of `fedmq init gateway` load, and `none` leaves no center/scale
    (the template's datasheet values for its sensors would be wrong for any data set)."""
    ds = datasets.load("diabetes")
    sp = datasets.split(ds, devices=2, seed=0)
    options = realdata.Options(scaling=scaling, devices=2)
    t = options.training("diabetes")
    assert main(["init", "gateway", str(tmp_path / "gw"), "--loopback", "--bits", "512",
                 "--device-count", "1"]) == 0
    aggregator_toml = tmp_path / "gw" / "aggregator.toml"
    from fedmq.benchmarks.realdata_fleet import edit_toml

    edit_toml(aggregator_toml, realdata.aggregator_tables(sp, options, t))
    config = AggregatorConfig.from_file(aggregator_toml)
    assert config.spec.kind == "linear" and config.spec.features == ds.features
    assert (config.spec.center is None) == (scaling == "none")
    assert (config.spec.scale is None) == (scaling == "none")
    assert config.training.learning_rate == t.learning_rate and config.codec.clip == t.clip
    # The template was made for a classifier; the regression gets init's step for its kind.
    assert (config.server.optimizer, config.server.momentum) == ("fedavgm", 0.7)
    agent_toml = tmp_path / "gw" / "devices" / "dev-000" / "agent.toml"
    edit_toml(agent_toml, {"data": {"path": "data.csv", "features": list(ds.features),
                                    "label": ds.label}})
    agent = AgentConfig.from_file(agent_toml)
    assert agent.features == ds.features and Path(agent.data_path).name == "data.csv"


def test_options_take_tuned_settings_and_overrides():
    assert realdata.Options().training("wine") == realdata.DEFAULT  # what fedmq init writes
    t = realdata.Options(tuned=True, rounds=7, overrides={"epochs": 4}).training("wine")
    assert (t.rounds, t.epochs, t.learning_rate) == (7, 4, realdata.TUNED["wine"].learning_rate)
    assert max(t.rounds for t in realdata.TUNED.values()) <= 40


def test_a_bad_override_is_refused_before_any_gateway_is_made():
    from fedmq.protocol.errors import ProtocolError

    with pytest.raises(ProtocolError, match="epochs and batch_size must be at least 1"):
        realdata.Options(overrides={"epochs": 0}).training("wine")
