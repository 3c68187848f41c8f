"""Synthetic data with deliberately non-trivial standardization for the models tests.

Only fixtures live here: test modules must not ``import conftest`` because several
conftest.py files in the tree share that module name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np
import pytest
from numpy.typing import NDArray

Data: TypeAlias = tuple[NDArray[np.float64], NDArray[Any]]

_CENTER = np.array([10.0, -5.0, 100.0])
_SCALE = np.array([2.0, 0.5, 20.0])
_FEATURES = ("temp", "vibration", "pressure")


@pytest.fixture
def features() -> tuple[str, ...]:
    return _FEATURES


@pytest.fixture
def center() -> NDArray[np.float64]:
    return _CENTER.copy()


@pytest.fixture
def scale() -> NDArray[np.float64]:
    return _SCALE.copy()


@pytest.fixture
def linear_truth() -> tuple[NDArray[np.float64], float]:
    """Raw-feature coefficients and intercept the regression should recover."""
    return np.array([1.5, -3.0, 0.05]), 2.0


@pytest.fixture
def linear_data(linear_truth: tuple[NDArray[np.float64], float]) -> Data:
    w, b = linear_truth
    rng = np.random.default_rng(123)
    X = _CENTER + _SCALE * rng.standard_normal((400, 3))
    y = X @ w + b + 0.1 * rng.standard_normal(400)
    return X, y


def _blobs(n_classes: int, n: int, seed: int) -> Data:
    """Gaussian blobs placed in standardized space, then mapped to raw units."""
    rng = np.random.default_rng(seed)
    means = np.array([[0.0, 0.0, 0.0], [3.0, 3.0, 0.0], [-3.0, 3.0, 3.0]])[:n_classes]
    # Centre the blobs so the spec's center/scale really standardize the data.
    means -= means.mean(axis=0)
    y = rng.integers(0, n_classes, n)
    Z = means[y] + rng.standard_normal((n, 3))
    return _CENTER + _SCALE * Z, y.astype(np.int64)


@pytest.fixture
def make_blobs() -> Callable[[int, int, int], Data]:
    """``make_blobs(n_classes, n_samples, seed)`` -> (X, y)."""
    return _blobs
