"""One fleet, one method, one seed: the rounds of a fedmq run, simulated in plaintext.

What the encrypted run computes, without the encryption: the spec's center/scale
(and a regression label's) are the pooled statistics of the devices' rows, which is
what the statistics round gives; each round every device trains from the global
model with the device's own code (benchmarks.noniid_methods.local_train), its delta is
quantized with the fleet's fixed-point codec (clip, precision) and weighted by its
row count capped at max_weight; the aggregator's groups (aggregator.groups.partition,
the same groups of two devices a round as in an 8-device fleet), each group's mean
decoded from its exact integer sum, the [robust] rule across them, then the server
optimizer. The encrypted path decrypts exactly these integer sums, so a plaintext
loop measures the same learning dynamics, in milliseconds a round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedmq.aggregator.groups import combine, filtered_mean, partition
from fedmq.benchmarks import noniid_methods as methods
from fedmq.benchmarks.noniid_data import Device, Fleet
from fedmq.models import ModelError, ModelSpec, make_model
from fedmq.protocol.crypto.codec import CodecParams, mean_from_sums, quantize_update
from fedmq.protocol.messages import TrainingSettings

FloatArray = NDArray[np.float64]
FLEET = "bench-noniid"
MIN_GROUP = 2  # the aggregator's [robust] min_group
GROUPS = 5  # the aggregator's [robust] groups


@dataclass(frozen=True)
class Run:
    """A method's result on one fleet and seed."""

    dataset: str
    skew: str
    method: str
    seed: int
    metric: str
    central: float
    curve: tuple[float, ...]  # global test score of the model after r rounds, r = 0..R
    device_global: tuple[float, ...] = ()  # per device, on its own held-out rows
    device_personal: tuple[float, ...] = ()
    device_local: tuple[float, ...] = ()
    left_out: int = 0  # groups the filtered mean left out, over all rounds
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def final(self) -> float:
        return self.curve[-1]

    def at(self, rounds: int) -> float:
        return self.curve[min(rounds, len(self.curve) - 1)]


def tolerance(metric: str) -> float:
    """The target's slack: 1 pp of accuracy, 0.02 of R^2."""
    return 0.01 if metric == "accuracy" else 0.02


def rounds_to_target(curve: tuple[float, ...] | list[float], target: float) -> int | None:
    """The first round r >= 1 whose model scores at least ``target``; None: never."""
    for r, score in enumerate(curve):
        if r >= 1 and score >= target - 1e-12:
            return r
    return None


def fleet_spec(fleet: Fleet) -> ModelSpec:
    """fedmq init's default path: no datasheet values, so the statistics round's pooled
    mean and population std of the raw features (and of a regression label)."""
    X, y = fleet.pooled()
    std = X.std(axis=0)
    std[std == 0.0] = 1.0
    extra: dict[str, Any] = {}
    if fleet.kind == "linear":
        extra = {"target_center": float(y.mean()), "target_scale": float(y.std() or 1.0)}
    src = fleet.source
    return ModelSpec(kind=src.kind, features=src.features, n_classes=src.n_classes,
                     center=tuple(X.mean(axis=0)), scale=tuple(std), **extra)


def own_spec(spec: ModelSpec, X: FloatArray, y: FloatArray) -> ModelSpec:
    """A device alone: standardised on its own rows (local-only training)."""
    std = X.std(axis=0)
    std[std == 0.0] = 1.0
    extra: dict[str, Any] = {}
    if spec.kind == "linear":
        extra = {"target_center": float(y.mean()), "target_scale": float(y.std() or 1.0)}
    return ModelSpec(kind=spec.kind, features=spec.features, n_classes=spec.n_classes,
                     center=tuple(X.mean(axis=0)), scale=tuple(std), **extra)


def score(predicted: NDArray[Any], y: FloatArray, metric: str) -> float:
    if metric == "accuracy":
        return float(np.mean(np.asarray(predicted) == y))
    total = float(np.sum((y - y.mean()) ** 2))
    if total == 0.0:
        return math.nan  # R^2 of a constant target is undefined
    return 1.0 - float(np.sum((y - np.asarray(predicted)) ** 2)) / total


def global_score(spec: ModelSpec, params: FloatArray, X: FloatArray, y: FloatArray,
                 metric: str) -> float:
    return score(make_model(spec).set_params_vector(params).predict(X), y, metric)


def centralized(fleet: Fleet) -> float:
    """StandardScaler + LogisticRegression / LinearRegression on the pooled rows."""
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    estimator: Any = (LogisticRegression(max_iter=5000) if fleet.kind == "logistic"
                      else LinearRegression())
    pipe = make_pipeline(StandardScaler(), estimator).fit(*fleet.pooled())
    return float(pipe.score(fleet.X_test, fleet.y_test))


def local_only(fleet: Fleet, settings: TrainingSettings, rounds: int,
               seed: int) -> tuple[float, tuple[float, ...]]:
    """Every device alone, with the local compute of the whole run (rounds x epochs):
    the mean over devices of its model's global test score, and its own-rows scores."""
    base = fleet_spec(fleet)
    tests, own = [], []
    for k, dev in enumerate(fleet.devices):
        spec = own_spec(base, dev.X, dev.y)
        model = make_model(spec, learning_rate=settings.learning_rate,
                           epochs=settings.epochs * rounds, batch_size=settings.batch_size,
                           l2=settings.l2, seed=seed * 1000 + k)
        model.fit(dev.X, dev.y)
        tests.append(score(model.predict(fleet.X_test), fleet.y_test, fleet.metric))
        own.append(score(model.predict(dev.X_test), dev.y_test, fleet.metric))
    return float(np.nanmean(tests)), tuple(own)


def aggregate(deltas: list[FloatArray], weights: list[int], codec: CodecParams,
              rule: str) -> tuple[FloatArray, int]:
    """The aggregator's step from the devices' deltas: quantized, summed per group, the
    rule across the group means; returns it and how many groups the filter left out."""
    ids = [f"dev-{k:03d}" for k in range(len(deltas))]
    quantized = {i: quantize_update(d, w, codec)[0] for i, d, w in
                 zip(ids, deltas, weights, strict=True)}
    groups = ((frozenset(ids),) if rule == "mean" else
              partition(dict.fromkeys(ids, 1), fleet=FLEET, min_group=MIN_GROUP, groups=GROUPS))
    means, group_weights = [], []
    for group in groups:
        sums = [sum(col) for col in zip(*(quantized[i] for i in sorted(group)), strict=True)]
        mean, weight = mean_from_sums(sums, codec)
        means.append(mean)
        group_weights.append(float(weight))
    if rule == "filtered-mean" and len(means) > 1:
        step, far = filtered_mean(means, group_weights)
        return step, len(far)
    # Weights as claimed: the statistics round's rows bound them (no cap needed).
    return combine(rule, means, group_weights, 1), 0


def personal_scores(method: methods.Method, fleet: Fleet, spec: ModelSpec,
                    settings: TrainingSettings, params: FloatArray, previous: list[Any],
                    seed: int) -> tuple[list[Any], tuple[float, ...]]:
    models, scores = [], []
    for k, dev in enumerate(fleet.devices):
        model = methods.fit_personal(method, spec, settings, params, dev.X, dev.y,
                                     previous=previous[k], seed=seed * 1000 + k)
        models.append(model)
        scores.append(score(model.predict(dev.X_test), dev.y_test, fleet.metric))
    return models, tuple(scores)


def simulate(fleet: Fleet, method: methods.Method, *, rounds: int, seed: int,
             central: float, base: TrainingSettings | None = None,
             codec: CodecParams | None = None) -> Run:
    """``rounds`` rounds of ``method`` on ``fleet``; ConfigError for a bad override."""
    settings = method.training(base or TrainingSettings())
    codec = codec or CodecParams()
    spec = fleet_spec(fleet)
    server = methods.Server(method.server(), spec.n_params)
    params = np.zeros(spec.n_params)
    devices: tuple[Device, ...] = fleet.devices
    weights = [min(d.n, codec.max_weight) for d in devices]
    rows = [methods.training_rows(method, spec, d.X) for d in devices]
    curve = [global_score(spec, params, fleet.X_test, fleet.y_test, fleet.metric)]
    teacher: tuple[float, ...] = ()
    distill = settings.distill_weight > 0
    left_out = 0
    notes: list[str] = []
    personal: list[Any] = [None] * len(devices)
    per_round_personal = method.personal == "ditto"  # Ditto's personal model goes on
    for r in range(1, rounds + 1):
        if not math.isfinite(curve[-1]):
            curve.append(math.nan)
            continue
        deltas, shares = [], []
        try:
            for k, dev in enumerate(devices):
                new = methods.local_train(spec, settings, params, rows[k], dev.y,
                                          seed=(seed * 1_000 + r) * 1_000 + k, teacher=teacher)
                deltas.append(new - params)
                if distill:  # of w_r, on the device's rows: next round's teacher
                    shares.append(methods.teacher_section(spec, params, dev.X, dev.y))
        except ModelError as exc:  # diverged: the fleet's devices would skip; stop here
            notes.append(f"round {r}: {exc}")
            curve.append(math.nan)
            continue
        if per_round_personal and r < rounds:
            personal, _ = personal_scores(method, fleet, spec, settings, params, personal,
                                          seed + r)
        step, far = aggregate(deltas, weights, codec, method.rule)
        left_out += far
        params = server.step(params, step)
        curve.append(global_score(spec, params, fleet.X_test, fleet.y_test, fleet.metric))
        if distill:
            teacher = methods.fleet_teacher(spec, shares)
    own_global = tuple(global_score(spec, params, d.X_test, d.y_test, fleet.metric)
                       for d in devices)
    own_personal: tuple[float, ...] = ()
    if method.personal != "none" and not notes:
        _, own_personal = personal_scores(method, fleet, spec, settings, params, personal,
                                          seed + rounds)
    return Run(fleet.name, fleet.skew, method.label, fleet.seed, fleet.metric, central,
               tuple(curve), own_global, own_personal, (), left_out, notes=tuple(notes))
