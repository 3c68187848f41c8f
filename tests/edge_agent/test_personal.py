"""Personal models: Ditto against its closed form, lambda selection, the personal intercept."""

from __future__ import annotations

import numpy as np
import pytest

from fedmq.edge_agent.personal import (
    PersonalModel,
    choose_lambda,
    ditto_fit,
    fit_personal,
    own_standardisation,
    validation_split,
)
from fedmq.edge_agent.personal_store import PERSONAL_FILE, PersonalStore, load_personal
from fedmq.models import ModelError, ModelSpec, make_model
from fedmq.protocol.messages import TrainingSettings

LINEAR = ModelSpec(kind="linear", features=("a", "b"))


def test_one_full_batch_ditto_step_is_the_hand_computed_update():
    # v1 = v0 - lr * (X^T (X v0 + b0 - y) / n (and the mean residual for b)
    #                 + lam * (v0 - w)),  with X = I-ish rows written out by hand.
    X = np.array([[1.0, 0.0], [0.0, 2.0]])
    y = np.array([1.0, 2.0])
    w = np.array([0.5, -0.5, 0.25])  # the global model: (coef a, coef b, intercept)
    v0 = np.array([1.0, 1.0, 0.0])  # the previous personal model
    settings = TrainingSettings(learning_rate=0.1, batch_size=2, personal_epochs=1)
    v1 = ditto_fit(LINEAR, settings, w, v0, X, y, lam=2.0, seed=0)
    # residuals r = X v0 + b0 - y = [1 - 1, 2 - 2] = [0, 0]: only the proximal pull acts
    # grad = 2 * (v0 - w) = [1, 3, -0.5];  v1 = v0 - 0.1 * grad
    np.testing.assert_allclose(v1, [0.9, 0.7, 0.05], rtol=0, atol=1e-15)
    # and with a data term: v0 = 0, residuals -y; grad_W = X^T(-y)/2 = [-0.5, -2],
    # grad_b = -1.5; the prox term lam * (0 - w) = [-1, 1, -0.5]
    v1 = ditto_fit(LINEAR, settings, w, np.zeros(3), X, y, lam=2.0, seed=0)
    np.testing.assert_allclose(v1, -0.1 * np.array([-1.5, -1.0, -2.0]), rtol=0, atol=1e-15)


def test_ditto_with_a_huge_lambda_stays_at_the_global_model():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 2)), rng.normal(size=30)
    w = np.array([0.3, -0.2, 0.1])
    settings = TrainingSettings(learning_rate=0.01, personal_epochs=5)
    v = ditto_fit(LINEAR, settings, w, w, X, y, lam=99.0, seed=1)
    assert np.abs(v - w).max() < 0.05


def _lambda_loss(lam, X, y, w, settings, fit, val):
    v = ditto_fit(LINEAR, settings, w, w, X[fit], y[fit], lam, seed=3)
    return float(make_model(LINEAR).set_params_vector(v).loss(X[val], y[val]))


def test_lambda_selection_picks_the_best_validation_lambda():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 2))
    y = X @ np.array([2.0, -1.0]) + 3.0 + rng.normal(scale=0.1, size=60)
    w = np.zeros(3)  # a global model far from this device: small lambdas win
    settings = TrainingSettings(learning_rate=0.1, personal_epochs=3,
                                ditto_lambdas=(0.01, 1.0, 30.0))
    fit, val = validation_split(y, classifier=False, seed=3)
    losses = {lam: _lambda_loss(lam, X, y, w, settings, fit, val) for lam in (0.01, 1.0, 30.0)}
    chosen = choose_lambda(LINEAR, settings, w, w, X, y, seed=3)
    assert chosen == min(losses, key=losses.__getitem__) == 0.01
    # A device whose rows are the global model's own noise: the strongest pull wins.
    y2 = X @ np.array([0.0, 0.0]) + rng.normal(scale=1.0, size=60)
    losses = {lam: _lambda_loss(lam, X, y2, w, settings, fit, val) for lam in (0.01, 1.0, 30.0)}
    assert choose_lambda(LINEAR, settings, w, w, X, y2, seed=3) == \
        min(losses, key=losses.__getitem__)


def test_too_few_rows_take_the_middle_lambda():
    X, y = np.ones((5, 2)), np.arange(5.0)
    settings = TrainingSettings(ditto_lambdas=(1.0, 0.01, 0.1))
    assert choose_lambda(LINEAR, settings, np.zeros(3), np.zeros(3), X, y, seed=0) == 0.1


def test_validation_split_is_stratified_and_seeded():
    y = np.array([0] * 12 + [1] * 8 + [2])
    fit, val = validation_split(y, classifier=True, seed=5)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(21))
    assert np.bincount(y[val].astype(int), minlength=3).tolist() == [3, 2, 0]
    again = validation_split(y, classifier=True, seed=5)
    assert (again[0] == fit).all() and (again[1] == val).all()


def test_intercept_mode_recovers_a_device_offset_and_gain_exactly():
    # The fleet's spec standardises with the pooled statistics of x (as the statistics
    # round does); this device sees x_k = a * x + b and a label offset c.
    rng = np.random.default_rng(2)
    X = rng.normal(size=(80, 2)) * (3.0, 0.5) + (10.0, -2.0)
    y = X @ np.array([1.5, -4.0]) + 0.7
    spec = replace_spec(LINEAR, X)
    g = make_model(spec, learning_rate=0.2, epochs=400, batch_size=80).fit(X, y)
    assert np.abs(g.predict(X) - y).max() < 1e-8  # the noiseless global fit
    Xk, yk = X * (2.0, 0.3) + (5.0, 1.0), y + 4.0  # positive gains
    assert np.abs(g.predict(Xk) - yk).max() > 1.0  # the global model is wrong here
    personal = fit_personal("intercept", spec, TrainingSettings(personal="intercept"),
                            g.params_, Xk, yk)
    np.testing.assert_allclose(personal.predict(Xk), yk, rtol=0, atol=1e-8)
    # Only the standardisation and the intercept changed; the coefficients are the fleet's.
    np.testing.assert_array_equal(personal.params[:2], g.params_[:2])


def replace_spec(spec: ModelSpec, X: np.ndarray) -> ModelSpec:
    return ModelSpec(kind=spec.kind, features=spec.features, n_classes=spec.n_classes,
                     center=tuple(X.mean(axis=0)), scale=tuple(X.std(axis=0)))


def test_own_standardisation_keeps_constant_features_and_single_rows():
    spec = ModelSpec(kind="linear", features=("a", "b"), center=(1.0, 2.0), scale=(2.0, 4.0))
    X = np.array([[3.0, 2.0], [5.0, 2.0]])
    own = own_standardisation(spec, X)
    assert own.center == (4.0, 2.0) and own.scale == (1.0, 4.0)
    assert own_standardisation(spec, X[:1]) == spec


def test_intercept_mode_fits_a_classifier_intercept():
    rng = np.random.default_rng(4)
    spec = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2)
    X = rng.normal(size=(200, 2))
    y = (X[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(float)
    g = make_model(spec, learning_rate=0.5, epochs=30).fit(X, y)
    Xk = X * 4.0 - 3.0  # a gain and an offset on this device
    before = float((g.predict(Xk) == y).mean())
    personal = fit_personal("intercept", spec, TrainingSettings(), g.params_, Xk, y)
    after = float((personal.predict(Xk) == y).mean())
    assert after > before + 0.1 and after >= float((g.predict(X) == y).mean()) - 0.02
    assert personal.predict_proba(Xk).shape == (200, 2)


def test_finetune_lowers_the_local_loss():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 2))
    y = X @ np.array([-1.0, 2.0]) + 1.0
    w = np.array([1.0, 1.0, 0.0])  # another device's model
    before = make_model(LINEAR).set_params_vector(w).loss(X, y)
    personal = fit_personal("finetune", LINEAR, TrainingSettings(personal_epochs=3), w, X, y,
                            seed=0)
    assert personal.model().loss(X, y) < 0.5 * before


def test_ditto_warm_starts_from_a_matching_previous_model_only():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(20, 2)), rng.normal(size=20)
    settings = TrainingSettings(personal="ditto", personal_epochs=1, ditto_lambdas=(0.1,))
    w = np.zeros(3)
    prev = PersonalModel("ditto", LINEAR, np.array([5.0, 5.0, 5.0]), LINEAR, lam=0.1)
    warm = fit_personal("ditto", LINEAR, settings, w, X, y, previous=prev, seed=0)
    cold = fit_personal("ditto", LINEAR, settings, w, X, y, seed=0)
    assert np.abs(warm.params - cold.params).min() > 1.0  # started from 5, not 0
    other = ModelSpec(kind="linear", features=("a", "b"), center=(1.0, 1.0))
    stale = PersonalModel("ditto", other, prev.params, other, lam=0.1)
    again = fit_personal("ditto", LINEAR, settings, w, X, y, previous=stale, seed=0)
    np.testing.assert_array_equal(again.params, cold.params)


def test_saved_personal_model_reloads_and_predicts_as_a_plain_model(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.normal(size=(30, 2)) + 3.0
    y = X @ np.array([1.0, 1.0])
    model = fit_personal("intercept", LINEAR, TrainingSettings(), np.ones(3), X, y,
                         meta={"run_id": "r1", "round_id": 4, "model_version": 3})
    store = PersonalStore(str(tmp_path))
    store.keep(model)
    loaded = PersonalStore(str(tmp_path)).current
    assert loaded is not None
    assert loaded.mode == "intercept" and loaded.spec == model.spec
    assert loaded.base_spec == LINEAR and loaded.meta["model_version"] == 3
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(load_personal(tmp_path / PERSONAL_FILE).params, model.params)


def test_a_broken_personal_file_is_ignored_with_one_line(tmp_path, caplog):
    (tmp_path / PERSONAL_FILE).write_bytes(b"not a model")
    assert PersonalStore(str(tmp_path)).current is None
    assert [r.levelname for r in caplog.records] == ["WARNING"]


def test_unknown_mode_and_bad_rows_raise_model_errors():
    with pytest.raises(ModelError, match="unknown personal mode"):
        fit_personal("magic", LINEAR, TrainingSettings(), np.zeros(3), np.ones((2, 2)),
                     np.ones(2))
    with pytest.raises(ModelError):
        fit_personal("finetune", LINEAR, TrainingSettings(), np.zeros(3), np.ones((0, 2)),
                     np.ones(0))
