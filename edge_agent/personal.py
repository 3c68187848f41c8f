"""Personal models on the device: fine-tuning, Ditto, personal intercept. Pure; never sent.

A device keeps a personal model next to the global one and uses it for its own
predictions. Three modes ([training] personal, signed into the round):

- "finetune": ``personal_epochs`` of local SGD from the received global model.
- "ditto" (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through
  Personalization"): a personal model v trained on the device's rows with the penalty
  lambda/2 * ||v - w_global||^2, kept across rounds (warm start from the previous v when it
  was derived from the same spec); lambda is chosen per device from ``ditto_lambdas`` on a
  seeded validation share of its training rows (stratified for classifiers).
- "intercept": the device's own input standardisation on top of the fleet's, and a
  personal intercept fitted with the global coefficients frozen. Assumption: the device
  sees x_k = a_k * x + b_k per feature (a_k > 0), where x has the fleet's distribution as the
  spec's pooled center/scale standardise it (mean 0, std 1); then its own
  mean/std undo a_k and b_k exactly, and the global coefficients apply unchanged. It does
  NOT hold when the device's own label mix moves its feature means (label skew): the
  re-standardisation then removes real signal, and the personal intercept only partly
  puts it back.

In a fleet whose signed mode is "intercept" the devices also train the GLOBAL update on
their own standardised rows (``aligned_rows``: mapped back into the fleet's units), so the
fleet learns the coefficients of the undistorted x rather than a blur over every device's
gain and offset (as FedBN keeps normalisation local). Under feature skew on scikit-learn's
wine and breast_cancer (benchmarks/personal_skew.py) that took the intercept mode's
per-device accuracy from 0.931 to 0.972 and from 0.953 to 0.972.

Every personal model is a plain fedmq model (spec + parameters): the intercept mode folds
the device's standardisation into the spec's center/scale, so ``models.io.load_model``
and ``make_model`` predict with it without knowing the mode.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.models import ModelError, ModelSpec, make_model
from fedmq.models.base import BaseLinearMapModel, as_float_matrix
from fedmq.protocol.messages import TrainingSettings

FloatArray = NDArray[np.float64]
MIN_VALIDATION_ROWS = 4  # fewer rows for Ditto's validation share: the middle lambda
VALIDATION_SHARE = 0.25
INTERCEPT_STEPS = 200  # full-batch steps on the intercept alone (convex, cheap)


@dataclass(frozen=True)
class PersonalModel:
    """A device's personal model; ``base_spec`` is the fleet spec it was derived from."""

    mode: str
    spec: ModelSpec
    params: FloatArray
    base_spec: ModelSpec
    lam: float | None = None  # Ditto: the lambda chosen on the validation share
    meta: dict[str, Any] = field(default_factory=dict)  # run/round/version it came from

    def __post_init__(self) -> None:
        if self.mode not in ("finetune", "ditto", "intercept"):
            raise ModelError(f"unknown personal mode {self.mode!r}")
        vector = np.asarray(self.params, dtype=np.float64).reshape(-1)
        if vector.size != self.spec.n_params or not np.all(np.isfinite(vector)):
            raise ModelError("personal parameters do not fit the spec or are not finite")
        if self.spec.n_params != self.base_spec.n_params:
            raise ModelError("the personal model and its fleet spec differ in size")
        object.__setattr__(self, "params", vector)

    def model(self) -> BaseLinearMapModel:
        return make_model(self.spec).set_params_vector(self.params)

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        return self.model().predict(X)  # type: ignore[attr-defined]

    def predict_proba(self, X: ArrayLike) -> FloatArray:
        if self.spec.kind != "logistic":
            raise ModelError("predict_proba needs a classifier")
        return self.model().predict_proba(X)  # type: ignore[attr-defined]

    def metadata(self) -> dict[str, Any]:
        """What the model file keeps next to spec and parameters (JSON-safe)."""
        return {"personal_mode": self.mode, "base_spec": self.base_spec.to_dict(),
                "lambda": self.lam, **self.meta}

    @classmethod
    def from_file(cls, spec: ModelSpec, params: ArrayLike,
                  metadata: dict[str, Any]) -> PersonalModel:
        """From ``models.io.load_model``'s three parts; ModelError when they are not one."""
        try:
            base = ModelSpec.from_dict(metadata["base_spec"])
            lam = metadata.get("lambda")
            meta = {k: v for k, v in metadata.items()
                    if k not in ("personal_mode", "base_spec", "lambda")}
            return cls(str(metadata["personal_mode"]), spec, np.asarray(params), base,
                       None if lam is None else float(lam), meta)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"not a personal model file: {exc}") from exc


def fit_personal(mode: str, spec: ModelSpec, settings: TrainingSettings,
                 global_params: ArrayLike, X: ArrayLike, y: ArrayLike, *,
                 previous: PersonalModel | None = None, seed: int | None = None,
                 meta: dict[str, Any] | None = None) -> PersonalModel:
    """The device's personal model for ``mode`` from the global model and its training rows.

    Raises ModelError (bad labels, divergence) like local training does.
    """
    w = np.asarray(global_params, dtype=np.float64).reshape(-1)
    X = as_float_matrix(X, spec.n_features)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.shape[0] != X.shape[0] or X.shape[0] < 1:
        raise ModelError("personal training needs at least one row with a label")
    meta = dict(meta or {})
    if mode == "finetune":
        model = make_model(spec, learning_rate=settings.learning_rate,
                           epochs=settings.personal_epochs, batch_size=settings.batch_size,
                           l2=settings.l2, seed=seed)
        model.fit(X, y, init_params=w)
        return PersonalModel(mode, spec, model.params_, spec, meta=meta)
    if mode == "ditto":
        warm = previous is not None and previous.mode == "ditto" \
            and previous.spec == spec and previous.base_spec == spec
        start = previous.params if warm and previous is not None else w
        lam = choose_lambda(spec, settings, w, start, X, y, seed=seed)
        v = ditto_fit(spec, settings, w, start, X, y, lam, seed=seed)
        return PersonalModel(mode, spec, v, spec, lam=lam, meta=meta)
    if mode == "intercept":
        own = own_standardisation(spec, X)
        return PersonalModel(mode, own, fit_intercept(own, w, X, y), spec, meta=meta)
    raise ModelError(f"unknown personal mode {mode!r}")


def ditto_fit(spec: ModelSpec, settings: TrainingSettings, anchor: ArrayLike,
              start: ArrayLike, X: FloatArray, y: FloatArray, lam: float, *,
              seed: int | None = None, epochs: int | None = None) -> FloatArray:
    """Mini-batch SGD on the local loss + lam/2 * ||v - anchor||^2 (intercept included),
    the model's own L2 on the weights as in local training; returns v."""
    model = make_model(spec, learning_rate=settings.learning_rate, epochs=1,
                       batch_size=settings.batch_size, l2=settings.l2, seed=seed)
    Z, targets, params = model._prepare(X, y, start)
    m, d = spec.n_outputs, spec.n_features
    P = params.reshape(m, d + 1)
    A = np.asarray(anchor, dtype=np.float64).reshape(m, d + 1)
    n, batch, lr = Z.shape[0], settings.batch_size, settings.learning_rate
    rng = random.Random(seed)
    with np.errstate(over="ignore", invalid="ignore"):
        for epoch in range(settings.personal_epochs if epochs is None else epochs):
            order = np.fromiter(rng.sample(range(n), n), dtype=np.intp, count=n)
            for at in range(0, n, batch):
                rows = order[at:at + batch]
                Zb = Z[rows]
                G = model._score_gradient(Zb @ P[:, :d].T + P[:, d], targets[rows])
                grad = np.empty_like(P)
                grad[:, :d] = G.T @ Zb / Zb.shape[0] + settings.l2 * P[:, :d]
                grad[:, d] = G.mean(axis=0)
                P -= lr * (grad + lam * (P - A))
            model._check_finite(P, f"Ditto epoch {epoch + 1}")
    return params


def validation_split(y: FloatArray, *, classifier: bool,
                     seed: int | None) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """(fit rows, validation rows): a seeded share, per class for classifiers (a class with
    a single row stays in the fit rows)."""
    rng = random.Random(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if classifier \
        else [np.arange(y.shape[0])]
    fit: list[int] = []
    val: list[int] = []
    for rows in groups:
        order = [int(i) for i in rows]
        rng.shuffle(order)
        k = round(VALIDATION_SHARE * len(order)) if len(order) > 1 else 0
        val += order[:k]
        fit += order[k:]
    return np.asarray(sorted(fit), dtype=np.intp), np.asarray(sorted(val), dtype=np.intp)


def choose_lambda(spec: ModelSpec, settings: TrainingSettings, anchor: ArrayLike,
                  start: ArrayLike, X: FloatArray, y: FloatArray, *,
                  seed: int | None = None) -> float:
    """The lambda of ``settings.ditto_lambdas`` whose personal model has the lowest loss on
    the device's validation share; the middle one when there are too few rows."""
    lambdas = sorted(settings.ditto_lambdas)
    middle = lambdas[len(lambdas) // 2]
    if len(lambdas) == 1:
        return middle
    fit, val = validation_split(y, classifier=spec.kind == "logistic", seed=seed)
    if val.size < MIN_VALIDATION_ROWS or fit.size < 1:
        return middle
    judge = make_model(spec)
    best, best_loss = middle, float("inf")
    for lam in lambdas:
        try:
            v = ditto_fit(spec, settings, anchor, start, X[fit], y[fit], lam, seed=seed)
        except ModelError:  # this lambda diverged: not a candidate
            continue
        loss = float(judge.set_params_vector(v).loss(X[val], y[val]))
        if loss < best_loss:  # ties keep the smaller lambda (the one seen first)
            best, best_loss = lam, loss
    return best


def own_standardisation(spec: ModelSpec, X: FloatArray) -> ModelSpec:
    """The fleet's spec with this device's own per-feature mean/std folded in.

    On top of the fleet's z = (x - c) / s the device standardises z' = (z - m_k) / sd_k
    with its own mean m_k and std sd_k of z; that is one affine map with center
    c + s * m_k and scale s * sd_k. A constant feature (sd_k = 0) keeps its scale, and a
    device with a single row keeps the fleet's standardisation.
    """
    if X.shape[0] < 2:
        return spec
    d = spec.n_features
    c = np.zeros(d) if spec.center is None else np.asarray(spec.center, dtype=np.float64)
    s = np.ones(d) if spec.scale is None else np.asarray(spec.scale, dtype=np.float64)
    Z = (X - c) / s
    m_k, sd_k = Z.mean(axis=0), Z.std(axis=0)
    sd_k = np.where(sd_k > 1e-12 * np.maximum(1.0, np.abs(m_k)), sd_k, 1.0)
    return replace(spec, center=tuple(float(v) for v in c + s * m_k),
                   scale=tuple(float(v) for v in s * sd_k))


def aligned_rows(spec: ModelSpec, X: ArrayLike) -> FloatArray:
    """This device's rows in the fleet's units after its own standardisation: the rows
    the fleet's spec standardises exactly as ``own_standardisation`` would."""
    X = as_float_matrix(X, spec.n_features)
    own = own_standardisation(spec, X)
    if own is spec:
        return X
    d = spec.n_features
    c = np.zeros(d) if spec.center is None else np.asarray(spec.center, dtype=np.float64)
    s = np.ones(d) if spec.scale is None else np.asarray(spec.scale, dtype=np.float64)
    aligned: FloatArray = c + s * (X - np.asarray(own.center)) / np.asarray(own.scale)
    return aligned


def fit_intercept(spec: ModelSpec, global_params: ArrayLike, X: FloatArray,
                  y: FloatArray) -> FloatArray:
    """The global coefficients, frozen, with the intercept that fits this device's rows.

    Regression: the exact least-squares intercept (mean residual). Classifiers: full-batch
    gradient steps on the intercept alone (the log loss is convex in it, its curvature at
    most 1/2 per output, so a unit step cannot overshoot far).
    """
    model = make_model(spec).set_params_vector(global_params)
    Z, targets, params = model._prepare(X, y, global_params)
    m, d = spec.n_outputs, spec.n_features
    P = params.reshape(m, d + 1)
    if spec.kind == "linear":
        P[0, d] = float(np.mean(targets - Z @ P[0, :d]))
        return params
    base = Z @ P[:, :d].T
    for _ in range(INTERCEPT_STEPS):
        P[:, d] -= 1.0 * model._score_gradient(base + P[:, d], targets).mean(axis=0)
    model._check_finite(P, "the personal intercept")
    return params
