from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedmq.models import (
    DivergedError,
    LabelError,
    LinearRegressionModel,
    ModelError,
    ModelSpec,
    make_model,
    mse,
)

Data = tuple[NDArray[np.float64], NDArray[Any]]


@pytest.fixture
def spec(
    features: tuple[str, ...], center: NDArray[np.float64], scale: NDArray[np.float64]
) -> ModelSpec:
    return ModelSpec("linear", features, center=tuple(center), scale=tuple(scale))


def test_recovers_known_coefficients(
    spec: ModelSpec, linear_data: Data, linear_truth: tuple[NDArray[np.float64], float]
) -> None:
    w_raw, b_raw = linear_truth
    model = LinearRegressionModel(spec, epochs=20, seed=0).fit(*linear_data)
    assert model.score(*linear_data) > 0.95
    # Learned weights act on standardized features, so they equal raw weights * scale.
    np.testing.assert_allclose(
        model.params_[:3], w_raw * np.array(spec.scale), rtol=0.02, atol=0.02
    )
    np.testing.assert_allclose(model.params_[3], b_raw + w_raw @ np.array(spec.center), atol=0.05)
    assert model.n_samples_seen_ == 400
    assert model.params_.dtype == np.float64 and model.params_.shape == (4,)


def test_parameter_layout_and_standardization() -> None:
    spec = ModelSpec("linear", ("a", "b"), center=(1.0, -2.0), scale=(2.0, 4.0))
    model = LinearRegressionModel(spec).set_params_vector([3.0, -1.0, 0.5])
    X = np.array([[1.0, -2.0], [3.0, 2.0], [0.0, 0.0]])
    expected = 3.0 * (X[:, 0] - 1.0) / 2.0 - 1.0 * (X[:, 1] + 2.0) / 4.0 + 0.5
    np.testing.assert_allclose(model.predict(X), expected, rtol=1e-12)
    assert model.n_samples_seen_ == 0


def test_loss_is_plain_mse(spec: ModelSpec, linear_data: Data) -> None:
    model = LinearRegressionModel(spec, l2=0.5, seed=1).fit(*linear_data)
    assert model.loss(*linear_data) == pytest.approx(
        mse(linear_data[1], model.predict(linear_data[0])), rel=1e-12
    )


def test_fit_from_init_params_continues_training(spec: ModelSpec, linear_data: Data) -> None:
    X, y = linear_data
    first = LinearRegressionModel(spec, epochs=1, learning_rate=0.01, seed=0).fit(X, y)
    init = first.params_.copy()
    second = LinearRegressionModel(spec, epochs=1, learning_rate=0.01, seed=1)
    second.fit(X, y, init_params=init)
    assert second.loss(X, y) < first.loss(X, y)
    np.testing.assert_array_equal(init, first.params_)  # init_params was copied, not mutated

    fresh = LinearRegressionModel(spec, epochs=1, learning_rate=0.01, seed=1).fit(X, y)
    assert second.loss(X, y) < fresh.loss(X, y)


def test_tiny_learning_rate_stays_at_init(spec: ModelSpec, linear_data: Data) -> None:
    init = np.array([1.0, 2.0, 3.0, 4.0])
    model = LinearRegressionModel(spec, learning_rate=1e-12).fit(*linear_data, init_params=init)
    np.testing.assert_allclose(model.params_, init, atol=1e-8)
    assert model.params_ is not init


def _objective(model: LinearRegressionModel, params: NDArray[np.float64], data: Data) -> float:
    model.set_params_vector(params)
    l2_term = 0.5 * model.l2 * float(params[:-1] @ params[:-1])
    return 0.5 * model.loss(*data) + l2_term


def test_full_batch_step_follows_true_gradient(spec: ModelSpec, linear_data: Data) -> None:
    """One full-batch step must equal init - lr * grad of mean(0.5 r^2) + 0.5 l2 |w|^2."""
    lr, l2 = 0.01, 0.3
    init = np.array([0.5, -1.0, 2.0, 3.0])
    model = LinearRegressionModel(spec, learning_rate=lr, l2=l2, batch_size=10_000)
    model.fit(*linear_data, init_params=init)

    probe = LinearRegressionModel(spec, l2=l2)
    h = 1e-6
    grad = np.array(
        [
            (
                _objective(probe, init + h * e, linear_data)
                - _objective(probe, init - h * e, linear_data)
            )
            / (2 * h)
            for e in np.eye(4)
        ]
    )
    np.testing.assert_allclose(model.params_, init - lr * grad, rtol=1e-6, atol=1e-7)


def test_l2_shrinks_weights_but_not_intercept(spec: ModelSpec, linear_data: Data) -> None:
    model = LinearRegressionModel(spec, l2=10.0, learning_rate=0.05, epochs=30, seed=0)
    model.fit(*linear_data)
    free = LinearRegressionModel(spec, epochs=30, seed=0).fit(*linear_data)
    assert np.linalg.norm(model.params_[:3]) < 0.15 * np.linalg.norm(free.params_[:3])
    assert model.params_[3] == pytest.approx(linear_data[1].mean(), abs=0.2)


def test_seed_makes_training_reproducible(spec: ModelSpec, linear_data: Data) -> None:
    def fit(seed: int) -> NDArray[np.float64]:
        return LinearRegressionModel(spec, seed=seed).fit(*linear_data).params_

    np.testing.assert_array_equal(fit(5), fit(5))
    assert not np.array_equal(fit(5), fit(6))


def test_to_sklearn_matches_predictions(
    spec: ModelSpec,
    linear_data: Data,
    center: NDArray[np.float64],
    scale: NDArray[np.float64],
) -> None:
    from sklearn.linear_model import LinearRegression

    model = LinearRegressionModel(spec, epochs=3, seed=0).fit(*linear_data)
    est = model.to_sklearn()
    assert isinstance(est, LinearRegression)
    assert est.n_features_in_ == 3 and est.coef_.shape == (3,)
    X_new = center + scale * np.random.default_rng(9).standard_normal((50, 3))
    np.testing.assert_allclose(est.predict(X_new), model.predict(X_new), rtol=1e-10, atol=1e-9)
    assert est.score(*linear_data) == pytest.approx(model.score(*linear_data), rel=1e-10)


def test_divergence_is_reported_without_warnings(spec: ModelSpec, linear_data: Data) -> None:
    model = LinearRegressionModel(spec, seed=0).fit(*linear_data)
    before = model.params_.copy()
    model.learning_rate = 1e6
    model.epochs = 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ModelError, match="diverged"):
            model.fit(*linear_data)
    np.testing.assert_array_equal(model.params_, before)


def test_predict_before_fit_raises(spec: ModelSpec) -> None:
    with pytest.raises(ModelError, match="fit"):
        LinearRegressionModel(spec).predict(np.zeros((1, 3)))


def test_wrong_spec_kind_is_rejected() -> None:
    with pytest.raises(ModelError, match="linear"):
        LinearRegressionModel(ModelSpec("logistic", ("a",), n_classes=2))
    with pytest.raises(ModelError, match="ModelSpec"):
        LinearRegressionModel({"kind": "linear"})  # type: ignore[arg-type]


def test_make_model_dispatches_on_kind(spec: ModelSpec) -> None:
    model = make_model(spec, epochs=3, l2=0.1)
    assert isinstance(model, LinearRegressionModel)
    assert (model.epochs, model.l2) == (3, 0.1)
    with pytest.raises(ModelError, match="hyperparameters"):
        make_model(spec, momentum=0.9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.0},
        {"learning_rate": -0.1},
        {"learning_rate": float("nan")},
        {"learning_rate": "0.1"},
        {"epochs": 0},
        {"epochs": 1.5},
        {"epochs": True},
        {"batch_size": 0},
        {"batch_size": 2.0},
        {"l2": -1e-3},
        {"l2": float("inf")},
        {"seed": -1},
        {"seed": 1.0},
    ],
)
def test_bad_hyperparameters(spec: ModelSpec, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ModelError):
        LinearRegressionModel(spec, **kwargs)


def test_numpy_scalar_hyperparameters_are_accepted(spec: ModelSpec) -> None:
    model = LinearRegressionModel(
        spec,
        learning_rate=np.float64(0.1),
        epochs=np.int64(2),  # type: ignore[arg-type]
        batch_size=np.int32(8),  # type: ignore[arg-type]
        seed=3,
    )
    assert model.epochs == 2


@pytest.mark.parametrize(
    ("X", "y", "message"),
    [
        (np.zeros(3), np.zeros(1), "2-D"),
        (np.zeros((4, 2)), np.zeros(4), "3 columns"),
        (np.zeros((0, 3)), np.zeros(0), "at least one row"),
        (np.full((2, 3), np.nan), np.zeros(2), "NaN"),
        (np.zeros((2, 3)), np.zeros(3), "rows"),
        (np.zeros((2, 3)), np.zeros((2, 1)), "1-D"),
        (np.zeros((2, 3)), np.array([0.0, np.inf]), "NaN or infinite"),
        ([["a", "b", "c"]], [1.0], "numeric"),
    ],
)
def test_bad_training_inputs(spec: ModelSpec, X: Any, y: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        LinearRegressionModel(spec).fit(X, y)


@pytest.mark.parametrize(
    ("init", "message"),
    [
        (np.zeros(3), "length 4"),
        (np.zeros((1, 4)), "1-D"),
        (np.array([0.0, 0.0, np.nan, 0.0]), "NaN"),
        (["a", "b", "c", "d"], "numeric"),
    ],
)
def test_bad_init_params(spec: ModelSpec, linear_data: Data, init: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        LinearRegressionModel(spec).fit(*linear_data, init_params=init)
    with pytest.raises(ModelError, match=message):
        LinearRegressionModel(spec).set_params_vector(init)


# -- standardized label (ModelSpec.target_center / target_scale) ---------------------------

_TEMP_FEATURES = ("ambient_c", "load_pct", "fan_rpm")
_TEMP_MEAN = np.array([21.0, 55.0, 1800.0])
_TEMP_STD = np.array([4.0, 15.0, 200.0])


def _temperature_data(n: int, seed: int) -> Data:
    """A label like a bearing temperature: mean ~60, std ~0.5, linear in the features."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, 3))
    y = 60.0 + Z @ np.array([0.4, -0.25, 0.1]) + 0.15 * rng.standard_normal(n)
    return _TEMP_MEAN + _TEMP_STD * Z, y


def _temperature_spec(X: NDArray[np.float64], y: NDArray[np.float64] | None) -> ModelSpec:
    # What the fleet's statistics round announces: the data's own mean and std.
    return ModelSpec("linear", _TEMP_FEATURES, center=tuple(X.mean(axis=0)),
                     scale=tuple(X.std(axis=0)),
                     target_center=None if y is None else float(y.mean()),
                     target_scale=None if y is None else float(y.std()))


def test_standardized_label_converges_in_a_few_epochs_where_raw_label_does_not() -> None:
    from sklearn.linear_model import LinearRegression

    X, y = _temperature_data(1000, seed=4)
    X_test, y_test = _temperature_data(2000, seed=5)
    assert 59.9 < y.mean() < 60.1 and 0.45 < y.std() < 0.55
    best = LinearRegression().fit(X, y).score(X_test, y_test)
    settings = {"epochs": 2, "batch_size": 32, "learning_rate": 0.05, "seed": 0}

    scaled = LinearRegressionModel(_temperature_spec(X, y), **settings).fit(X, y)
    raw = LinearRegressionModel(_temperature_spec(X, None), **settings).fit(X, y)

    assert best > 0.85
    assert abs(scaled.score(X_test, y_test) - best) < 0.01
    # Same settings on the raw label: the intercept has to travel 60 (120 label std's)
    # and 2 epochs (63 steps) are not enough; the predictions are still off by far more
    # than the label's spread, so R^2 is negative (about -20 here; it needs ~5 epochs).
    assert raw.score(X_test, y_test) < 0.0
    # Parameters live in standardized label units: O(1), not O(60).
    assert np.all(np.abs(scaled.params_) < 2.0)


def test_standardized_label_is_training_on_the_transformed_label() -> None:
    X, y = _temperature_data(300, seed=1)
    spec = _temperature_spec(X, y)
    c, s = spec.target_affine
    settings = {"epochs": 2, "learning_rate": 0.03, "seed": 3}
    scaled = LinearRegressionModel(spec, **settings).fit(X, y)
    plain_spec = _temperature_spec(X, None)
    by_hand = LinearRegressionModel(plain_spec, **settings).fit(X, (y - c) / s)
    np.testing.assert_allclose(scaled.params_, by_hand.params_, rtol=1e-12, atol=1e-15)
    # predict, loss (MSE) and score (R^2) all speak the label's units.
    np.testing.assert_allclose(scaled.predict(X), by_hand.predict(X) * s + c, rtol=1e-12)
    assert scaled.loss(X, y) == pytest.approx(mse(y, scaled.predict(X)), rel=1e-12)
    assert scaled.loss(X, y) == pytest.approx(by_hand.loss(X, (y - c) / s) * s**2, rel=1e-12)
    assert scaled.score(X, y) == pytest.approx(by_hand.score(X, (y - c) / s), rel=1e-12)


def test_no_target_fields_is_the_old_behaviour() -> None:
    X, y = _temperature_data(200, seed=2)
    y = y - 60.0
    plain = LinearRegressionModel(_temperature_spec(X, None), seed=1).fit(X, y)
    identity = dataclasses.replace(_temperature_spec(X, None), target_center=0.0,
                                   target_scale=1.0)
    same = LinearRegressionModel(identity, seed=1).fit(X, y)
    np.testing.assert_array_equal(plain.params_, same.params_)
    np.testing.assert_array_equal(plain.predict(X), same.predict(X))


def test_to_sklearn_unfolds_feature_and_label_standardization() -> None:
    from sklearn.linear_model import LinearRegression

    X, y = _temperature_data(500, seed=6)
    model = LinearRegressionModel(_temperature_spec(X, y), epochs=3, seed=0).fit(X, y)
    est = model.to_sklearn()
    assert isinstance(est, LinearRegression)
    X_new, y_new = _temperature_data(100, seed=7)
    np.testing.assert_allclose(est.predict(X_new), model.predict(X_new), rtol=1e-12)
    assert 59.0 < est.predict(X_new).mean() < 61.0
    assert est.score(X_new, y_new) == pytest.approx(model.score(X_new, y_new), rel=1e-9)
    coef, intercept = model.raw_coefficients()
    np.testing.assert_allclose(X_new @ coef + intercept, model.predict(X_new), rtol=1e-12)


def test_divergence_is_a_diverged_error(spec: ModelSpec, linear_data: Data) -> None:
    model = LinearRegressionModel(spec, learning_rate=1e6, epochs=5, seed=0)
    with pytest.raises(DivergedError, match="SGD diverged in epoch"):
        model.fit(*linear_data)


@pytest.mark.parametrize("y", [[1.0, np.nan], [1.0, np.inf], ["a", "b"]])
def test_unusable_regression_labels_are_bad_labels(y: Any) -> None:
    model = LinearRegressionModel(ModelSpec("linear", ("a",), target_center=60.0))
    with pytest.raises(LabelError) as raised:
        model.fit([[0.0], [1.0]], y)
    assert raised.value.code == "bad-labels"
