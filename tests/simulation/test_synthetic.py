from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fedmq.simulation.synthetic import (
    COLUMNS,
    FEATURES,
    LABELS,
    MIN_SAMPLES,
    SENSOR_NOMINAL,
    DeviceData,
    FleetSpec,
    column,
    generate_fleet,
    pooled,
    write_csv,
    write_fleet,
)


@pytest.fixture(scope="module")
def non_iid() -> list[DeviceData]:
    return generate_fleet(FleetSpec(n_devices=30, seed=1))


@pytest.fixture(scope="module")
def iid() -> list[DeviceData]:
    return generate_fleet(FleetSpec(n_devices=30, iid=True, seed=1))


def _features(rows: np.ndarray) -> np.ndarray:
    return np.column_stack([column(rows, COLUMNS, f) for f in FEATURES])


def _fault_rates(devices: list[DeviceData]) -> np.ndarray:
    return np.array([column(d.train, d.columns, "fault").mean() for d in devices])


def test_constants_match_the_contract() -> None:
    assert FEATURES == ("vibration_rms", "temperature_c", "current_a", "rpm")
    assert LABELS == ("fault", "fault_type", "next_temperature_c")
    assert ("timestamp", *FEATURES, *LABELS) == COLUMNS
    assert set(SENSOR_NOMINAL) == set(FEATURES)
    assert all(scale > 0 for _, scale in SENSOR_NOMINAL.values())


def test_same_seed_same_fleet_other_seed_differs() -> None:
    spec = FleetSpec(n_devices=5, samples_per_device=120, seed=7)
    a, b = generate_fleet(spec), generate_fleet(spec)
    for da, db in zip(a, b, strict=True):
        assert da.device_id == db.device_id
        np.testing.assert_array_equal(da.train, db.train)
        np.testing.assert_array_equal(da.test, db.test)
    c = generate_fleet(FleetSpec(n_devices=5, samples_per_device=120, seed=8))
    assert not np.array_equal(pooled(a, "train")[:100], pooled(c, "train")[:100])


@pytest.mark.parametrize("mode", ["non_iid", "iid"])
def test_shapes_ids_and_label_consistency(mode: str, request: pytest.FixtureRequest) -> None:
    devices: list[DeviceData] = request.getfixturevalue(mode)
    assert [d.device_id for d in devices] == [f"dev-{i:03d}" for i in range(30)]
    for d in devices:
        assert d.columns == COLUMNS
        assert d.train.dtype == np.float64
        assert d.test.dtype == np.float64
        assert d.train.shape[1] == d.test.shape[1] == len(COLUMNS)
        n = len(d.train) + len(d.test)
        assert n >= MIN_SAMPLES
        assert abs(len(d.test) - 0.2 * n) <= 1
        assert np.all(np.diff(column(d.train, d.columns, "timestamp")) >= 0)
    rows = np.concatenate([pooled(devices, "train"), pooled(devices, "test")])
    assert np.all(np.isfinite(rows))
    fault, ftype = column(rows, COLUMNS, "fault"), column(rows, COLUMNS, "fault_type")
    assert set(np.unique(ftype)) == {0.0, 1.0, 2.0, 3.0}
    np.testing.assert_array_equal(fault, (ftype > 0).astype(float))
    assert np.all(column(rows, COLUMNS, "rpm") > 0)
    assert np.all(column(rows, COLUMNS, "vibration_rms") > 0)


def test_next_temperature_is_the_following_reading(non_iid: list[DeviceData]) -> None:
    d = non_iid[0]
    rows = np.concatenate([d.train, d.test])
    rows = rows[np.argsort(column(rows, COLUMNS, "timestamp"))]
    assert np.all(np.diff(column(rows, COLUMNS, "timestamp")) == 60)
    np.testing.assert_allclose(
        column(rows, COLUMNS, "next_temperature_c")[:-1], column(rows, COLUMNS, "temperature_c")[1:]
    )


def test_non_iid_is_heterogeneous_iid_is_not(
    non_iid: list[DeviceData], iid: list[DeviceData]
) -> None:
    rates_non_iid, rates_iid = _fault_rates(non_iid), _fault_rates(iid)
    assert rates_non_iid.std() > 3 * rates_iid.std()
    assert rates_non_iid.min() < 0.1
    assert rates_non_iid.max() > 0.5
    assert rates_iid.std() < 0.06

    counts_non_iid = [len(d.train) + len(d.test) for d in non_iid]
    assert np.std(counts_non_iid) > 50
    assert len({len(d.train) + len(d.test) for d in iid}) == 1

    # fault-type mix is skewed per device only in non-IID mode
    def type_share_std(devices: list[DeviceData]) -> float:
        shares = []
        for d in devices:
            ft = column(d.train, d.columns, "fault_type")
            if (ft > 0).sum() >= 20:
                shares.append(np.bincount(ft[ft > 0].astype(int), minlength=4)[1:] / (ft > 0).sum())
        return float(np.std(shares, axis=0).mean())

    assert type_share_std(non_iid) > 2 * type_share_std(iid)


@pytest.mark.parametrize("mode", ["non_iid", "iid"])
def test_labels_learnable_by_linear_models(mode: str, request: pytest.FixtureRequest) -> None:
    devices: list[DeviceData] = request.getfixturevalue(mode)
    train, test = pooled(devices, "train"), pooled(devices, "test")
    x_tr, x_te = _features(train), _features(test)

    y_tr, y_te = column(train, COLUMNS, "fault"), column(test, COLUMNS, "fault")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_tr, y_tr)
    acc = clf.score(x_te, y_te)
    majority = max(y_te.mean(), 1 - y_te.mean())
    assert 0.80 <= acc <= 0.98
    assert acc > majority + 0.08

    t_tr, t_te = column(train, COLUMNS, "fault_type"), column(test, COLUMNS, "fault_type")
    multi = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_tr, t_tr)
    assert 0.75 <= multi.score(x_te, t_te) <= 0.98

    n_tr = column(train, COLUMNS, "next_temperature_c")
    n_te = column(test, COLUMNS, "next_temperature_c")
    assert LinearRegression().fit(x_tr, n_tr).score(x_te, n_te) > 0.8


def test_nominal_standardisation_is_order_one(non_iid: list[DeviceData]) -> None:
    rows = pooled(non_iid, "train")
    for name in FEATURES:
        center, scale = SENSOR_NOMINAL[name]
        z = (column(rows, COLUMNS, name) - center) / scale
        assert abs(z.mean()) < 2, name
        assert 0.2 <= z.std() <= 5, name


def test_write_csv_round_trip(tmp_path: Path, non_iid: list[DeviceData]) -> None:
    rows = non_iid[0].train
    path = tmp_path / "dev.csv"
    write_csv(path, COLUMNS, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS)
    first = lines[1].split(",")
    for name in ("timestamp", "fault", "fault_type"):
        assert first[COLUMNS.index(name)].lstrip("-").isdigit(), name
    back = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    np.testing.assert_allclose(back, rows, rtol=1e-9, atol=1e-9)
    assert [p.name for p in tmp_path.iterdir()] == ["dev.csv"]  # no temp file left


def test_write_csv_rounds_integer_columns_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    write_csv(path, ("a", "b"), np.ones((3, 2)))
    write_csv(path, ("fault", "value"), np.array([[0.9999999, 1.5], [0.0, -2.25]]))
    assert path.read_text() == "fault,value\n1,1.5\n0,-2.25\n"
    with pytest.raises(ValueError, match="columns"):
        write_csv(path, ("a",), np.ones((2, 2)))


def test_write_fleet_writes_train_rows_only(tmp_path: Path) -> None:
    spec = FleetSpec(n_devices=3, samples_per_device=80, seed=3)
    paths = write_fleet(spec, tmp_path / "fleet")
    assert [p.name for p in paths] == ["dev-000.csv", "dev-001.csv", "dev-002.csv"]
    for path, dev in zip(paths, generate_fleet(spec), strict=True):
        back = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        np.testing.assert_allclose(back, dev.train, rtol=1e-9, atol=1e-9)


def test_pooled_and_column_errors(non_iid: list[DeviceData]) -> None:
    assert len(pooled(non_iid, "test")) == sum(len(d.test) for d in non_iid)
    with pytest.raises(ValueError, match="part"):
        pooled(non_iid, "validation")
    with pytest.raises(ValueError, match="no devices"):
        pooled([], "train")
    with pytest.raises(KeyError, match="pressure"):
        column(non_iid[0].train, COLUMNS, "pressure")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_devices": 0},
        {"n_devices": True},
        {"n_devices": 2.0},
        {"n_devices": 2, "samples_per_device": MIN_SAMPLES - 1},
        {"n_devices": 2, "test_fraction": 1.0},
        {"n_devices": 2, "test_fraction": -0.1},
        {"n_devices": 2, "seed": -1},
        {"n_devices": 2, "iid": "yes"},
        {"n_devices": 2, "test_fraction": None},
    ],
)
def test_fleet_spec_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        FleetSpec(**kwargs)  # type: ignore[arg-type]


def test_zero_test_fraction_gives_empty_test_sets() -> None:
    devices = generate_fleet(FleetSpec(n_devices=2, samples_per_device=60, test_fraction=0.0))
    assert all(d.test.shape == (0, len(COLUMNS)) for d in devices)


def test_spare_sensors_are_extra_columns_and_leave_the_real_ones_alone(tmp_path) -> None:
    """K spare channels sit between the sensors and the labels; every other column is
    the fleet without spares, value for value (the spares have their own random stream)."""
    plain = generate_fleet(FleetSpec(n_devices=6, samples_per_device=80, seed=2))
    wide = generate_fleet(FleetSpec(n_devices=6, samples_per_device=80, seed=2,
                                    spare_sensors=3))
    spares = ("spare_00", "spare_01", "spare_02")
    assert wide[0].columns == ("timestamp", *FEATURES, *spares, *LABELS)
    real = [wide[0].columns.index(c) for c in COLUMNS]
    for p, w in zip(plain, wide, strict=True):
        np.testing.assert_array_equal(w.train[:, real], p.train)
        np.testing.assert_array_equal(w.test[:, real], p.test)
    # a per-device offset plus noise near the nominal center/scale, different per device
    values = np.stack([column(d.train, d.columns, "spare_01")[:30] for d in wide])
    assert abs(values.mean()) < 0.5 and 0.5 < values.std() < 1.5
    assert len({round(float(v.mean()), 3) for v in values}) == len(wide)
    [path] = write_fleet(FleetSpec(n_devices=1, seed=2, spare_sensors=3), tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(wide[0].columns)


def test_no_spare_sensors_writes_exactly_the_old_columns(tmp_path) -> None:
    [path] = write_fleet(FleetSpec(n_devices=1, seed=2), tmp_path)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert FleetSpec(n_devices=1).columns == COLUMNS


@pytest.mark.parametrize("k", [-1, 1001, 2.0, True])
def test_a_bad_spare_count_is_refused(k) -> None:
    with pytest.raises(ValueError, match="spare_sensors"):
        FleetSpec(n_devices=1, spare_sensors=k)
