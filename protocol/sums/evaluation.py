"""Federated evaluation: the sums a fleet metric needs, per device, and the metric from their total.

Each reporting device evaluates the global model it received on its own rows and
adds these integers to its encrypted update; the aggregator decrypts only the
fleet's totals. Accuracy, balanced accuracy and per-class recall follow from
the summed confusion matrix; MSE, MAE and R^2 from sums of residuals and labels.
No single device's metric is ever decrypted. Values use the statistics'
fixed point (protocol.sums.statistics.StatsParams), so the fleet metric equals the
pooled-data metric to within that resolution; counts are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedmq.models import ModelSpec
from fedmq.models.evaluation import balanced_accuracy, confusion_matrix, per_class_recall
from fedmq.models.linear import LinearRegressionModel
from fedmq.models.logistic import LogisticRegressionModel
from fedmq.protocol.errors import CodecError
from fedmq.protocol.sums.statistics import FloatArray, StatsParams, exact_sums, quantize

LOG_LOSS_EPS = 1e-15  # as models.metrics.log_loss


def eval_length(spec: ModelSpec) -> int:
    """linear: [sum res^2, sum y, sum y^2, sum |res|, clipped_train, clipped_eval, n];
    logistic: [sum loss, K*K confusion counts, clipped_train, clipped_eval, n]."""
    if spec.kind == "linear":
        return 7
    return 1 + spec.n_classes**2 + 3


def primary_metric(spec: ModelSpec) -> str:
    return "r2" if spec.kind == "linear" else "accuracy"


def local_evaluation(model: LinearRegressionModel | LogisticRegressionModel, X: FloatArray,
                     y: FloatArray, params: StatsParams, *, clipped_train: int = 0) -> list[int]:
    """The device's evaluation sums for ``model`` on its rows (the first max_samples)."""
    X = np.asarray(X, dtype=np.float64)[: params.max_samples]
    y = np.asarray(y, dtype=np.float64)[: params.max_samples]
    n = int(y.shape[0])
    if isinstance(model, LinearRegressionModel):
        residual = y - model.predict(X)
        q_res, clipped = quantize(residual, params)
        q_y, clipped_y = quantize(y, params)
        (s_res,), (sq_res,) = exact_sums(q_res[:, None])
        (s_y,), (sq_y,) = exact_sums(q_y[:, None])
        del s_res  # the mean residual says nothing the others do not
        abs_res = int(np.abs(q_res).sum())
        return [sq_res, s_y, sq_y, abs_res, clipped_train, clipped + clipped_y, n]
    labels = model._check_targets(y, n)
    proba = model.predict_proba(X)
    picked = proba[np.arange(n), labels]
    losses = -np.log(np.clip(picked, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS))
    q_loss, clipped = quantize(losses, params)
    matrix = confusion_matrix(labels, model.predict(X), model.spec.n_classes)
    return [int(q_loss.sum()), *matrix.ravel().tolist(), clipped_train, clipped, n]


@dataclass(frozen=True)
class FleetEvaluation:
    """The fleet's metrics for one model, from the decrypted totals only."""

    kind: str
    n: int
    loss: float
    metrics: dict[str, float]
    clipped_train: int = 0  # update coordinates clipped by the training codec
    clipped_eval: int = 0  # evaluation values beyond the statistics range
    recall: tuple[float | None, ...] = ()
    confusion: tuple[tuple[int, ...], ...] = ()

    @property
    def classes_absent(self) -> tuple[int, ...]:
        """Classes with no row in the totals: no contributing device holds them."""
        return tuple(k for k, row in enumerate(self.confusion) if not sum(row))

    @classmethod
    def from_sums(cls, sums: Sequence[int], spec: ModelSpec,
                  params: StatsParams) -> FleetEvaluation:
        if len(sums) != eval_length(spec):
            raise CodecError(f"evaluation sums have {len(sums)} values, the model needs "
                             f"{eval_length(spec)}")
        n, clipped_eval, clipped_train = int(sums[-1]), int(sums[-2]), int(sums[-3])
        if n < 1 or clipped_eval < 0 or clipped_train < 0:
            raise CodecError("decoded evaluation counts are not valid")
        unit = float(1 << params.fraction_bits)
        if spec.kind == "linear":
            sq_res, s_y, sq_y, abs_res = (int(v) for v in sums[:4])
            if sq_res < 0 or abs_res < 0 or n * sq_y < s_y * s_y:
                raise CodecError("decoded regression sums are not valid")
            mse = sq_res / (n * unit * unit)
            # Exact integer numerator: no cancellation between sum y^2 and (sum y)^2.
            ss_tot = (n * sq_y - s_y * s_y) / (n * unit * unit)
            ss_res = sq_res / (unit * unit)
            r2 = (1.0 if ss_res == 0 else 0.0) if ss_tot == 0 else 1.0 - ss_res / ss_tot
            return cls("linear", n, mse, {"mse": mse, "mae": abs_res / (n * unit), "r2": r2},
                       clipped_train, clipped_eval)
        k = spec.n_classes
        matrix = np.asarray(sums[1:1 + k * k], dtype=np.int64).reshape(k, k)
        if matrix.min() < 0 or int(matrix.sum()) != n or int(sums[0]) < 0:
            raise CodecError("decoded confusion counts do not add up to the row count")
        log_loss = int(sums[0]) / (n * unit)
        metrics = {"log_loss": log_loss, "accuracy": float(np.trace(matrix)) / n,
                   "balanced_accuracy": balanced_accuracy(matrix)}
        return cls("logistic", n, log_loss, metrics, clipped_train, clipped_eval,
                   recall=per_class_recall(matrix),
                   confusion=tuple(tuple(int(v) for v in row) for row in matrix))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, "loss": self.loss, "metrics": dict(self.metrics),
                               "clipped_train": self.clipped_train,
                               "clipped_eval": self.clipped_eval}
        if self.confusion:
            out["confusion"] = [list(row) for row in self.confusion]
            out["recall"] = list(self.recall)
        return out

    def summary(self, personal: FleetEvaluation | None = None) -> str:
        """One log line: the metric people compare, and the others; with ``personal`` (the
        devices' personal models on the same rows) each followed by "(personal ...)"."""
        names = ("accuracy", "balanced_accuracy", "log_loss") if self.kind == "logistic" \
            else ("r2", "mse", "mae")
        parts = [f"{name} {self.metrics[name]:.4f}"
                 + (f" (personal {personal.metrics[name]:.4f})"
                    if personal is not None and math.isfinite(personal.metrics[name]) else "")
                 for name in names if math.isfinite(self.metrics[name])]
        return f"fleet {', '.join(parts)} on {self.n} device rows"
