"""Federated evaluation: decrypted fleet metrics equal the plaintext metrics on pooled rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedmq.models import ModelSpec, make_model
from fedmq.models.evaluation import evaluate
from fedmq.protocol.crypto.codec import CodecParams
from fedmq.protocol.crypto.paillier import add_ciphertexts, decrypt_ints, encrypt_ints
from fedmq.protocol.errors import CodecError
from fedmq.protocol.layout import layout_for
from fedmq.protocol.sums.evaluation import FleetEvaluation, eval_length, local_evaluation
from fedmq.protocol.sums.statistics import StatsParams


def _devices(kind: str, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        n = int(rng.integers(3, 40))
        X = rng.normal(i, 2.0, (n, 3)) * np.array([1.0, 100.0, 0.01])
        if kind == "linear":
            y = X @ np.array([1.0, 0.02, 30.0]) + 60 + rng.normal(0, 1, n)
        else:
            y = rng.integers(0, 2 if i % 3 else 3, n).astype(float)  # class 2: a few devices
        out.append((X, y))
    return out


def _fleet_evaluation(keypair: Any, model: Any, devices: list[Any],
                      params: StatsParams) -> FleetEvaluation:
    pub, priv = keypair
    layout = layout_for("evaluation", model.spec, CodecParams(), params, pub.n)
    total = None
    for X, y in devices:
        cts = encrypt_ints(pub, layout.encode([local_evaluation(model, X, y, params)]))
        total = cts if total is None else add_ciphertexts(pub, total, cts)
    (sums,) = layout.decode(decrypt_ints(priv, total), len(devices))
    return FleetEvaluation.from_sums(sums, model.spec, params)


@pytest.mark.parametrize("classes", [2, 3])
def test_fleet_confusion_and_accuracy_equal_the_pooled_ones(keypair: Any, classes: int) -> None:
    spec = ModelSpec(kind="logistic", features=("a", "b", "c"), n_classes=classes,
                     center=(0.0, 0.0, 0.0), scale=(3.0, 300.0, 0.03))
    rng = np.random.default_rng(2)
    model = make_model(spec).set_params_vector(rng.normal(0, 1, spec.n_params))
    devices = [(X, np.minimum(y, classes - 1)) for X, y in _devices("logistic", 9)]
    params = StatsParams()
    fleet = _fleet_evaluation(keypair, model, devices, params)
    X = np.vstack([x for x, _ in devices])
    y = np.concatenate([y for _, y in devices])
    ref = evaluate(model, X, y)
    assert fleet.n == ref.n_samples
    assert fleet.confusion == ref.confusion  # counts: exact
    assert fleet.recall == ref.recall
    assert fleet.metrics["accuracy"] == ref.metrics["accuracy"]
    assert fleet.metrics["balanced_accuracy"] == ref.metrics["balanced_accuracy"]
    assert fleet.metrics["log_loss"] == pytest.approx(ref.metrics["log_loss"],
                                                      abs=params.resolution)


def test_fleet_mse_and_r2_equal_the_pooled_ones(keypair: Any) -> None:
    spec = ModelSpec(kind="linear", features=("a", "b", "c"), center=(0.0, 0.0, 0.0),
                     scale=(3.0, 300.0, 0.03))
    model = make_model(spec).set_params_vector([2.5, 1.5, 0.7, 50.0])
    devices = _devices("linear", 10)
    params = StatsParams()
    fleet = _fleet_evaluation(keypair, model, devices, params)
    X = np.vstack([x for x, _ in devices])
    y = np.concatenate([y for _, y in devices])
    ref = evaluate(model, X, y)
    assert fleet.n == ref.n_samples
    for name in ("mse", "mae", "r2"):
        assert fleet.metrics[name] == pytest.approx(ref.metrics[name], rel=1e-6, abs=1e-6), name
    assert fleet.metrics["r2"] != 0  # a real model, not a constant


def test_a_class_no_contributor_holds_is_visible() -> None:
    spec = ModelSpec(kind="logistic", features=("a",), n_classes=3)
    model = make_model(spec).set_params_vector(np.zeros(spec.n_params))
    params = StatsParams()
    sums = local_evaluation(model, np.array([[1.0], [2.0]]), np.array([0.0, 1.0]), params,
                            clipped_train=4)
    assert len(sums) == eval_length(spec)
    fleet = FleetEvaluation.from_sums(sums, spec, params)
    assert fleet.classes_absent == (2,) and fleet.clipped_train == 4
    assert fleet.recall[2] is None


def test_inconsistent_sums_are_rejected() -> None:
    spec = ModelSpec(kind="logistic", features=("a",), n_classes=2)
    with pytest.raises(CodecError):
        FleetEvaluation.from_sums([0, 1, 0, 0, 0, 0, 0, 5], spec, StatsParams())
