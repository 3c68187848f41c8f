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
    # Federated distillation (Jeong et al. 2018; set by edge_agent.trainer.local_fit):
    # ``teacher`` holds the fleet's mean logits per true class, shape (K, K) (binary: rows
    # (0, s)); a row of zeros means no teacher for that class (no device held it) and its
    # rows train without the term. See ``distill_loss`` for the objective.
    teacher: FloatArray | None = None
    distill_weight: float = 0.0
    temperature: float = 1.0

    @property
    def _binary(self) -> bool:
        return self.spec.n_classes == 2

    def _student_logits(self, scores: FloatArray) -> FloatArray:
        """(n, K) logits: binary scores s become (0, s), whose softmax is (1 - p, p)."""
        if self._binary:
            return np.column_stack([np.zeros(scores.shape[0]), scores[:, 0]])
        return scores

    def _distilling(self, y: NDArray[Any]) -> tuple[FloatArray, FloatArray] | None:
        """(teacher probabilities at T, per-row weight) for rows of classes ``y``, or None."""
        if self.teacher is None or not self.distill_weight > 0:
            return None
        T = float(self.temperature)
        has = np.any(self.teacher != 0, axis=1)
        return softmax(self.teacher / T)[y], self.distill_weight * has[y].astype(np.float64)

    def distill_loss(self, scores: FloatArray, y: NDArray[Any]) -> float:
        """Mean over rows of  weight * T^2 * KL(softmax(t_c / T) || softmax(z / T)),  t_c the
        teacher's logits for the row's true class c and z the row's (student) logits.

        The T^2 (Hinton et al. 2015) keeps the term's gradient on the scale of the
        cross-entropy's as T changes: d/dz of it is  weight * T * (softmax(z/T) - softmax(t_c/T)),
        exactly (KL's p log p part does not depend on z; d(-sum_j p_j log q_j)/dz = (q - p)/T).
        Binary: z = (0, s), so only the second component moves: weight * T * (q_1 - p_1).
        """
        distilling = self._distilling(y)
        if distilling is None:
            return 0.0
        p, weight = distilling
        T = float(self.temperature)
        log_q = self._student_logits(scores) / T
        log_q = log_q - np.logaddexp.reduce(log_q, axis=1, keepdims=True)
        log_p = np.log(np.clip(p, 1e-300, 1.0))
        kl = np.sum(p * (log_p - log_q), axis=1)
        return float(np.mean(weight * T * T * kl))

    def _training_gradient(self, scores: FloatArray, y: NDArray[Any]) -> FloatArray:
        G = self._score_gradient(scores, y)
        distilling = self._distilling(y)
        if distilling is None:
            return G
        p, weight = distilling
        T = float(self.temperature)
        q = softmax(self._student_logits(scores) / T)
        extra = (weight * T)[:, None] * (q - p)
        out: FloatArray = G + (extra[:, 1:] if self._binary else extra)
        return out

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
