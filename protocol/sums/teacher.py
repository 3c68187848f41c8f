"""Federated distillation's teacher: per-class sums of the global model's logits, and their mean.

Jeong et al. 2018 ("federated distillation") share per-class mean logits instead of
data. In a fleet that distils (TrainingSettings.distill_weight > 0) every training
update carries one more section: for each true class c, the sum over the device's
evaluation rows of class c of the received model's logit vector (K values; a binary
model's score s counts as the logits (0, s)), i.e. K*K sums, then the row count. The
aggregator decrypts only the fleet's totals, divides each class's row by that class's
row count (the evaluation section's confusion matrix holds the counts) and publishes
the result, signed, as the next round's ``RoundMessage.teacher``.

Bounds: a logit is unbounded in principle, so each is clipped to +-LOGIT_CLIP before it
is quantized with the statistics' fixed point (and to +-max_abs by ``quantize``, which
counts what it clips). A device's sum is then at most max_samples * q_max in magnitude,
far inside the StatsCodec slot (bounded by max_samples * q_max^2), so the section
cannot overflow, and decoding checks its count like every section's. LOGIT_CLIP = 30
loses nothing a softmax at T >= 1 can tell apart (e^-30 ~ 1e-13).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedmq.models import ModelSpec
from fedmq.models.logistic import LogisticRegressionModel
from fedmq.protocol.errors import CodecError
from fedmq.protocol.sums.statistics import FloatArray, StatsParams, quantize

LOGIT_CLIP = 30.0


def teacher_length(spec: ModelSpec) -> int:
    """K*K logit sums and the row count; a regression model has no classes (0)."""
    return spec.n_classes**2 + 1 if spec.kind == "logistic" else 0


def class_logits(model: LogisticRegressionModel, X: FloatArray) -> FloatArray:
    """(n, K) logits of ``model`` on ``X``: a binary score s becomes (0, s)."""
    scores = model._scores(X)
    if model.spec.n_classes == 2:
        return np.column_stack([np.zeros(scores.shape[0]), scores[:, 0]])
    return scores


def local_teacher(model: LogisticRegressionModel, X: FloatArray, y: FloatArray,
                  params: StatsParams) -> list[int]:
    """The device's teacher section: per true class, the sum of its rows' quantized logits.

    The same rows as local_evaluation (the first max_samples), so the fleet's class counts
    come from the evaluation section's confusion matrix.
    """
    X = np.asarray(X, dtype=np.float64)[: params.max_samples]
    y = np.asarray(y, dtype=np.float64)[: params.max_samples]
    n = int(y.shape[0])
    labels = model._check_targets(y, n)
    k = model.spec.n_classes
    logits = np.clip(class_logits(model, X), -LOGIT_CLIP, LOGIT_CLIP)
    q, _ = quantize(logits, params)
    sums = np.zeros((k, k), dtype=np.int64)
    # |q| <= 30 * 2^32 (fraction_bits <= 32) and at most 2^24 rows: every class's sum stays
    # below 2^61, so int64 accumulation is exact.
    np.add.at(sums, labels, q)
    return [*(int(v) for v in sums.ravel()), n]


def fleet_teacher(sums: Sequence[int], class_counts: Sequence[int], spec: ModelSpec,
                  params: StatsParams) -> tuple[float, ...]:
    """Per-class mean logits, K*K row-major, from the fleet's decrypted teacher totals.

    A class no contributing device holds (count 0) keeps a row of zeros: the devices read
    a zero row as "no teacher for this class" and train its rows without the term.
    """
    k = spec.n_classes
    if spec.kind != "logistic" or len(sums) != teacher_length(spec) or len(class_counts) != k:
        raise CodecError(f"teacher sums have {len(sums)} values and {len(class_counts)} class "
                         f"counts; the model needs {teacher_length(spec)} and {k}")
    if int(sums[-1]) != sum(int(c) for c in class_counts) or min(class_counts) < 0:
        raise CodecError("teacher row count does not match the evaluation's class counts")
    unit = float(1 << params.fraction_bits)
    totals = np.asarray([int(v) for v in sums[:-1]], dtype=np.float64).reshape(k, k) / unit
    counts = np.asarray(class_counts, dtype=np.float64)
    means = np.divide(totals, counts[:, None], out=np.zeros_like(totals),
                      where=counts[:, None] > 0)
    if np.abs(means).max(initial=0.0) > LOGIT_CLIP + 1.0 / unit:
        raise CodecError("decoded teacher logits exceed the clipped range")
    return tuple(float(v) for v in means.ravel())
