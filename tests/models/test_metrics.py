from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

from fedmq.models import ModelError, accuracy, log_loss, mae, mse, r2_score

rng = np.random.default_rng(0)
Y_TRUE = rng.normal(size=50)
Y_PRED = Y_TRUE + rng.normal(scale=0.5, size=50)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (mse, skm.mean_squared_error),
        (mae, skm.mean_absolute_error),
        (r2_score, skm.r2_score),
    ],
)
def test_regression_metrics_match_sklearn(ours: Any, theirs: Any) -> None:
    assert ours(Y_TRUE, Y_PRED) == pytest.approx(theirs(Y_TRUE, Y_PRED), rel=1e-12)
    assert isinstance(ours(Y_TRUE, Y_PRED), float)


def test_known_values() -> None:
    assert mse([1.0, 2.0], [1.0, 4.0]) == 2.0
    assert mae([1.0, 2.0], [0.0, 4.0]) == 1.5
    assert r2_score([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert r2_score([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0
    assert accuracy([0, 1, 2, 1], [0, 2, 2, 1]) == 0.75
    assert accuracy(["a", "b"], ["a", "a"]) == 0.5


def test_r2_with_constant_target() -> None:
    assert r2_score([3.0, 3.0], [3.0, 3.0]) == 1.0
    assert r2_score([3.0, 3.0], [3.0, 4.0]) == 0.0


def test_log_loss_matches_sklearn() -> None:
    y = rng.integers(0, 3, 40)
    logits = rng.normal(size=(40, 3))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert log_loss(y, proba) == pytest.approx(skm.log_loss(y, proba, labels=[0, 1, 2]), rel=1e-9)


def test_log_loss_binary_vector_form() -> None:
    y = np.array([0, 1, 1])
    p1 = np.array([0.2, 0.7, 0.9])
    expected = -np.mean(np.log([0.8, 0.7, 0.9]))
    assert log_loss(y, p1) == pytest.approx(expected, rel=1e-12)
    assert log_loss(y, np.column_stack([1 - p1, p1])) == pytest.approx(expected, rel=1e-12)


def test_log_loss_is_clipped() -> None:
    value = log_loss([1], [[1.0, 0.0]])
    assert np.isfinite(value)
    assert value == pytest.approx(-np.log(1e-15))
    assert log_loss([1], [[1.0, 0.0]], eps=1e-3) == pytest.approx(-np.log(1e-3))


@pytest.mark.parametrize("fn", [mse, mae, r2_score, accuracy])
@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1.0, 2.0], [1.0], "length"),
        ([[1.0], [2.0]], [1.0, 2.0], "1-D"),
        ([], [], "empty"),
    ],
)
def test_shape_validation(fn: Any, a: Any, b: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        fn(a, b)


def test_regression_metrics_reject_non_finite() -> None:
    with pytest.raises(ModelError, match="NaN"):
        mse([1.0, np.nan], [1.0, 2.0])


@pytest.mark.parametrize(
    ("y", "proba", "message"),
    [
        ([0, 1], [[0.5, 0.5]], "length"),
        ([0], [[[0.5, 0.5]]], "shape"),
        ([0], [[1.0]], "shape"),
        ([2], [[0.5, 0.5]], r"\[0, 2\)"),
        ([0.5], [[0.5, 0.5]], "integer"),
        ([0], [[1.5, -0.5]], r"\[0, 1\]"),
        ([0], [[np.nan, 0.5]], "finite"),
    ],
)
def test_log_loss_validation(y: Any, proba: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        log_loss(y, proba)


def test_log_loss_rejects_bad_eps() -> None:
    with pytest.raises(ModelError, match="eps"):
        log_loss([0], [[0.5, 0.5]], eps=0.0)
