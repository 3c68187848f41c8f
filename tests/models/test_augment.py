"""On-device augmentation: balanced classes, jitter statistics, determinism, labels kept."""

from __future__ import annotations

import numpy as np
import pytest

from fedmq.models.augment import augment
from fedmq.models.errors import ModelError


def _rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([0.0] * 30 + [1.0] * 3 + [3.0] * 7)  # class 2 absent on this device
    return rng.normal(0, 1, (y.size, 4)), y


def test_oversampling_balances_the_classes_the_device_holds() -> None:
    X, y = _rows()
    Xa, ya = augment(X, y, "oversample", seed=1)
    classes, counts = np.unique(ya, return_counts=True)
    assert classes.tolist() == [0.0, 1.0, 3.0] and counts.tolist() == [30, 30, 30]
    assert np.array_equal(Xa[:40], X) and np.array_equal(ya[:40], y)  # originals all stay
    # Every added row is a copy of a real row of its own class.
    for row, label in zip(Xa[40:], ya[40:], strict=True):
        matches = np.flatnonzero(np.all(row == X, axis=1))
        assert matches.size and y[matches[0]] == label


def test_jitter_appends_one_perturbed_copy_with_the_announced_statistics() -> None:
    rng = np.random.default_rng(0)
    n, amplitude = 20_000, 0.1
    X = np.column_stack([rng.normal(0, 3.0, n), np.full(n, 5.0)])
    y = rng.integers(0, 2, n).astype(float)
    Xa, ya = augment(X, y, "jitter", amplitude=amplitude, seed=2)
    assert Xa.shape == (2 * n, 2) and np.array_equal(ya, np.concatenate([y, y]))
    assert np.array_equal(Xa[:n], X)
    gain = Xa[n:, 1] / 5.0  # a constant column gets no noise: only the row's gain
    assert gain.min() >= 1 - amplitude and gain.max() <= 1 + amplitude
    assert gain.mean() == pytest.approx(1.0, abs=0.003)
    assert gain.std() == pytest.approx(amplitude / np.sqrt(3), rel=0.03)  # U(-a, a)
    noise = Xa[n:, 0] / gain - X[:, 0]
    assert noise.mean() == pytest.approx(0.0, abs=0.01)
    assert noise.std() == pytest.approx(amplitude * X[:, 0].std(), rel=0.03)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    X, y = _rows()
    a = augment(X, y, "oversample+jitter", seed=7)
    b = augment(X, y, "oversample+jitter", seed=7)
    c = augment(X, y, "oversample+jitter", seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (180, 4)  # 3 classes of 30, then one jittered copy each


def test_none_changes_nothing_and_regression_cannot_oversample() -> None:
    X, y = _rows()
    Xa, ya = augment(X, y, "none")
    assert Xa is X and ya is y
    Xj, yj = augment(X, y + 0.5, "jitter", classifier=False, seed=0)
    assert Xj.shape == (80, 4) and np.array_equal(yj[40:], y + 0.5)
    with pytest.raises(ModelError, match="regression"):
        augment(X, y, "oversample", classifier=False)
    with pytest.raises(ModelError, match="augment must be one of"):
        augment(X, y, "mixup")
    with pytest.raises(ModelError, match="amplitude"):
        augment(X, y, "jitter", amplitude=1.5)
