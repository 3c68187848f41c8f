from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedmq.models import (
    DivergedError,
    LabelError,
    LogisticRegressionModel,
    ModelError,
    ModelSpec,
    accuracy,
    log_loss,
    make_model,
)

Data = tuple[NDArray[np.float64], NDArray[Any]]
Blobs = Callable[[int, int, int], Data]
SpecFor = Callable[[int], ModelSpec]


@pytest.fixture
def spec_for(
    features: tuple[str, ...], center: NDArray[np.float64], scale: NDArray[np.float64]
) -> SpecFor:
    def build(n_classes: int) -> ModelSpec:
        return ModelSpec(
            "logistic", features, n_classes=n_classes, center=tuple(center), scale=tuple(scale)
        )

    return build


@pytest.mark.parametrize(("n_classes", "n_params"), [(2, 4), (3, 12)])
def test_blobs_are_learned(
    spec_for: SpecFor, make_blobs: Blobs, n_classes: int, n_params: int
) -> None:
    X, y = make_blobs(n_classes, 400, 7)
    model = LogisticRegressionModel(spec_for(n_classes), epochs=10, seed=0).fit(X, y)
    assert model.params_.shape == (n_params,)
    assert model.n_samples_seen_ == 400
    assert model.score(X, y) > 0.9
    assert model.score(*make_blobs(n_classes, 300, 99)) > 0.9  # held out


def test_binary_layout_and_probabilities() -> None:
    spec = ModelSpec("logistic", ("a", "b"), n_classes=2, center=(1.0, 0.0), scale=(2.0, 1.0))
    model = LogisticRegressionModel(spec).set_params_vector([2.0, -1.0, 0.5])
    X = np.array([[1.0, 0.0], [5.0, 1.0], [-3.0, 2.0]])
    s = 2.0 * (X[:, 0] - 1.0) / 2.0 - 1.0 * X[:, 1] + 0.5
    np.testing.assert_allclose(model.decision_function(X), s, rtol=1e-12)
    p1 = 1.0 / (1.0 + np.exp(-s))
    np.testing.assert_allclose(model.predict_proba(X), np.column_stack([1 - p1, p1]), rtol=1e-12)
    np.testing.assert_array_equal(model.predict(X), (s > 0).astype(np.int64))
    assert model.predict(X).dtype == np.int64


@pytest.mark.parametrize("n_classes", [2, 3])
def test_ties_break_like_sklearn(n_classes: int) -> None:
    # All-zero parameters put every sample exactly on the decision boundary.
    spec = ModelSpec("logistic", ("a", "b"), n_classes=n_classes, center=(1.0, 2.0))
    model = LogisticRegressionModel(spec).set_params_vector(np.zeros(spec.n_params))
    X = np.array([[0.0, 0.0], [1.0, 2.0], [5.0, -3.0]])
    np.testing.assert_array_equal(model.predict(X), [0, 0, 0])
    np.testing.assert_array_equal(model.to_sklearn().predict(X), model.predict(X))
    np.testing.assert_allclose(model.predict_proba(X), 1.0 / n_classes, rtol=1e-12)


def test_softmax_layout_is_row_major_per_class() -> None:
    spec = ModelSpec("logistic", ("a", "b"), n_classes=3)
    params = np.array([1.0, 2.0, 0.1, -1.0, 0.5, 0.2, 0.0, -3.0, 0.3])
    model = LogisticRegressionModel(spec).set_params_vector(params)
    X = np.array([[1.0, 1.0], [-2.0, 0.5], [0.0, -1.0]])
    W = params.reshape(3, 3)
    scores = X @ W[:, :2].T + W[:, 2]
    np.testing.assert_allclose(model.decision_function(X), scores, rtol=1e-12)
    e = np.exp(scores)
    np.testing.assert_allclose(model.predict_proba(X), e / e.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_array_equal(model.predict(X), scores.argmax(1))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_loss_matches_log_loss_metric(spec_for: SpecFor, make_blobs: Blobs, n_classes: int) -> None:
    X, y = make_blobs(n_classes, 200, 3)
    model = LogisticRegressionModel(spec_for(n_classes), seed=0).fit(X, y)
    proba = model.predict_proba(X)
    assert proba.shape == (200, n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert model.loss(X, y) == pytest.approx(log_loss(y, proba), rel=1e-9)
    assert model.score(X, y) == accuracy(y, model.predict(X))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_saturated_scores_stay_finite_and_silent(n_classes: int) -> None:
    spec = ModelSpec("logistic", ("a",), n_classes=n_classes)
    params = np.tile([800.0, 0.0], 1 if n_classes == 2 else n_classes)
    if n_classes > 2:
        params[0] = -800.0
    model = LogisticRegressionModel(spec).set_params_vector(params)
    X = np.array([[-2.0], [2.0]])
    y = np.array([1, 0])  # confidently wrong on both rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proba = model.predict_proba(X)
        loss = model.loss(X, y)
    assert np.all(np.isfinite(proba))
    # Exact log-sum-exp value (~1600) rather than a clipped one (~34.5).
    assert loss > 1000.0 and np.isfinite(loss)


def _objective(model: LogisticRegressionModel, params: NDArray[np.float64], data: Data) -> float:
    model.set_params_vector(params)
    d = model.spec.n_features
    W = params.reshape(model.spec.n_params // (d + 1), d + 1)[:, :d]
    return model.loss(*data) + 0.5 * model.l2 * float(np.sum(W * W))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_full_batch_step_follows_true_gradient(
    spec_for: SpecFor, make_blobs: Blobs, n_classes: int
) -> None:
    """One full-batch step must equal init - lr * grad of mean log loss + 0.5 l2 |W|^2."""
    spec = spec_for(n_classes)
    data = make_blobs(n_classes, 120, 4)
    lr, l2 = 0.1, 0.2
    init = np.random.default_rng(0).normal(size=spec.n_params)
    model = LogisticRegressionModel(spec, learning_rate=lr, l2=l2, batch_size=1000)
    model.fit(*data, init_params=init)

    probe = LogisticRegressionModel(spec, l2=l2)
    h = 1e-6
    grad = np.array(
        [
            (_objective(probe, init + h * e, data) - _objective(probe, init - h * e, data))
            / (2 * h)
            for e in np.eye(spec.n_params)
        ]
    )
    np.testing.assert_allclose(model.params_, init - lr * grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fit_from_init_params_continues_training(
    spec_for: SpecFor, make_blobs: Blobs, n_classes: int
) -> None:
    spec = spec_for(n_classes)
    X, y = make_blobs(n_classes, 300, 5)
    kwargs: dict[str, Any] = {"learning_rate": 0.01, "epochs": 1}
    first = LogisticRegressionModel(spec, seed=0, **kwargs).fit(X, y)
    init = first.params_.copy()
    second = LogisticRegressionModel(spec, seed=1, **kwargs).fit(X, y, init_params=init)
    assert second.loss(X, y) < first.loss(X, y)
    np.testing.assert_array_equal(init, first.params_)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_to_sklearn_matches_model(spec_for: SpecFor, make_blobs: Blobs, n_classes: int) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = make_blobs(n_classes, 300, 6)
    model = LogisticRegressionModel(spec_for(n_classes), epochs=5, seed=0).fit(X, y)
    est = model.to_sklearn()
    assert isinstance(est, LogisticRegression)
    n_rows = 1 if n_classes == 2 else n_classes
    assert est.coef_.shape == (n_rows, 3) and est.intercept_.shape == (n_rows,)
    np.testing.assert_array_equal(est.classes_, np.arange(n_classes))
    assert est.n_features_in_ == 3

    X_new, _ = make_blobs(n_classes, 200, 60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. sklearn deprecations about missing attributes
        np.testing.assert_array_equal(est.predict(X_new), model.predict(X_new))
        np.testing.assert_allclose(
            est.predict_proba(X_new), model.predict_proba(X_new), rtol=0, atol=1e-9
        )
        np.testing.assert_allclose(
            est.decision_function(X_new), model.decision_function(X_new), rtol=1e-9, atol=1e-9
        )
        assert est.score(X, y) == model.score(X, y)


def test_float_labels_with_integer_values_are_accepted(
    spec_for: SpecFor, make_blobs: Blobs
) -> None:
    X, y = make_blobs(2, 100, 1)
    as_int = LogisticRegressionModel(spec_for(2), seed=0).fit(X, y)
    as_float = LogisticRegressionModel(spec_for(2), seed=0).fit(X, y.astype(float))
    np.testing.assert_array_equal(as_int.params_, as_float.params_)


@pytest.mark.parametrize(
    ("n_classes", "y", "message", "code"),
    [
        (2, [0, 2], r"\[0, 2\)", "class-outside-model"),
        (2, [-1, 1], r"\[0, 2\)", "class-outside-model"),
        (2, [0, 0.5], "integers", "bad-labels"),
        (3, [0, 3], r"\[0, 3\)", "class-outside-model"),
        (2, ["no", "yes"], "numeric", "bad-labels"),
        (2, [0, np.nan], "NaN", "bad-labels"),
        (2, [0, np.inf], "NaN or infinite", "bad-labels"),
        (2, [0], "rows", None),  # a shape problem, not a label one
    ],
)
def test_bad_labels(
    spec_for: SpecFor, center: NDArray[np.float64], n_classes: int, y: Any, message: str,
    code: str | None,
) -> None:
    model = LogisticRegressionModel(spec_for(n_classes))
    X = np.vstack([center, center])
    with pytest.raises(ModelError, match=message) as raised:
        model.fit(X, y)
    # The device names the skip reason from the error type and its code.
    assert isinstance(raised.value, LabelError) == (code is not None)
    assert getattr(raised.value, "code", None) == code
    model.set_params_vector(np.zeros(model.spec.n_params))
    with pytest.raises(ModelError, match=message):
        model.score(X, y)


def test_class_outside_model_message_gives_the_range(spec_for: SpecFor,
                                                     make_blobs: Blobs) -> None:
    X, y = make_blobs(3, 30, 2)
    y[:2] = [5, 4]
    with pytest.raises(LabelError) as raised:
        LogisticRegressionModel(spec_for(3)).fit(X, y)
    assert raised.value.code == "class-outside-model"
    assert str(raised.value) == "class labels must lie in [0, 3), got range [0, 5]"


def test_label_error_codes_are_checked() -> None:
    with pytest.raises(ValueError, match="code"):
        LabelError("oops", "x")  # type: ignore[arg-type]
    assert issubclass(LabelError, ModelError) and issubclass(DivergedError, ModelError)


def test_wrong_spec_kind_and_unfitted_use(spec_for: SpecFor) -> None:
    with pytest.raises(ModelError, match="logistic"):
        LogisticRegressionModel(ModelSpec("linear", ("a",)))
    for method in ("predict", "predict_proba", "decision_function"):
        with pytest.raises(ModelError, match="fit"):
            getattr(LogisticRegressionModel(spec_for(2)), method)(np.zeros((1, 3)))
    with pytest.raises(ModelError, match="fit"):
        LogisticRegressionModel(spec_for(2)).to_sklearn()


def test_bad_hyperparameters_and_inputs(spec_for: SpecFor) -> None:
    with pytest.raises(ModelError, match="learning_rate"):
        LogisticRegressionModel(spec_for(2), learning_rate=0)
    model = LogisticRegressionModel(spec_for(2)).set_params_vector(np.zeros(4))
    with pytest.raises(ModelError, match="3 columns"):
        model.predict(np.zeros((2, 4)))
    with pytest.raises(ModelError, match="length 4"):
        model.set_params_vector(np.zeros(12))


def test_make_model_builds_logistic(spec_for: SpecFor) -> None:
    model = make_model(spec_for(3), batch_size=8, seed=1)
    assert isinstance(model, LogisticRegressionModel)
    assert (model.batch_size, model.seed) == (8, 1)
    with pytest.raises(ModelError, match="ModelSpec"):
        make_model(spec_for(3).to_dict())  # type: ignore[arg-type]
