"""Shared machinery for the linear-map models: validation, standardization, SGD."""

from __future__ import annotations

import math
import numbers
import random
from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeAlias, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.models.errors import DivergedError, LabelError, ModelError
from fedmq.models.spec import ModelSpec

FloatArray: TypeAlias = NDArray[np.float64]
IntArray: TypeAlias = NDArray[np.int64]

# typing.Self needs Python 3.11; the project still supports 3.10.
_Model = TypeVar("_Model", bound="BaseLinearMapModel")


def as_float_matrix(X: ArrayLike, n_features: int) -> FloatArray:
    """Validate a design matrix: 2-D, ``n_features`` columns, >= 1 row, all finite."""
    try:
        arr = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"X must be numeric: {exc}") from exc
    if arr.ndim != 2:
        raise ModelError(f"X must be 2-D (n_samples, n_features), got shape {arr.shape}")
    if arr.shape[1] != n_features:
        raise ModelError(f"X must have {n_features} columns, got {arr.shape[1]}")
    if arr.shape[0] < 1:
        raise ModelError("X must have at least one row")
    if not np.all(np.isfinite(arr)):
        raise ModelError("X contains NaN or infinite values")
    return arr


def as_float_vector(y: ArrayLike, n_samples: int, name: str = "y") -> FloatArray:
    """Validate a 1-D finite numeric vector of length ``n_samples``."""
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise ModelError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ModelError(f"{name} has {arr.shape[0]} entries but X has {n_samples} rows")
    if not np.all(np.isfinite(arr)):
        raise ModelError(f"{name} contains NaN or infinite values")
    return arr


def as_label_vector(y: ArrayLike, n_samples: int) -> FloatArray:
    """``as_float_vector`` for labels: unusable values raise ``LabelError("bad-labels")``.

    A wrong length is a data-shape problem, not a label one, so it stays a ModelError.
    """
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise LabelError("bad-labels", f"y must be numeric: {exc}") from exc
    if arr.ndim == 1 and arr.shape[0] == n_samples and not np.all(np.isfinite(arr)):
        raise LabelError("bad-labels", "y contains NaN or infinite values")
    return as_float_vector(arr, n_samples)


def as_param_vector(params: ArrayLike, n_params: int) -> FloatArray:
    """Validate and copy a flat parameter vector for a spec with ``n_params``."""
    try:
        arr = np.array(params, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"params must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise ModelError(f"params must be a flat 1-D vector, got shape {arr.shape}")
    if arr.shape[0] != n_params:
        raise ModelError(f"params must have length {n_params}, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ModelError("params contain NaN or infinite values")
    return arr


def _real(value: object, name: str, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ModelError(f"{name} must be a number, got {value!r}")
    number = float(value)
    ok = number > minimum if strict else number >= minimum
    if not (math.isfinite(number) and ok):
        relation = ">" if strict else ">="
        raise ModelError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")
    return number


def _integer(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ModelError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    if number < minimum:
        raise ModelError(f"{name} must be >= {minimum}, got {value!r}")
    return number


def _check_hyperparameters(
    learning_rate: object, epochs: object, batch_size: object, l2: object, seed: object
) -> None:
    _real(learning_rate, "learning_rate", minimum=0.0, strict=True)
    _integer(epochs, "epochs", minimum=1)
    _integer(batch_size, "batch_size", minimum=1)
    _real(l2, "l2", minimum=0.0, strict=False)
    if seed is not None:
        _integer(seed, "seed", minimum=0)


class BaseLinearMapModel(ABC):
    """A model whose scores are ``z @ W.T + b`` on standardized features ``z``.

    Parameters live in one flat vector (see ``ModelSpec.n_params``) that reshapes,
    row-major, to an ``(n_outputs, n_features + 1)`` matrix with the intercept in
    the last column. Subclasses only define the per-sample loss and its gradient
    with respect to the scores; the SGD loop is shared.
    """

    _kind: ClassVar[str]

    params_: FloatArray
    n_samples_seen_: int
    # FedProx (Li et al. 2020; set by edge_agent.trainer.local_fit): the objective gains
    # mu/2 * ||params - prox_center||^2 over ALL parameters, intercepts included (the term
    # keeps the whole local model near the global one, not only its weights). Off by default.
    prox_mu: float = 0.0
    prox_center: FloatArray | None = None

    def __init__(
        self,
        spec: ModelSpec,
        *,
        learning_rate: float = 0.05,
        epochs: int = 1,
        batch_size: int = 32,
        l2: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(spec, ModelSpec):
            raise ModelError(f"spec must be a ModelSpec, got {type(spec).__name__}")
        if spec.kind != self._kind:
            raise ModelError(
                f"{type(self).__name__} needs spec.kind == {self._kind!r}, got {spec.kind!r}"
            )
        self.spec = spec
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.l2 = l2
        self.seed = seed
        # Fail at construction so a misconfigured device errors before any data arrives.
        _check_hyperparameters(learning_rate, epochs, batch_size, l2, seed)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(spec={self.spec!r}, learning_rate={self.learning_rate!r}, "
            f"epochs={self.epochs!r}, batch_size={self.batch_size!r}, l2={self.l2!r}, "
            f"seed={self.seed!r})"
        )

    # -- subclass hooks ---------------------------------------------------------------

    @abstractmethod
    def _check_targets(self, y: ArrayLike, n_samples: int) -> NDArray[Any]:
        """Validate targets; return the array the loss functions expect."""

    @abstractmethod
    def _score_gradient(self, scores: FloatArray, y: NDArray[Any]) -> FloatArray:
        """d(per-sample training loss)/d(scores), shape (n, n_outputs)."""

    @abstractmethod
    def _mean_loss(self, scores: FloatArray, y: NDArray[Any]) -> float:
        """Reported mean loss (no L2 term) for the given scores."""

    def _training_gradient(self, scores: FloatArray, y: NDArray[Any]) -> FloatArray:
        """d(per-sample training objective)/d(scores): the loss's, plus any extra per-row
        term a subclass trains with (logistic: distillation). SGD and DP-SGD both use it."""
        return self._score_gradient(scores, y)

    # -- public API -------------------------------------------------------------------

    def fit(
        self: _Model, X: ArrayLike, y: ArrayLike, *, init_params: ArrayLike | None = None
    ) -> _Model:
        """Run ``epochs`` epochs of mini-batch SGD starting from ``init_params`` (or zeros)."""
        Z, targets, params = self._prepare(X, y, init_params)
        n = Z.shape[0]
        P = params.reshape(self.spec.n_outputs, self.spec.n_features + 1)
        # The standard library's generator: the minibatch order is all the device needs, and
        # numpy.random would add 2.6 MB to the agent's RSS (the device budget is 60 MB).
        rng = random.Random(self.seed)
        rows = range(n)
        # Overflow can only happen when SGD diverges; that is detected and reported below
        # instead of leaking numpy RuntimeWarnings.
        with np.errstate(over="ignore", invalid="ignore"):
            for epoch in range(int(self.epochs)):
                order = np.fromiter(rng.sample(rows, n), dtype=np.intp, count=n)
                for start in range(0, n, int(self.batch_size)):
                    batch = order[start : start + int(self.batch_size)]
                    self._sgd_step(P, Z[batch], targets[batch])
                self._check_finite(P, f"epoch {epoch + 1}")
        self.params_ = params
        self.n_samples_seen_ = n
        return self

    def set_params_vector(self: _Model, params: ArrayLike) -> _Model:
        """Install a (e.g. global) parameter vector without training."""
        self.params_ = as_param_vector(params, self.spec.n_params)
        self.n_samples_seen_ = 0
        return self

    def loss(self, X: ArrayLike, y: ArrayLike) -> float:
        scores = self._scores(X)
        return self._mean_loss(scores, self._check_targets(y, scores.shape[0]))

    # -- internals --------------------------------------------------------------------

    def _prepare(self, X: ArrayLike, y: ArrayLike,
                 init_params: ArrayLike | None) -> tuple[FloatArray, NDArray[Any], FloatArray]:
        """(standardized Z, targets, a fresh copy of the start parameters) for a training loop."""
        # Re-checked because attributes may have been reassigned since __init__.
        _check_hyperparameters(self.learning_rate, self.epochs, self.batch_size, self.l2, self.seed)
        spec = self.spec
        Z = self._standardize(as_float_matrix(X, spec.n_features))
        targets = self._check_targets(y, Z.shape[0])
        if init_params is None:
            return Z, targets, np.zeros(spec.n_params, dtype=np.float64)
        return Z, targets, as_param_vector(init_params, spec.n_params)

    def _check_finite(self, P: FloatArray, where: str) -> None:
        if not np.all(np.isfinite(P)):
            raise DivergedError(
                f"SGD diverged in {where}; lower learning_rate "
                f"(currently {self.learning_rate!r}) or check the feature scaling"
            )

    def _sgd_step(self, P: FloatArray, Z: FloatArray, y: NDArray[Any]) -> None:
        d = self.spec.n_features
        W = P[:, :d]
        scores = Z @ W.T + P[:, d]
        G = self._training_gradient(scores, y)
        grad = np.empty_like(P)
        grad[:, :d] = G.T @ Z / Z.shape[0] + self.l2 * W
        grad[:, d] = G.mean(axis=0)
        self._descend(P, grad)

    def _descend(self, P: FloatArray, grad: FloatArray) -> None:
        """P <- P - lr * grad, then the FedProx term as its exact proximal step, in place.

        With mu > 0 the step is w' = (w - lr*g + lr*mu*w_global) / (1 + lr*mu): implicit in
        the proximal term, so it equals the explicit gradient step on g + mu*(w - w_global)
        up to O((lr*mu)^2) and, unlike it, cannot overshoot w_global for any mu (lr*mu > 2
        would diverge explicitly); as mu grows the model stays at w_global.
        """
        lr = float(self.learning_rate)
        # In place: P is a view of the flat vector that becomes params_.
        P -= lr * grad
        mu = float(self.prox_mu)
        if mu > 0 and self.prox_center is not None:
            P += (lr * mu) * self.prox_center.reshape(P.shape)
            P /= 1.0 + lr * mu

    def _fitted_params(self) -> FloatArray:
        params: FloatArray | None = getattr(self, "params_", None)
        if params is None:
            raise ModelError(
                f"{type(self).__name__} has no parameters yet; call fit() or set_params_vector()"
            )
        return params

    def _coef_matrix(self) -> tuple[FloatArray, FloatArray]:
        """(W, b) acting on standardized features, shapes (m, d) and (m,)."""
        d = self.spec.n_features
        P = self._fitted_params().reshape(self.spec.n_outputs, d + 1)
        return P[:, :d], P[:, d]

    def _standardization(self) -> tuple[FloatArray, FloatArray]:
        d = self.spec.n_features
        center = np.zeros(d) if self.spec.center is None else np.asarray(self.spec.center)
        scale = np.ones(d) if self.spec.scale is None else np.asarray(self.spec.scale)
        return center.astype(np.float64), scale.astype(np.float64)

    def _standardize(self, X: FloatArray) -> FloatArray:
        center, scale = self._standardization()
        return (X - center) / scale

    def _scores(self, X: ArrayLike) -> FloatArray:
        W, b = self._coef_matrix()
        Z = self._standardize(as_float_matrix(X, self.spec.n_features))
        scores: FloatArray = Z @ W.T + b
        return scores

    def _raw_coefficients(self) -> tuple[FloatArray, FloatArray]:
        """Fold standardization into (W_raw, b_raw) so scores = x @ W_raw.T + b_raw."""
        W, b = self._coef_matrix()
        center, scale = self._standardization()
        W_raw = W / scale
        return W_raw, b - W_raw @ center
