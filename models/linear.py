"""Linear regression trained by mini-batch SGD on standardized features."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.base import BaseLinearMapModel, FloatArray, as_float_vector
from models.metrics import r2_score

if TYPE_CHECKING:
    from sklearn.linear_model import LinearRegression


class LinearRegressionModel(BaseLinearMapModel):
    """Least-squares regression; ``params`` = ``[w_1..w_d, b]`` on standardized features.

    SGD minimises ``mean(0.5 * (pred - y)**2) + 0.5 * l2 * ||w||**2``; the 0.5 keeps
    the gradient as the plain residual. ``loss`` reports the ordinary mean squared
    error (no 0.5, no L2) because that is the number people compare across runs.
    """

    _kind = "linear"

    def _check_targets(self, y: ArrayLike, n_samples: int) -> NDArray[Any]:
        return as_float_vector(y, n_samples)

    def _score_gradient(self, scores: FloatArray, y: NDArray[Any]) -> FloatArray:
        residual: FloatArray = scores - y[:, None]
        return residual

    def _mean_loss(self, scores: FloatArray, y: NDArray[Any]) -> float:
        return float(np.mean((scores[:, 0] - y) ** 2))

    def predict(self, X: ArrayLike) -> FloatArray:
        return self._scores(X)[:, 0]

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Coefficient of determination R^2."""
        pred = self.predict(X)
        return r2_score(as_float_vector(y, pred.shape[0]), pred)

    def to_sklearn(self) -> LinearRegression:
        """A fitted ``sklearn.linear_model.LinearRegression`` that accepts raw features."""
        # Imported lazily and optional: a device install has no scikit-learn.
        from models.sklearn_import import linear_model

        W_raw, b_raw = self._raw_coefficients()
        est: LinearRegression = linear_model().LinearRegression()
        est.coef_ = W_raw[0].copy()
        est.intercept_ = float(b_raw[0])
        est.n_features_in_ = self.spec.n_features
        return est
