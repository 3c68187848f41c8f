"""Carrying parameters into a new standardisation keeps every prediction."""

from __future__ import annotations

import numpy as np
import pytest

from fedmq.models import ModelError, ModelSpec, make_model
from fedmq.models.rescale import restandardize


def _predict(spec: ModelSpec, params: np.ndarray, X: np.ndarray) -> np.ndarray:
    model = make_model(spec).set_params_vector(params)
    if spec.kind == "logistic":
        return np.asarray(model.predict_proba(X))
    return np.asarray(model.predict(X))


@pytest.mark.parametrize("kind,n_classes", [("linear", 0), ("logistic", 2), ("logistic", 3)])
def test_predictions_are_kept(kind: str, n_classes: int) -> None:
    rng = np.random.default_rng(3)
    target = {"target_center": 20.0, "target_scale": 4.0} if kind == "linear" else {}
    new_target = {"target_center": 25.0, "target_scale": 2.5} if kind == "linear" else {}
    old = ModelSpec(kind=kind, features=("a", "b"), n_classes=n_classes,
                    center=(1.0, -2.0), scale=(2.0, 0.5), **target)
    new = ModelSpec(kind=kind, features=("a", "b"), n_classes=n_classes,
                    center=(3.0, 0.5), scale=(0.7, 4.0), **new_target)
    params = rng.normal(size=old.n_params)
    X = rng.normal(size=(50, 2)) * 5
    mapped = restandardize(old, new, params)
    assert not np.allclose(mapped, params)  # the standardisation did change
    np.testing.assert_allclose(_predict(new, mapped, X), _predict(old, params, X),
                               rtol=1e-9, atol=1e-9)


def test_same_spec_is_bit_for_bit() -> None:
    spec = ModelSpec(kind="logistic", features=("a",), n_classes=2, center=(0.3,),
                     scale=(1.7,))
    params = np.array([0.1234567891, -2.5])
    assert restandardize(spec, spec, params).tolist() == params.tolist()


def test_unset_standardisation_counts_as_identity() -> None:
    raw = ModelSpec(kind="logistic", features=("a",), n_classes=2)
    scaled = ModelSpec(kind="logistic", features=("a",), n_classes=2, center=(2.0,),
                       scale=(4.0,))
    X = np.array([[0.0], [1.0], [7.0]])
    params = np.array([0.5, -1.0])
    np.testing.assert_allclose(_predict(scaled, restandardize(raw, scaled, params), X),
                               _predict(raw, params, X))


@pytest.mark.parametrize("other", [
    ModelSpec(kind="logistic", features=("a", "c"), n_classes=2),
    ModelSpec(kind="logistic", features=("a", "b"), n_classes=3),
    ModelSpec(kind="linear", features=("a", "b")),
])
def test_another_model_is_refused(other: ModelSpec) -> None:
    spec = ModelSpec(kind="logistic", features=("a", "b"), n_classes=2)
    with pytest.raises(ModelError, match="cannot carry"):
        restandardize(spec, other, np.zeros(spec.n_params))
