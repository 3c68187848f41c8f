"""Linear regression trained by mini-batch SGD on standardized features and label."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fedmq.models.base import BaseLinearMapModel, FloatArray, as_float_vector, as_label_vector
from fedmq.models.metrics import r2_score

if TYPE_CHECKING:
    from sklearn.linear_model import LinearRegression


class LinearRegressionModel(BaseLinearMapModel):
    """Least-squares regression; ``params`` = ``[w_1..w_d, b]`` on standardized features.

    The label is standardized too: SGD fits ``t = (y - target_center) / target_scale``
    (spec fields; None = 0 and 1), so the parameters are in standardized label units
    and one learning rate suits a temperature near 60 as well as a label near 0.
    ``predict``, ``score`` and ``loss`` undo it and speak the label's units.

    SGD minimises ``mean(0.5 * (pred_t - t)**2) + 0.5 * l2 * ||w||**2``; the 0.5 keeps
    the gradient as the plain residual. ``loss`` reports the ordinary mean squared
    error in label units (no 0.5, no L2) because that is the number people compare.
    """

    _kind = "linear"

    def _check_targets(self, y: ArrayLike, n_samples: int) -> NDArray[Any]:
        """The standardized label ``t``: what the scores are trained against."""
        center, scale = self.spec.target_affine
        standardized: FloatArray = (as_label_vector(y, n_samples) - center) / scale
        return standardized

    def _score_gradient(self, scores: FloatArray, y: NDArray[Any]) -> FloatArray:
        residual: FloatArray = scores - y[:, None]
        return residual

    def _mean_loss(self, scores: FloatArray, y: NDArray[Any]) -> float:
        # Both in standardized units; scale**2 turns the MSE back into label units.
        _, scale = self.spec.target_affine
        return float(np.mean((scores[:, 0] - y) ** 2)) * scale**2

    def predict(self, X: ArrayLike) -> FloatArray:
        """Predictions in the label's units."""
        center, scale = self.spec.target_affine
        out: FloatArray = self._scores(X)[:, 0] * scale + center
        return out

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Coefficient of determination R^2."""
        pred = self.predict(X)
        return r2_score(as_float_vector(y, pred.shape[0]), pred)

    def raw_coefficients(self) -> tuple[FloatArray, float]:
        """(coef, intercept) with ``predict(x) == x @ coef + intercept`` on raw features."""
        W_raw, b_raw = self._raw_coefficients()
        center, scale = self.spec.target_affine
        coef: FloatArray = W_raw[0] * scale
        return coef, float(b_raw[0]) * scale + center

    def to_sklearn(self) -> LinearRegression:
        """A fitted ``sklearn.linear_model.LinearRegression`` on raw features, in label units."""
        # Imported lazily and optional: a device install has no scikit-learn.
        from fedmq.models.sklearn_import import linear_model

        coef, intercept = self.raw_coefficients()
        est: LinearRegression = linear_model().LinearRegression()
        est.coef_ = coef.copy()
        est.intercept_ = intercept
        est.n_features_in_ = self.spec.n_features
        return est
