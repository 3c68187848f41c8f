"""Binary (sigmoid) and multinomial (softmax) logistic regression trained by SGD."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.models.base import BaseLinearMapModel, FloatArray, IntArray, as_label_vector
from fedmq.models.errors import LabelError
from fedmq.models.metrics import accuracy

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression


def sigmoid(t: FloatArray) -> FloatArray:
    """Logistic function that never evaluates ``exp`` of a large positive number."""
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softmax(S: FloatArray) -> FloatArray:
    """Row-wise softmax, shifted by the row max so ``exp`` cannot overflow."""
    shifted = S - S.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


class LogisticRegressionModel(BaseLinearMapModel):
    """Logistic regression with labels ``0..n_classes-1``.

    ``n_classes == 2`` uses one score per sample (``params`` = ``[w_1..w_d, b]``),
    like scikit-learn's binary case; ``n_classes > 2`` uses softmax over K scores
    (``params`` = K rows of ``[w_k1..w_kd, b_k]``). Losses are computed from the
    scores via log-sum-exp, so they stay finite even for saturated probabilities.
    """

    _kind = "logistic"

    @property
    def _binary(self) -> bool:
        return self.spec.n_classes == 2

    def _check_targets(self, y: ArrayLike, n_samples: int) -> NDArray[Any]:
        values = as_label_vector(y, n_samples)
        if not np.array_equal(values, np.round(values)):
            raise LabelError("bad-labels", "class labels must be integers")
        k = self.spec.n_classes
        if values.min() < 0 or values.max() >= k:
            raise LabelError(
                "class-outside-model",
                f"class labels must lie in [0, {k}), got range [{values.min():g}, {values.max():g}]"
            )
        labels = values.astype(np.int64)
        return labels

    def _score_gradient(self, scores: FloatArray, y: NDArray[Any]) -> FloatArray:
        if self._binary:
            residual: FloatArray = sigmoid(scores) - y[:, None]
            return residual
        G = softmax(scores)
        G[np.arange(y.shape[0]), y] -= 1.0
        return G

    def _mean_loss(self, scores: FloatArray, y: NDArray[Any]) -> float:
        if self._binary:
            s = scores[:, 0]
            # -log p(y|s) = log(1 + e^s) - y*s, with log1p-exp evaluated stably.
            return float(np.mean(np.logaddexp(0.0, s) - y * s))
        row_max = scores.max(axis=1)
        log_norm = row_max + np.log(np.exp(scores - row_max[:, None]).sum(axis=1))
        return float(np.mean(log_norm - scores[np.arange(y.shape[0]), y]))

    def decision_function(self, X: ArrayLike) -> FloatArray:
        """Shape (n,) for binary (score of class 1), (n, K) for softmax, as in sklearn."""
        scores = self._scores(X)
        return scores[:, 0] if self._binary else scores

    def predict_proba(self, X: ArrayLike) -> FloatArray:
        scores = self._scores(X)
        if self._binary:
            p = sigmoid(scores[:, 0])
            return np.column_stack([1.0 - p, p])
        return softmax(scores)

    def predict(self, X: ArrayLike) -> IntArray:
        scores = self._scores(X)
        # "score > 0" rather than "p >= 0.5" so ties break exactly like sklearn.
        labels: IntArray = (
            (scores[:, 0] > 0).astype(np.int64)
            if self._binary
            else np.argmax(scores, axis=1).astype(np.int64)
        )
        return labels

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Mean accuracy."""
        pred = self.predict(X)
        return accuracy(self._check_targets(y, pred.shape[0]), pred)

    def to_sklearn(self) -> LogisticRegression:
        """A fitted ``sklearn.linear_model.LogisticRegression`` that accepts raw features."""
        # Imported lazily and optional: a device install has no scikit-learn.
        from fedmq.models.sklearn_import import linear_model

        W_raw, b_raw = self._raw_coefficients()
        est: LogisticRegression = linear_model().LogisticRegression()
        est.coef_ = W_raw.copy()
        est.intercept_ = b_raw.copy()
        est.classes_ = np.arange(self.spec.n_classes, dtype=np.int64)
        est.n_features_in_ = self.spec.n_features
        return est
