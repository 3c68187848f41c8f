"""Everything ``fedmq evaluate`` reports about a model on labelled rows. Pure numpy.

Classification: accuracy, balanced accuracy (mean per-class recall, so a model
that always answers "no fault" scores 0.5, not 0.95), log loss, per-class
recall and the confusion matrix. Regression: MSE, MAE and R^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.models.base import FloatArray
from fedmq.models.errors import ModelError
from fedmq.models.linear import LinearRegressionModel
from fedmq.models.logistic import LogisticRegressionModel
from fedmq.models.metrics import accuracy, log_loss, mae, mse, r2_score


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """Rows are the true class, columns the predicted one (as scikit-learn)."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (t, p), 1)
    return matrix


def per_class_recall(matrix: NDArray[np.int64]) -> tuple[float | None, ...]:
    """Recall of each class; None for a class absent from the data (recall undefined)."""
    support = matrix.sum(axis=1)
    return tuple(float(matrix[k, k] / support[k]) if support[k] else None
                 for k in range(matrix.shape[0]))


def balanced_accuracy(matrix: NDArray[np.int64]) -> float:
    """Mean recall over the classes present in the data (scikit-learn's definition)."""
    recalls = [r for r in per_class_recall(matrix) if r is not None]
    return float(np.mean(recalls))


@dataclass(frozen=True)
class Evaluation:
    kind: str
    n_samples: int
    metrics: dict[str, float]
    recall: tuple[float | None, ...] = ()
    confusion: tuple[tuple[int, ...], ...] = ()

    def lines(self) -> list[str]:
        out = [f"samples: {self.n_samples}"]
        out += [f"{name}: {value:.6f}" for name, value in self.metrics.items()]
        if self.confusion:
            out.append("per-class recall: " + ", ".join(
                f"{k}: {'n/a (no samples)' if r is None else f'{r:.6f}'}"
                for k, r in enumerate(self.recall)))
            width = max(len(str(v)) for row in self.confusion for v in row) + 1
            out.append("confusion matrix (rows: true class, columns: predicted):")
            out.append("     " + "".join(f"{k:>{width}}" for k in range(len(self.confusion))))
            out += [f"{k:>4} " + "".join(f"{v:>{width}}" for v in row)
                    for k, row in enumerate(self.confusion)]
        return out


def evaluate(model: LinearRegressionModel | LogisticRegressionModel, X: ArrayLike,
             y: ArrayLike) -> Evaluation:
    """Metrics of ``model`` on rows ``X`` (raw features) with targets ``y``."""
    if isinstance(model, LinearRegressionModel):
        pred: FloatArray = model.predict(X)
        return Evaluation("linear", int(pred.shape[0]), {
            "mse": mse(y, pred), "mae": mae(y, pred), "r2": r2_score(y, pred)})
    k = model.spec.n_classes
    labels = model._check_targets(y, np.asarray(X).shape[0])
    predicted = model.predict(X)
    matrix = confusion_matrix(labels, predicted, k)
    if matrix.sum() == 0:  # pragma: no cover - _check_targets rejects empty input
        raise ModelError("no samples to evaluate")
    return Evaluation(
        "logistic", int(labels.shape[0]),
        {"accuracy": accuracy(labels, predicted), "balanced_accuracy": balanced_accuracy(matrix),
         "log_loss": log_loss(labels, model.predict_proba(X))},
        recall=per_class_recall(matrix),
        confusion=tuple(tuple(int(v) for v in row) for row in matrix))
