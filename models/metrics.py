"""Evaluation metrics in plain numpy (no scikit-learn import on devices)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.models.errors import ModelError


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.float64], ...]:
    try:
        a = np.asarray(y_true, dtype=np.float64)
        b = np.asarray(y_pred, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"metric inputs must be numeric: {exc}") from exc
    _check_same_1d(a, b)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ModelError("metric inputs contain NaN or infinite values")
    return a, b


def _check_same_1d(a: NDArray[np.generic], b: NDArray[np.generic]) -> None:
    if a.ndim != 1 or b.ndim != 1:
        raise ModelError(f"expected 1-D inputs, got shapes {a.shape} and {b.shape}")
    if a.shape[0] != b.shape[0]:
        raise ModelError(f"length mismatch: {a.shape[0]} vs {b.shape[0]}")
    if a.shape[0] == 0:
        raise ModelError("metric inputs must not be empty")


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of exact label matches; labels may be any comparable dtype."""
    a = np.asarray(y_true)
    b = np.asarray(y_pred)
    _check_same_1d(a, b)
    return float(np.mean(a == b))


def mse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    a, b = _pair(y_true, y_pred)
    return float(np.mean((a - b) ** 2))


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    a, b = _pair(y_true, y_pred)
    return float(np.mean(np.abs(a - b)))


def r2_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """R^2; for constant ``y_true`` returns 1.0 if predicted exactly, else 0.0 (as sklearn)."""
    a, b = _pair(y_true, y_pred)
    ss_res = float(np.sum((a - b) ** 2))
    ss_tot = float(np.sum((a - a.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


def log_loss(y_true: ArrayLike, proba: ArrayLike, *, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood of integer labels ``0..K-1``.

    ``proba`` is (n, K), or 1-D as the probability of class 1 in a binary problem.
    Probabilities are clipped to ``[eps, 1 - eps]`` so a confident mistake costs a
    large but finite amount instead of ``inf``.
    """
    if not 0.0 < eps < 0.5:
        raise ModelError(f"eps must be in (0, 0.5), got {eps!r}")
    try:
        labels = np.asarray(y_true, dtype=np.float64)
        p = np.asarray(proba, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"log_loss inputs must be numeric: {exc}") from exc
    if p.ndim == 1:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[1] < 2:
        raise ModelError(f"proba must be 1-D or (n, K >= 2), got shape {p.shape}")
    _check_same_1d(labels, p[:, 0])
    if not np.all(np.isfinite(p)) or np.any(p < 0.0) or np.any(p > 1.0):
        raise ModelError("proba entries must be finite and within [0, 1]")
    k = p.shape[1]
    if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
        raise ModelError("y_true must contain integer class labels")
    if labels.min() < 0 or labels.max() >= k:
        raise ModelError(f"y_true labels must lie in [0, {k}) to index proba columns")
    picked = p[np.arange(p.shape[0]), labels.astype(np.int64)]
    return float(-np.mean(np.log(np.clip(picked, eps, 1.0 - eps))))
